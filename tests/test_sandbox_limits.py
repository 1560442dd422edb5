"""sandbox.py's limits (issue 30): correct programs that use threads, processes, /dev/null or /dev/stdout pass in
every mode; fork and thread bombs stop at the task limit and leave nothing behind; memory is counted in all its
forms (memfd and SysV shared memory denied, all processes together in a cgroup); the seccomp filter denies new
namespaces, mounts, tracing, bpf, perf, userfaultfd, io_uring, keyrings and unix sockets on the host.
"""
import os
import platform
import secrets
import shutil
import socket
import tempfile
import threading
import time

import pytest

import sandbox

CTYPES = ("import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m)\n"  # the guard's block, undone
          "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n")

# Syscall numbers written out independently of sandbox.SYSCALLS, so that a wrong number there fails here.
NR = {"x86_64": dict(clone=56, ptrace=101, perf_event_open=298, userfaultfd=323, bpf=321, shmget=29, shmat=30,
                     shmdt=67, io_uring_setup=425, add_key=248, request_key=249, keyctl=250),
      "aarch64": dict(clone=220, ptrace=117, perf_event_open=241, userfaultfd=282, bpf=280, shmget=194, shmat=196,
                      shmdt=197, io_uring_setup=425, add_key=217, request_key=218, keyctl=219)}.get(platform.machine())
MB = 1 << 20


def alive(name):
    """Is a process named `name` (its comm) still on the machine, killed but not yet reaped included?"""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == name:
                return True
        except OSError:
            pass
    return False


def boxes():
    """Every mode this host can run: its best, the user namespace, the guard."""
    userns = sandbox.Sandbox("userns", (shutil.which("unshare"), "--map-root-user", *sandbox.NAMESPACES))
    return {"best": sandbox.sandbox(), "userns": userns, "guard": sandbox.Sandbox("guard")}


def code(*lines):
    """A program, one line per argument."""
    return "\n".join(lines) + "\n"


def raw(call, what):
    """Program lines (after CTYPES): a raw libc call that must fail, or the program goes on."""
    return code(f"if {call} < 0:", f"    raise OSError(ctypes.get_errno(), {what!r})")


# ----------------------------------------------------------------------------- case 12: no false failures

HONEST = {  # name -> a correct program
    "threading": code("import threading", "out = []",
                      "threads = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]",
                      "for t in threads:", "    t.start()", "for t in threads:", "    t.join()",
                      "assert sorted(out) == list(range(8))"),
    "thread_pool": code("from concurrent.futures import ThreadPoolExecutor", "with ThreadPoolExecutor() as pool:",
                        "    assert list(pool.map(abs, range(-20, 0))) == list(range(20, 0, -1))"),
    "process_pool": code("import multiprocessing", "with multiprocessing.Pool() as pool:",
                         "    assert pool.map(abs, range(-20, 0)) == list(range(20, 0, -1))"),
    "process_pool_executor": code("from concurrent.futures import ProcessPoolExecutor",
                                  "with ProcessPoolExecutor(2) as pool:",
                                  "    assert list(pool.map(abs, [-1, -2])) == [1, 2]"),
    "devnull": code("import os", "print('dropped', file=open(os.devnull, 'w'))"),
    "dev_stdout": code("with open('/dev/stdout', 'w') as f:", "    f.write('via /dev/stdout\\n')",
                       "open('/dev/stderr', 'w').write('via /dev/stderr\\n')"),
    "socketpair": code("import socket", "a, b = socket.socketpair()", "a.sendall(b'x')", "assert b.recv(1) == b'x'"),
}


def forks_refused(box):
    """Root without a cgroup has nothing that bounds processes outside root mode: there the guard refuses fork."""
    return os.geteuid() == 0 and box.mode != "root" and not sandbox.cgroup_homes()


@pytest.mark.parametrize("mode", ["best", "userns", "guard"])
def test_correct_programs_pass_in_every_mode(mode):
    if mode == "userns" and sandbox.sandbox().mode == "guard" and not os.environ.get("CI"):
        pytest.skip("this host offers no namespaces (CI must: there this test fails instead)")
    box = boxes()[mode]
    for name, program in HONEST.items():
        result, output = sandbox.run_program(program, timeout=5, box=box)
        if forks_refused(box) and "pool" in name:
            assert result == "failed: PermissionError: fork() is disabled in the eval sandbox", (name, result)
        else:
            assert result == "passed", (name, result, output)
        assert name != "dev_stdout" or output == "via /dev/stdout\nvia /dev/stderr\n"


@pytest.mark.parametrize("mode", ["best", "guard"])
def test_fork_and_thread_bombs_stop_at_the_limit_and_leave_nothing(mode):
    box, marker = boxes()[mode], f"sc{secrets.token_hex(6)}"
    # Forks until refused, each child sleeping under a name we can look for; then says how many it made.
    counted = CTYPES + code(f"libc.prctl(15, {marker.encode()!r})", "import os, time", "n = 0", "try:",
                            "    while True:", "        if os.fork() == 0:", "            time.sleep(60)",
                            "            os._exit(0)", "        n += 1", "except BlockingIOError:", "    pass",
                            "print(n)")
    result, output = sandbox.run_program(counted, timeout=5, box=box)
    if forks_refused(box):
        assert result.startswith("failed: PermissionError: fork() is disabled")
    else:
        assert result == "passed" and int(output) > 10  # processes work, up to a bound
        assert int(output) < sandbox.TASK_LIMIT or (box.mode == "guard" and not sandbox.cgroup_homes())
    deadline = time.monotonic() + 5  # killed; in guard mode the machine's init reaps them
    while alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(marker)  # its sleeping children went with it
    result = sandbox.run_program(code("import os", "while True:", "    os.fork()"), timeout=5, box=box)[0]
    assert result.startswith(("failed: BlockingIOError", "failed: PermissionError: fork() is disabled")), result
    threads = code("import threading, time", "while True:",
                   "    threading.Thread(target=time.sleep, args=(60,)).start()")
    assert sandbox.run_program(threads, timeout=5, box=box)[0] == "failed: RuntimeError: can't start new thread"


# ----------------------------------------------------------------------------- case 9: all of its memory


@pytest.mark.skipif(NR is None, reason=f"no syscall numbers written for {platform.machine()}")
def test_memory_that_rlimit_as_does_not_see_is_denied():
    """With a 256 MB limit: 100 MB passes; 512 MB in a memfd or in SysV shared memory fails."""
    honest = code("x = b'x' * (100 << 20)", "assert len(x) == 100 << 20")
    memfd = code("import os", "fd = os.memfd_create('x')", "for i in range(512):", "    os.write(fd, b'x' * (1 << 20))")
    shm = CTYPES + code(  # 8 segments of 64 MB, each attached in turn (RLIMIT_AS sees one at a time), filled, detached
        "libc.syscall.restype = ctypes.c_long", "for i in range(8):",
        f"    if (shm := libc.syscall({NR['shmget']}, 0, 64 << 20, 0o1600)) < 0:  # IPC_PRIVATE, IPC_CREAT | 0600",
        "        raise OSError(ctypes.get_errno(), 'shmget')", f"    at = libc.syscall({NR['shmat']}, shm, 0, 0)",
        "    ctypes.memset(at, 1, 64 << 20)", f"    libc.syscall({NR['shmdt']}, ctypes.c_void_p(at))")
    assert sandbox.run_program(honest, memory=256 * MB)[0] == "passed"
    denied = "failed: PermissionError: [Errno 1] Operation not permitted"  # os.memfd_create's own error
    assert sandbox.run_program(memfd, memory=256 * MB)[0] == denied
    assert sandbox.run_program(shm, memory=256 * MB)[0] == "failed: PermissionError: [Errno 1] shmget"


@pytest.mark.skipif(not sandbox.cgroup_homes(), reason="no cgroup here (not root): memory is limited per process")
def test_processes_share_one_memory_limit():
    """Three processes of 150 MB each, each under a 256 MB limit, fail together: a cgroup counts them all."""
    together = code("import os, time", "pids = []", "for i in range(3):", "    if (pid := os.fork()) == 0:",
                    "        x = b'x' * (150 << 20)", "        time.sleep(2)", "        os._exit(0)",
                    "    pids.append(pid)", "assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)")
    for box in sandbox.sandbox(), sandbox.Sandbox("guard"):
        result = sandbox.run_program(together, memory=256 * MB, box=box)[0]
        assert result == "failed: out of memory (over 256 MB for all its processes together)", (box.mode, result)


# ----------------------------------------------------------------------------- cases 10 and 11: the seccomp filter

def escapes(folder):
    """name -> a program that tries one thing a test program never needs; each must fail with EPERM."""
    if NR is None:
        return {}
    clone = f"libc.syscall({NR['clone']}, 0x10000000 | 17, 0, 0, 0, 0)"  # CLONE_NEWUSER | SIGCHLD
    perf = code("(attr := bytearray(128))[:16] = (1).to_bytes(4, 'little') + (128).to_bytes(4, 'little') + bytes(8)",
                "attr[40] = 0x60")  # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_CPU_CLOCK; exclude_kernel | exclude_hv
    programs = {
        "unshare_user_net": raw("libc.unshare(0x10000000 | 0x40000000)", "unshare"),
        "clone_new_user": raw(f"(pid := {clone})", "clone") + code("if pid == 0:", "    import os", "    os._exit(0)"),
        "mount_in_new_namespaces": raw("libc.unshare(0x10000000 | 0x20000)", "unshare")  # NEWUSER | NEWNS
                                   + raw("libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)", "mount"),
        "ptrace_traceme": raw(f"libc.syscall({NR['ptrace']}, 0, 0, 0, 0)", "ptrace"),
        "bpf_map": raw(f"libc.syscall({NR['bpf']}, 0, (ctypes.c_uint32 * 5)(2, 4, 4, 1, 0), 20)", "bpf"),
        "userfaultfd": raw(f"libc.syscall({NR['userfaultfd']}, 1)", "userfaultfd"),  # UFFD_USER_MODE_ONLY
        "perf_event_open": perf + raw(
            f"libc.syscall({NR['perf_event_open']}, (ctypes.c_char * 128).from_buffer(attr), 0, -1, -1, 0)",
            "perf_event_open"),
        "io_uring": raw(f"libc.syscall({NR['io_uring_setup']}, 4, (ctypes.c_char * 120)())", "io_uring_setup"),
        "add_key": raw(f"(key := libc.syscall({NR['add_key']}, b'user', b'smallcoder', b'secret', 6, -4))",
                       "add_key") + code(f"libc.syscall({NR['keyctl']}, 15, key, 60)"),  # KEYCTL_SET_TIMEOUT: 60 s
    }
    return {**{name: CTYPES + program for name, program in programs.items()},
            "unix_socket_on_host": code("import socket", f"socket.socket(socket.AF_UNIX).connect({folder + '/s'!r})"),
            "datagram_to_host": code("import socket", "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)",
                                     f"a.sendto(b'out', {folder + '/d'!r})")}


@pytest.fixture(scope="module")
def host_sockets():
    """A folder under /var/tmp with two 0666 unix sockets, "s" listening and "d" for datagrams; yields the
    folder and what reached them."""
    folder = tempfile.mkdtemp(prefix="smallcoder-socket-", dir="/var/tmp")
    os.chmod(folder, 0o755)
    stream, datagram, reached = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), []
    for sock, name in (stream, "s"), (datagram, "d"):
        sock.bind(os.path.join(folder, name))
        os.chmod(os.path.join(folder, name), 0o666)
    stream.listen()
    threading.Thread(target=lambda: reached.append(stream.accept()), daemon=True).start()
    threading.Thread(target=lambda: reached.append(datagram.recv(16)), daemon=True).start()
    try:
        yield folder, reached
    finally:
        stream.close()
        datagram.close()
        shutil.rmtree(folder)


@pytest.mark.parametrize("name", list(escapes("s")) or ["(none)"])
def test_escape_is_denied(name, host_sockets):
    if NR is None:
        pytest.skip(f"no syscall numbers written for {platform.machine()}")
    folder, reached = host_sockets
    result = sandbox.run_program(escapes(folder)[name], timeout=5)[0]
    assert result.startswith("failed: PermissionError: [Errno 1]"), result
    assert reached == []


@pytest.mark.skipif(NR is None, reason=f"no syscall numbers written for {platform.machine()}")
def test_a_key_planted_by_one_run_is_not_read_by_the_next():
    plant = escapes("s")["add_key"]  # as the same worker uid, one after the other
    read = CTYPES + raw(f"libc.syscall({NR['request_key']}, b'user', b'smallcoder', None, 0)", "request_key")
    assert sandbox.run_program(plant, slot=0)[0] == "failed: PermissionError: [Errno 1] add_key"
    assert sandbox.run_program(read, slot=0)[0] == "failed: PermissionError: [Errno 1] request_key"


@pytest.mark.parametrize("mode", ["best", "guard"])
def test_every_program_runs_under_the_filter(mode):
    if not sandbox.seccomp_filter():
        pytest.skip(f"no filter written for {platform.machine()}")
    program = code("assert 'Seccomp:\\t2' in open('/proc/self/status').read()")  # SECCOMP_MODE_FILTER
    assert sandbox.run_program(program, box=boxes()[mode])[0] == "passed"
