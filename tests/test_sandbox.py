"""sandbox.py: programs run isolated; its namespaces hold against programs written to do harm (issue 21).

On any host: output is capped, the scratch dir removed, odd programs fail cleanly, printing cannot forge a
verdict, and the CLI grades completions that loop, fork, kill, exit early or delete files (the Python-level
guard's cases) without hurting the harness or the good samples between them. With namespaces, one run of the
CLI grades every hostile completion (the attacks on the namespaces and the guard's cases), each followed by a
correct and a wrong sibling, as root as CI runs, with --require-isolation. The tests check each verdict, the
siblings' verdicts, that canary files in site-packages and /var/tmp are unchanged, that no process
outlived its program, that nothing reached a listener on 127.0.0.1, and that the harness's environment never
showed; then a harness killed mid-run: its results kept, its programs and their files gone, and a rerun
resuming. Last, the fallbacks: --require-isolation refuses the guard, no `unshare` means the guard and a
warning, and the guard and the user namespace still grade. (test_sandbox_limits.py: threads, processes,
memory and the seccomp filter.)
"""
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import pytest

import eval_code as E
import sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HE_MINI = os.path.join(ROOT, "tests", "fixtures", "humaneval_mini.jsonl")
SITE = sysconfig.get_paths()["purelib"]  # the venv's site-packages: a .pth here runs in every later python
# Canaries go where programs see the host's files (read-only) wherever the repo and TMPDIR are: not in /tmp,
# which namespaced programs get a private one of, and not next to the repo, which may be under /tmp.
CANARY_HOME = "/var/tmp"
CTYPES = ("import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m)\n"  # the guard's block, undone
          "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n")


def body(*lines):
    """A completion for Fixture/0 (`def add(a, b):` with a docstring)."""
    return "".join("    " + line + "\n" for line in "\n".join(lines).splitlines())


GOOD, WRONG = body("return a + b"), body("return a - b")
ROFS = "failed: OSError: [Errno 30] Read-only file system"


@pytest.fixture(scope="module")
def isolated():
    """For the tests that need namespaces."""
    if sandbox.sandbox().mode == "guard" and not os.environ.get("CI"):
        pytest.skip("this host offers no namespaces (CI must: there these tests fail instead)")


# ----------------------------------------------------------------------------- run_program, on any host

def test_flood_is_capped_and_scratch_is_removed(tmp_path):
    result, output = sandbox.run_program("import sys\nsys.stdout.write('x' * (50 << 20))\nprint(open('f', 'w'))\n")
    assert result == "passed" and len(output) == sandbox.OUTPUT_CAP  # 50 MB read, 64 KB kept
    inside_scratch = ("import os, shutil, tempfile\nassert os.getcwd().startswith(os.environ['TMPDIR'])\n"
                      "open('a.txt', 'w').write('ok')\nos.rename('a.txt', 'b.txt')\nos.remove('b.txt')\n"
                      "os.makedirs('d/e')\nopen('d/e/f', 'w').close()\nshutil.rmtree('d')\n"
                      "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
                      "left = set(os.listdir())\n"  # (a venv under /tmp is bound back into it: its top dir too)
                      "assert 'program.py' in left and not {'a.txt', 'b.txt', 'd'} & left\n")
    assert sandbox.run_program(inside_scratch)[0] == "passed"  # changing files inside the scratch dir is fine


def test_odd_programs_fail_cleanly():
    assert sandbox.run_program("x = '\\ud800'\n" + "assert False\n")[0] == "failed: AssertionError"
    assert sandbox.run_program("s = '\ud800'\n")[0] == "passed"  # a lone surrogate (JSON allows it) becomes '?'
    result = sandbox.run_program("import os, signal\nsignal.raise_signal(signal.SIGSEGV)\n")[0]
    assert result == "failed: killed by signal 11 (Segmentation fault)"


def test_token_cannot_be_faked_by_output():
    # Printing something that looks like a report does not pass: the report goes to a private pipe.
    assert sandbox.run_program("print('0' * 32 + ' passed')\nimport os\nos._exit(0)\n")[0].startswith("failed")


# ----------------------------------------------------------------------------- the guard's verdicts, on any host

HOSTILE = {  # name -> (completion, what the result must say)
    "infinite_loop": (body("while True:", "    pass"), "timed out"),
    "sleep": (body("import time", "time.sleep(1000)"), "timed out"),
    "alloc_5GB": (body("x = bytearray(5 << 30)", "return a + b"), "failed: MemoryError"),
    "fork_bomb": (body("import os", "while True:", "    os.fork()"),  # stopped at the task limit (or no fork)
                  ("failed: BlockingIOError", "failed: PermissionError: fork() is disabled")),
    "subprocess": (body("import subprocess", "subprocess.run(['sleep', '100'])", "return a + b"),
                   "failed: PermissionError"),
    "os_system": (body("import os", "os.system('sleep 100')", "return a + b"), "failed: PermissionError"),
    "thread_bomb": (body("import threading, time", "while True:",
                         "    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()"),
                    "failed: RuntimeError: can't start new thread"),
    "kill_parent": (body("import os, signal", "os.kill(os.getppid(), signal.SIGKILL)", "return a + b"),
                    "failed: PermissionError: kill() of a process the program did not start is disabled"),
    "killpg_parent": (body("import os", "os.killpg(os.getpgid(os.getppid()), 9)", "return a + b"),
                      "failed: PermissionError: killpg() is disabled"),
    "ctypes": (body("import ctypes", "ctypes.CDLL(None).kill(0, 9)", "return a + b"),
               "failed: ModuleNotFoundError: import of ctypes halted"),
    "flood_forever": (body("import sys", "while True:", "    sys.stdout.write('x' * 65536)"), "timed out"),
    "recursion": (body("def f(n): return f(n + 1)", "return f(0)"), "failed: RecursionError"),
    "recursion_unlimited": (body("import sys", "sys.setrecursionlimit(10 ** 9)", "def f(n): return f(n + 1) + 1",
                                 "return f(0)"), ("failed: ", "timed out")),  # which depends on memory
    "sys_exit": (body("import sys", "sys.exit(0)"), "failed: SystemExit(0) before the tests finished"),
    "raise_systemexit": (body("raise SystemExit"), "failed: SystemExit(None) before the tests finished"),
    "os_exit": (body("import os", "os._exit(0)"), "failed: exited with code 0 before the tests finished"),
    "os_exit_top_level": (GOOD + "import os\nos._exit(0)\n", "failed: exited with code 0"),
    "exit_builtin": (body("exit(0)"), "failed: SystemExit(0)"),
}


def deleters(victim, victim_dir):
    """Completions that try to remove or clobber files outside the scratch dir."""
    return {
        "os_remove": (body("import os", f"os.remove({victim!r})", "return a + b"), "failed: PermissionError"),
        "os_unlink": (body("import os", f"os.unlink({victim!r})", "return a + b"), "failed: PermissionError"),
        "rename": (body("import os", f"os.rename({victim!r}, 'x')", "return a + b"), "failed: PermissionError"),
        "rmtree": (body("import shutil", f"shutil.rmtree({victim_dir!r})", "return a + b"), "failed: "),
        "pathlib_unlink": (body("import pathlib", f"pathlib.Path({victim!r}).unlink()", "return a + b"),
                           "failed: PermissionError"),
        "truncate_open": (body(f"open({victim!r}, 'w').close()", "return a + b"), "failed: PermissionError"),
        "os_open": (body("import os", f"os.close(os.open({victim!r}, os.O_WRONLY | os.O_TRUNC))",
                         "return a + b"), "failed: PermissionError"),
    }


def result_rows(out_file) -> list[dict]:
    """The results in an eval_code.py --out file: its lines but the header before them and the summary after."""
    return [r for r in map(json.loads, out_file.read_text().splitlines()) if "task_id" in r]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """Grade every hostile completion, each between two good ones, through the CLI in a child process
    (if a completion managed to kill its parent, only that child would die, and the test would say so)."""
    tmp = tmp_path_factory.mktemp("hostile")
    victim_dir = pathlib.Path(tempfile.mkdtemp(prefix="smallcoder-precious-", dir=CANARY_HOME))
    (victim_dir / "data.txt").write_text("keep me")
    cases = {**HOSTILE, **deleters(str(victim_dir / "data.txt"), str(victim_dir))}
    samples = [{"task_id": "Fixture/0", "completion": GOOD}]
    for completion, _ in cases.values():
        samples += [{"task_id": "Fixture/0", "completion": completion},
                    {"task_id": "Fixture/0", "completion": GOOD}]
    samples_file, out_file = tmp / "samples.jsonl", tmp / "results.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    cmd = [sys.executable, os.path.join(ROOT, "eval_code.py"), "--task", "humaneval", "--data", HE_MINI,
           "--samples", str(samples_file), "--out", str(out_file), "--timeout", "1", "--workers", "2"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        rows = result_rows(out_file) if out_file.exists() else []
        yield proc, rows, cases, victim_dir
    finally:
        shutil.rmtree(victim_dir, ignore_errors=True)


def test_harness_survives_and_scores_everything(hostile_run):
    proc, rows, cases, victim_dir = hostile_run
    assert proc.returncode == 0, proc.stderr
    assert len(rows) == 1 + 2 * len(cases)
    assert all(r["passed"] and r["result"] == "passed" for r in rows[0::2])  # every good sample still counts
    n_good = len(cases) + 1
    assert f"{len(rows)} samples, {n_good} passed" in proc.stdout
    assert (victim_dir / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", list(HOSTILE) + list(deleters("v", "d")))
def test_hostile_completion_fails(hostile_run, name):
    proc, rows, cases, _ = hostile_run
    i = list(cases).index(name)
    row = rows[1 + 2 * i]
    assert row["completion"] == cases[name][0]
    assert not row["passed"] and row["result"].startswith(cases[name][1]), row["result"]


# ----------------------------------------------------------------------------- the namespaces against harm (issue 21)

def hostile(canary, other, pth, port, marker):
    """name -> (completion, the start of its result). Each tries one harm, then returns a wrong answer.
    The canaries are world-writable (the one in `other`'s dir too): only the read-only mounts protect them."""
    marked = CTYPES + f"libc.prctl(15, {marker.encode()!r})  # PR_SET_NAME: findable in /proc/*/comm\n"
    return {
        "kill_ppid_sigkill": (body("import os, posix", "posix.kill(os.getppid(), 9)", "return a - b"),
                              "failed: PermissionError: [Errno 1]"),
        "stop_ppid_sigstop": (body("import os, posix", "posix.kill(os.getppid(), 19)", "return a - b"),
                              "failed: PermissionError: [Errno 1]"),
        "kill_everything": (body("import posix", "posix.kill(-1, 9)", "return a - b"),
                            "failed: ProcessLookupError"),  # nobody else in its pid namespace
        "killpg_own_group": (body("import posix", "posix.killpg(0, 9)", "return a - b"),
                             "failed: killed by signal 9"),  # it may kill itself, and only itself
        "ptrace_supervisor": (body(CTYPES, "if libc.ptrace(16, 1, 0, 0) != 0:  # PTRACE_ATTACH",
                                   "    raise OSError(ctypes.get_errno(), 'ptrace')", "return a - b"),
                              "failed: PermissionError: [Errno 1] ptrace"),
        "rewrite_siblings_via_proc": (body(
            "import os, posix", "for pid in os.listdir('/proc'):",
            "    if pid.isdigit() and int(pid) != os.getpid():",
            "        for fd in os.listdir(f'/proc/{pid}/fd'):",
            "            posix.write(posix.open(f'/proc/{pid}/fd/{fd}', posix.O_WRONLY), b'0' * 32 + b' passed')",
            "        posix.kill(int(pid), 9)", "return a - b"),
            "failed: PermissionError: [Errno 13] Permission denied: '/proc/1/fd'"),
        "pth_in_site_packages": (body("import _io", f"_io.open({pth!r}, 'w').write('import sys\\n')",
                                      "return a - b"), ROFS),
        "posix_open": (body("import posix", f"posix.open({canary!r}, posix.O_WRONLY | posix.O_TRUNC)",
                            "return a - b"), ROFS),
        "io_fileio": (body("import io", f"io.FileIO({canary!r}, 'w')", "return a - b"), ROFS),
        "posix_unlink": (body("import posix", f"posix.unlink({other!r})", "return a - b"), ROFS),
        "posix_rename": (body("import posix", f"posix.rename({other!r}, {other + '.moved'!r})", "return a - b"), ROFS),
        "symlink_out_of_scratch": (body("import _io, posix", f"posix.symlink({canary!r}, 'link')",
                                        "_io.open('link', 'w').write('gone')", "return a - b"), ROFS),
        "sqlite_outside": (body("import sqlite3", f"sqlite3.connect({pth + '.db'!r}).execute('create table t(x)')",
                                "return a - b"), "failed: OperationalError"),
        "reimport_resource": (body("import sys", "sys.modules.pop('resource')", "import resource",
                                   "resource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "return a - b"),
                              "failed: ValueError: not allowed to raise maximum limit"),
        "reload_os_then_fork_bomb": (body("import importlib, os", "importlib.reload(os)", "while True:",
                                          "    os.fork()"), "failed: BlockingIOError"),
        "double_fork_setsid_daemon": (body(marked, "import posix, time", "if posix.fork() == 0:",
                                           "    posix.setsid()", "    if posix.fork() == 0:",
                                           "        while True: time.sleep(1)", "    posix._exit(0)",
                                           "return a - b"), "failed: AssertionError"),  # dies with its PID 1
        "sleeps_forever": (body(marked, "import time", "time.sleep(1000)"), "timed out"),
        "network_to_listener": (body("import socket", f"socket.create_connection(('127.0.0.1', {port}), 2)",
                                     "return a - b"), "failed: OSError: [Errno 101] Network is unreachable"),
        "harness_environ": (body("import os", "seen = repr(dict(os.environ))", "for pid in os.listdir('/proc'):",
                                 "    try:", "        seen += open(f'/proc/{pid}/environ').read()",
                                 "    except OSError:", "        pass", "raise Exception(seen)"),
                            "failed: Exception: {'PATH': '/usr/bin:/bin'"),
        "forge_own_verdict": (body(  # the token used to sit in __main__ and argv: look everywhere, claim a pass
            "import gc, os, posix, re, sys", "where = repr(sys.argv) + repr(vars(sys.modules['__main__']))",
            "where += repr(dict(os.environ)) + open('/proc/self/cmdline').read()",
            "frame = sys._getframe()", "while frame:", "    where += repr(frame.f_locals)", "    frame = frame.f_back",
            "for token in set(re.findall('[0-9a-f]{32}', where)):", "    for fd in range(3, 64):",
            "        try:", "            posix.write(fd, token.encode() + b' passed\\n')",
            "        except OSError:", "            pass", "posix._exit(0)"),
            "failed: exited with code 0 before the tests finished"),
        "fill_disk_big_files": (body("for i in range(128):", "    open(f'f{i}', 'wb').write(b'x' * (16 << 20))",
                                     "return a - b"), "failed: OSError: [Errno 28] No space left on device"),
        "fill_disk_many_files": (body("for i in range(100000):", "    open(f'f{i}', 'w').close()",
                                      "return a - b"), "failed: OSError: [Errno 28] No space left on device"),
    }


def comms():
    """The names (comm) of every process on the machine."""
    names = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            names.append(open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
    return names


class Listener:
    """A TCP listener on 127.0.0.1 keeping the address of every connection that reaches it."""
    def __init__(self):
        self.sock, self.peers = socket.create_server(("127.0.0.1", 0)), []
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            conn.close()
            self.peers.append(peer)


def grade_cli(tmp, samples, *args):
    """The command that grades `samples` (completions of Fixture/0) into tmp/results.jsonl, and that file."""
    samples_file, out_file = tmp / f"samples{len(os.listdir(tmp))}.jsonl", tmp / "results.jsonl"
    samples_file.write_text("".join(json.dumps({"task_id": "Fixture/0", "completion": c}) + "\n" for c in samples))
    cmd = [sys.executable, os.path.join(ROOT, "eval_code.py"), "--task", "humaneval", "--data", HE_MINI,
           "--samples", str(samples_file), "--out", str(out_file), "--require-isolation", *args]
    return cmd, out_file


def all_cases(canary, canary_dir, pth, port, marker):
    """The attacks on the namespaces, then those written against the Python-level guard (above)."""
    other = os.path.join(canary_dir, "canary.txt")
    return {**hostile(canary, other, pth, port, marker), **HOSTILE, **deleters(other, canary_dir)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, isolated):
    """Grade the corpus once: each hostile completion, then a correct and a wrong sibling."""
    tmp, tag = tmp_path_factory.mktemp("corpus"), secrets.token_hex(6)
    canary_dir = os.path.join(CANARY_HOME, f"smallcoder_canary_{tag}")
    os.mkdir(canary_dir)
    os.chmod(canary_dir, 0o777)
    canaries = {os.path.join(SITE, f"smallcoder_canary_{tag}.txt"): "site-packages",
                os.path.join(canary_dir, "canary.txt"): "in /var/tmp"}
    for path, text in canaries.items():
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o666)
    pth, marker, secret = os.path.join(SITE, f"zz_smallcoder_{tag}.pth"), f"sc{tag}", secrets.token_hex(16)
    listener, before = Listener(), {d: sorted(os.listdir(d)) for d in (SITE, canary_dir)}
    cases = all_cases(next(iter(canaries)), canary_dir, pth, listener.port, marker)
    samples = [c for completion, _ in cases.values() for c in (completion, GOOD, WRONG)]
    cmd, out_file = grade_cli(tmp, samples, "--timeout", "1", "--workers", "2")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env=dict(os.environ, SMALLCODER_SECRET=secret))
        rows = result_rows(out_file) if out_file.exists() else []
        after = {d: sorted(os.listdir(d)) for d in before}
        texts = {path: open(path).read() if os.path.exists(path) else None for path in canaries}
        probe, deadline = socket.create_connection(("127.0.0.1", listener.port), 2).getsockname(), time.time() + 5
        while probe not in listener.peers and time.time() < deadline:  # the listener works: this one gets in
            time.sleep(0.02)
        reached = [peer for peer in listener.peers if peer != probe]
        yield dict(proc=proc, rows=rows, cases=cases, canaries=canaries, texts=texts, before=before, after=after,
                   pth=pth, marker=marker, secret=secret, reached=reached, probe_in=probe in listener.peers, tmp=tmp)
    finally:  # if the sandbox failed, leave the shared venv as it was
        for path in [*canaries, pth, pth + ".db", next(iter(canaries)) + ".moved"]:
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(canary_dir, ignore_errors=True)
        listener.sock.close()


def test_detected_and_announced_once(corpus):
    assert corpus["proc"].returncode == 0, corpus["proc"].stderr
    assert sandbox.sandbox().mode == ("root" if os.geteuid() == 0 else "userns")
    assert corpus["proc"].stderr.count("sandbox: fresh ") == 1 and "read-only filesystem" in corpus["proc"].stderr


@pytest.mark.parametrize("name", list(all_cases("c", "d", "p", 1, "m")))
def test_hostile_verdict(corpus, name):
    i = list(corpus["cases"]).index(name)
    row = corpus["rows"][3 * i]
    assert row["completion"] == corpus["cases"][name][0]
    assert not row["passed"] and row["result"].startswith(corpus["cases"][name][1]), row["result"]


def test_siblings_graded_right(corpus):
    rows = corpus["rows"]
    assert len(rows) == 3 * len(corpus["cases"])
    assert all(r["completion"] == GOOD and r["passed"] and r["result"] == "passed" for r in rows[1::3])
    assert all(r["completion"] == WRONG and r["result"] == "failed: AssertionError" for r in rows[2::3])
    n = len(corpus["cases"])
    assert f"{3 * n} samples, {n} passed" in corpus["proc"].stdout


def test_nothing_outside_scratch_changed(corpus):
    assert corpus["texts"] == corpus["canaries"]  # each canary still holds its own name
    assert corpus["after"] == corpus["before"]  # no .pth, database or moved file next to them
    assert not os.path.exists(corpus["pth"])


def test_no_process_survives(corpus):
    assert corpus["marker"] not in comms()


def test_no_connection_reached_the_listener(corpus):
    assert corpus["probe_in"] and corpus["reached"] == []  # it listened, and no program reached it


def test_harness_environment_never_visible(corpus):
    row = corpus["rows"][3 * list(corpus["cases"]).index("harness_environ")]
    assert all(corpus["secret"] not in r["result"] for r in corpus["rows"])
    assert "HOME': '/tmp'" in row["result"]  # it did read its own environment: the tiny one


def test_later_run_not_poisoned(corpus):
    cmd, out_file = grade_cli(corpus["tmp"], [WRONG, GOOD], "--overwrite")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    rows = result_rows(out_file)
    assert [r["passed"] for r in rows] == [False, True] and "2 samples, 1 passed" in proc.stdout


def test_crash_keeps_graded_samples_and_kills_programs_then_resumes(tmp_path, isolated):
    """SIGKILL the harness while a program sleeps: the results written so far stay, the program dies with
    the harness, nothing of it is left once a rerun with the same --out has graded only what is missing."""
    marker, scratch = f"sc{secrets.token_hex(6)}", tmp_path / "tmp"  # the harness's TMPDIR
    scratch.mkdir()
    sleeper = body(CTYPES + f"libc.prctl(15, {marker.encode()!r})", "import time", "time.sleep(1000)")
    cmd, out_file = grade_cli(tmp_path, [GOOD, WRONG, sleeper, GOOD], "--timeout", "20", "--workers", "1")
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while marker not in comms() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker in comms()  # the sleeper runs, so the two before it were graded
    while len(out_file.read_text().splitlines()) < 3 and time.monotonic() < deadline:  # the header, 2 results
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_pid, rows = proc.pid, result_rows(out_file)
    assert [(r["completion"], r["passed"]) for r in rows] == [(GOOD, True), (WRONG, False)]
    while marker in comms() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker not in comms()  # the supervisor saw the harness die and killed the program
    # Mark a kept result: if the rerun graded it again, the mark would be gone.
    out_file.write_text(out_file.read_text().replace('"result": "passed"', '"result": "passed (kept)"', 1))
    # A resume keeps the settings (--timeout decides verdicts): the sleeper, which would take its 20 s again, is
    # swapped for a quick failure; the kept results match their samples and only the missing two are graded.
    cmd, _ = grade_cli(tmp_path, [GOOD, WRONG, body("raise ValueError"), GOOD], "--timeout", "20", "--workers", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0 and "resuming" in proc.stderr and "2 of 4 samples already graded" in proc.stderr
    rows = result_rows(out_file)
    assert [r["result"] for r in rows] == ["passed (kept)", "failed: AssertionError", "failed: ValueError", "passed"]
    assert os.listdir(scratch) == []  # no scratch dir of the killed harness's programs
    killed = f"smallcoder-{killed_pid}-"  # and no cgroup: the rerun removed what the killed harness left
    assert not [name for home in sandbox.cgroup_homes() for name in os.listdir(home) if name.startswith(killed)]


def test_cut_off_last_line_is_dropped_and_foreign_results_refused(tmp_path, capsys):
    out_file = tmp_path / "r.jsonl"
    argv = ["--task", "humaneval", "--data", HE_MINI, "--canonical", "--out", str(out_file)]
    assert E.main(argv) == 0
    lines = out_file.read_text().splitlines()  # the header, 3 results, the summary
    out_file.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # a crash in the middle of the second result
    assert E.main(argv) == 0 and "1 of 3 samples already graded" in capsys.readouterr().err
    assert out_file.read_text().splitlines()[1:] == lines[1:]  # (the header's start time is this run's)
    out_file.write_text(lines[0] + "\n" + json.dumps({"task_id": "Fixture/0", "completion": "x", "passed": True,
                                                      "result": "passed"}) + "\n")
    assert E.main(argv) == 2  # a result for a sample this run does not have
    assert "line 2 is not a result for these samples" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the fallbacks

def test_require_isolation_refuses_the_guard(monkeypatch, capsys):
    monkeypatch.setattr(E, "sandbox", lambda: sandbox.Sandbox("guard"))  # eval_code's name for it
    assert E.main(["--task", "humaneval", "--data", HE_MINI, "--canonical", "--require-isolation"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --require-isolation: this host offers no OS-level isolation")
    assert err.count("\n") == 1


def test_no_unshare_means_the_guard_and_a_loud_warning(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert sandbox.sandbox.__wrapped__() == sandbox.Sandbox("guard")
    err = capsys.readouterr().err
    assert err.startswith("warning: NO OS-LEVEL ISOLATION (util-linux unshare is not installed)")
    assert err.count("\n") == 1


def test_guard_and_user_namespace_modes_still_grade(isolated):
    """The fallback and the unprivileged mode, run here too: right verdicts, and (userns) the same walls."""
    userns = sandbox.Sandbox("userns", (shutil.which("unshare"), "--map-root-user", *sandbox.NAMESPACES))
    p = E.humaneval_problems(E.load_humaneval(HE_MINI))[0]
    for box in (sandbox.Sandbox("guard"), userns):
        assert sandbox.run_program(E.build_program(p, GOOD), timeout=2, box=box)[0] == "passed"
        assert sandbox.run_program(E.build_program(p, WRONG), timeout=2, box=box)[0] == "failed: AssertionError"
    outside = os.path.join(CANARY_HOME, "x")  # read-only to it, wherever the repo is
    for program, result in [(f"import _io\n_io.open({outside!r}, 'w')\n", "failed: OSError: [Errno 30]"),
                            ("import socket\nsocket.create_connection(('127.0.0.1', 1), 1)\n",
                             "failed: OSError: [Errno 101]"),
                            ("import os\nassert sorted(filter(str.isdigit, os.listdir('/proc'))) == ['1', '2']\n",
                             "passed")]:
        assert sandbox.run_program(program, timeout=2, box=userns)[0].startswith(result)
