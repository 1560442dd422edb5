"""Storage: every file smallcoder reads or writes, at a local path or a URL, goes through here.

A path may be a URL that fsspec opens (gs:// with gcsfs, s3:// with s3fs, memory://, file://); an unknown
scheme, or one whose plugin is missing, is a StorageError, never a local directory named "gs:". Writes are
whole or absent: `write_bytes` writes one file atomically (locally a temporary file, fsync, rename; at a
URL one upload, which an object store makes all-or-nothing), `write_dir` one directory (locally built
beside it and renamed into place; at a URL uploaded file by file, a chosen file last, as its commit).
`download` and `upload` get and put a directory's files.

This room imports nothing from the project: every other room builds on it.
"""
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path


class StorageError(ValueError):
    """A path that cannot be used (an unknown URL scheme, a missing plugin, an output that exists); one line."""


class CorruptFile(StorageError):
    """A file whose size or checksum is not what the manifest written with it says: damaged since."""


class StoreUnavailable(StorageError):
    """An object store that kept failing (5xx, timeouts, dropped connections) past the retries' time budget."""


def fingerprint(payload: bytes) -> dict:
    """What a manifest records of a file, to verify it when it is read back: its size and sha256."""
    return {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def verified(path: str, payload: bytes, expected: dict) -> bytes:
    """`payload` (read from `path`) if it matches its manifest's `expected` fingerprint, else CorruptFile."""
    got = fingerprint(payload)
    if got != expected:
        what = (f"{got['bytes']:,} bytes, its manifest says {expected.get('bytes')}"
                if got["bytes"] != expected.get("bytes")
                else f"sha256 {got['sha256'][:12]}…, its manifest says {str(expected.get('sha256'))[:12]}…")
        raise CorruptFile(f"{path} is damaged ({what})")
    return payload


def is_url(path: str) -> bool:
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def filesystem(path: str):
    """(fsspec filesystem, the path within it). A scheme fsspec does not know, or whose plugin (gcsfs for gs://,
    s3fs for s3://) is not installed, is a StorageError: never a local directory named "gs:"."""
    import fsspec
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as e:  # fsspec names the package: "Install gcsfs to access Google Storage"
        raise StorageError(f"{path}: {e}") from None
    except ValueError as e:
        raise StorageError(f"{path}: unsupported URL ({e})") from None


def join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names]) if is_url(base) else os.path.join(base, *names)


def write_bytes(path: str, payload: bytes, exclusive: bool = False) -> None:
    """Write a whole file so that no reader ever sees part of it, durably. Locally: a tmp file, fsync, rename.
    An object store has no rename, but a single upload is all-or-nothing already. `exclusive`: FileExistsError
    if `path` exists (atomic locally; at a URL, a check before the upload)."""
    if is_url(path):
        from fsspec.implementations.local import LocalFileSystem
        fs, inner = filesystem(path)
        if isinstance(fs, LocalFileSystem):  # file://x is the local path x: written as one
            return write_bytes(inner, payload, exclusive)
        if exclusive and fs.exists(inner):
            raise FileExistsError(path)
        return fs.pipe_file(inner, payload)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path) if exclusive else os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed (a full disk): leave nothing behind
            os.remove(tmp)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)  # the rename itself, durably
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    return fs.cat_file(inner)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def listdir(path: str) -> list[str]:
    """The names in directory `path` (none if it does not exist)."""
    fs, inner = filesystem(path)
    if not fs.isdir(inner):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))


def remove(path: str) -> None:
    """Delete a file or a directory tree; nothing there is fine."""
    fs, inner = filesystem(path)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


def download(path: str, names: tuple) -> str:
    """A local directory holding `names` of directory `path` (those that exist): `path` itself when local, else a
    fresh temporary copy (removed at exit)."""
    if not is_url(path):
        return path
    import atexit
    local = tempfile.mkdtemp(prefix="smallcoder-")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    for name in set(names) & set(listdir(path)):
        Path(local, name).write_bytes(read_bytes(join(path, name)))
    return local


def upload(local_dir: str, path: str, last: str = "") -> None:
    """Copy every file of `local_dir` into directory `path`, each with write_bytes, file `last` last (a reader
    that finds it finds the rest)."""
    for name in sorted(os.listdir(local_dir), key=lambda name: (name == last, name)):
        write_bytes(join(path, name), Path(local_dir, name).read_bytes())


def check_new(out_dir: str) -> None:
    """StorageError unless `out_dir` is free for `write_dir`: absent, or (locally) an empty directory."""
    if is_url(out_dir):
        if exists(out_dir):
            raise StorageError(f"{out_dir} already exists: refusing to overwrite it")
    elif os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise StorageError(f"{out_dir} already exists and is not empty: refusing to overwrite it")


def write_dir(out_dir: str, write, last: str) -> None:
    """Run write(tmp_dir), then make tmp_dir's files `out_dir`, which must be new (check_new): locally by a rename,
    so a failure leaves nothing behind; at a URL (no rename there) by an upload, file `last` last (a directory
    without it is incomplete)."""
    check_new(out_dir)
    if is_url(out_dir):
        with tempfile.TemporaryDirectory() as tmp:
            write(tmp)
            return upload(tmp, out_dir, last=last)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the directory gets the umask's mode (0755), not mkdtemp's private 0700.
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp-{secrets.token_hex(6)}")
    os.mkdir(tmp)
    try:
        write(tmp)
        umask = os.umask(0o022)
        os.umask(umask)  # reading the umask means setting it. safetensors writes 0600: give files the umask's mode
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        check_new(out_dir)  # again: something may have appeared there while we were writing
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked): rename will not replace a directory on every OS
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
