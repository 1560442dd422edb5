"""storage.py: one atomic file write and one atomic directory write, locally, at file:// and at a URL
(fsspec's in-memory filesystem, which has no rename), get and put of a directory, and a bad URL as one line."""
import os
import uuid

import pytest

import storage


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
