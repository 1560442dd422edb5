"""storage.py: one atomic file write and one atomic directory write, locally, at file:// and at a URL
(fsspec's in-memory filesystem, which has no rename), get and put of a directory, and a bad URL as one line."""
import os
import subprocess
import sys
import uuid

import pytest

import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_files_on_local_paths_and_urls(tmp_path):
    for root in (str(tmp_path / "local"), f"memory://t-{uuid.uuid4().hex}", f"file://{tmp_path}/url"):
        path = storage.join(root, "d", "f.bin")
        storage.write_bytes(path, b"one")
        storage.write_bytes(path, b"two")
        assert storage.read_bytes(path) == b"two" and storage.listdir(storage.join(root, "d")) == ["f.bin"]
        with pytest.raises(FileExistsError):
            storage.write_bytes(path, b"three", exclusive=True)
        local = storage.download(storage.join(root, "d"), ("f.bin", "absent.json"))
        assert os.listdir(local) == ["f.bin"]
        storage.remove(storage.join(root, "d"))
        assert not storage.exists(path) and storage.listdir(storage.join(root, "d")) == []
    assert os.listdir(tmp_path / "local") == []  # no tmp file left by the writes
    with pytest.raises(storage.StorageError, match="unsupported URL"):
        storage.read_bytes("nope://bucket/x")


def write_two(tmp):
    for name in ("a.txt", "config.json"):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(name)


def test_a_directory_is_written_whole_or_not_at_all(tmp_path):
    out = str(tmp_path / "sub" / "out")
    storage.write_dir(out, write_two, last="config.json")
    assert sorted(os.listdir(out)) == ["a.txt", "config.json"] and os.listdir(tmp_path / "sub") == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask  # the umask's mode, not mkdtemp's private 0700
    with pytest.raises(storage.StorageError, match="already exists and is not empty: refusing to overwrite it"):
        storage.write_dir(out, write_two, last="config.json")

    def fails(tmp):
        write_two(tmp)
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        storage.write_dir(str(tmp_path / "failed"), fails, last="config.json")
    assert sorted(os.listdir(tmp_path)) == ["sub"]  # nothing left behind, not even the temporary directory
    (tmp_path / "empty").mkdir()
    storage.write_dir(str(tmp_path / "empty"), write_two, last="config.json")  # an empty directory is free


def test_a_directory_at_a_url_is_uploaded_with_its_commit_file_last(tmp_path, monkeypatch):
    out, order, put = f"memory://t-{uuid.uuid4().hex}/out", [], storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda path, payload, exclusive=False: (
        order.append(path.rpartition("/")[2]), put(path, payload, exclusive)))
    storage.write_dir(out, write_two, last="config.json")
    assert order == ["a.txt", "config.json"] and storage.read_bytes(out + "/a.txt") == b"a.txt"
    with pytest.raises(storage.StorageError, match="already exists: refusing to overwrite it"):
        storage.write_dir(out, write_two, last="config.json")


def test_an_object_store_fails_transiently_and_is_retried_then_is_one_line(monkeypatch):
    """5xx, timeouts and dropped connections are retried with growing pauses for up to RETRY_SECONDS; then one
    StoreUnavailable naming the URL. An answer (a missing file) is not retried."""
    path, sleeps, fails = f"memory://t-{uuid.uuid4().hex}/f.bin", [], []
    fs, _ = storage.filesystem(path)
    real = fs.pipe_file

    class HttpError(Exception):
        code = 503

    def flaky(*args, **kwargs):
        if len(fails) < 3:
            fails.append(1)
            raise [ConnectionResetError("connection reset by peer"), TimeoutError(), HttpError("Service Unavailable")][
                len(fails) - 1]
        return real(*args, **kwargs)
    class Clock:  # time as the retries see it: a pause takes no real time here
        now = 0.0

        def monotonic(self):
            return self.now

        def sleep(self, seconds):
            sleeps.append(seconds)
            self.now += seconds
    monkeypatch.setattr(storage, "time", Clock())
    monkeypatch.setattr(storage, "RETRY_SECONDS", 60.0)
    monkeypatch.setattr(storage, "_store_down", False)  # (and back to False after this test)
    monkeypatch.setattr(fs, "pipe_file", flaky)
    storage.write_bytes(path, b"whole")
    assert storage.read_bytes(path) == b"whole" and len(sleeps) == 3
    assert [0.5, 1, 2] <= [round(s, 1) for s in sleeps] <= [1, 2, 4]  # 1 s, 2 s, 4 s, jittered by up to half

    monkeypatch.setattr(storage, "RETRY_SECONDS", 5.0)
    real_cat = fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda *a, **k: (_ for _ in ()).throw(HttpError("503 backend error")))
    sleeps.clear()
    with pytest.raises(storage.StoreUnavailable) as e:
        storage.read_bytes(path)
    # pauses of ~1 s and ~2 s; the next, ~4 s, would end past the 5 s budget
    assert str(e.value) == f"reading {path} failed for {sum(sleeps):.0f} s (503 backend error)" and len(sleeps) == 2
    sleeps.clear()  # the store is down: until a call succeeds, calls try once (a failed save's cleanup is quick)
    with pytest.raises(storage.StoreUnavailable, match=r"failed again, the store still down \(503 backend error\)$"):
        storage.read_bytes(path)
    assert sleeps == []
    monkeypatch.setattr(fs, "cat_file", real_cat)
    assert storage.read_bytes(path) == b"whole"  # back: retries again
    monkeypatch.setattr(fs, "pipe_file", lambda *a, **k: (_ for _ in ()).throw(TimeoutError()))
    with pytest.raises(storage.StoreUnavailable):
        storage.write_bytes(path, b"again")
    assert len(sleeps) == 2

    sleeps.clear()
    monkeypatch.setattr(fs, "cat_file", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError(path)))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(path)
    assert sleeps == []


def test_a_store_without_create_if_absent_is_refused_not_guessed_at(monkeypatch):
    monkeypatch.setattr(storage, "CREATE_IF_ABSENT", ("gs", "s3"))
    path = f"memory://t-{uuid.uuid4().hex}/LOCK"
    with pytest.raises(storage.StorageError, match=r"^memory://t-\w+/LOCK: memory:// offers no create-if-absent"):
        storage.write_bytes(path, b"me", exclusive=True)
    assert not storage.exists(path)


RACE = """
import sys, time, storage
start, base, me = float(sys.argv[1]), sys.argv[2], sys.argv[3]
for trial in range(6):  # trial k starts at the same instant in both processes
    time.sleep(max(0.0, start + 0.5 * trial - time.time()))
    try:
        storage.write_bytes(f"{base}/run{trial}/LOCK", me.encode(), exclusive=True)
        print("won", end=" ")
    except FileExistsError:
        print("lost", end=" ")
"""


def test_two_runs_racing_for_a_lock_on_a_real_object_store_cannot_both_win(gcs):
    """Issue 30, case 1: on the GCS emulator, two processes write the same LOCK at the same instant: exactly one
    wins, in each of 6 trials (a check before the upload let both win in 6 of 6)."""
    import time
    bucket, start = gcs.bucket(), time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(start), bucket, f"p{i}"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    said = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(sorted(trial) == ["lost", "won"] for trial in zip(*said)) and len(said[0]) == 6, said
    for trial in range(6):  # the winner's LOCK, whole
        assert storage.read_bytes(f"{bucket}/run{trial}/LOCK") == f"p{said[1][trial] == 'won':d}".encode()


def test_a_missing_bucket_is_one_line_naming_the_url(gcs):
    with pytest.raises(storage.StorageError) as e:
        storage.write_bytes("gs://no-such-bucket/run/LOCK", b"x")
    assert str(e.value) == ("cannot write gs://no-such-bucket/run/LOCK: its bucket does not exist (or these "
                            "credentials cannot see it)")
    assert not storage.exists("gs://no-such-bucket/run/LOCK") and storage.listdir("gs://no-such-bucket/run") == []


def test_the_store_restarting_mid_write_is_waited_for(gcs, monkeypatch):
    """The emulator goes down and comes back 3 s later (its objects kept): a write in between succeeds."""
    import threading
    monkeypatch.setattr(storage, "RETRY_SECONDS", 60.0)
    path = f"{gcs.bucket()}/step/params.safetensors"
    gcs.stop()
    restart = threading.Timer(3.0, gcs.start)
    restart.start()
    try:
        storage.write_bytes(path, b"weights")
    finally:
        restart.join()
    assert storage.read_bytes(path) == b"weights"


def test_a_directory_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("in the way")
    for parent, why in (("/proc/smallcoder-x", "No such file or directory"), (str(tmp_path / "file"),
                                                                          f"{tmp_path / 'file'} is not a directory")):
        with pytest.raises(storage.StorageError) as e:
            storage.write_bytes(os.path.join(parent, "run", "LOCK"), b"x")
        assert str(e.value) == f"cannot create directory {parent}/run: {why}"
        with pytest.raises(storage.StorageError, match=f"^cannot create directory {parent}: {why}$"):
            storage.write_dir(os.path.join(parent, "out"), write_two, last="config.json")
