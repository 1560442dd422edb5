"""Storage: every file smallcoder reads or writes, at a local path or a URL, goes through here.

A path may be a URL that fsspec opens (gs:// with gcsfs, s3:// with s3fs, memory://, file://); an unknown
scheme, or one whose plugin is missing, is a StorageError, never a local directory named "gs:". Writes are
whole or absent: `write_bytes` writes one file atomically (locally a temporary file, fsync, rename; at a
URL one upload, which an object store makes all-or-nothing), `write_dir` one directory (locally built
beside it and renamed into place; at a URL uploaded file by file, a chosen file last, as its commit).
`download` and `upload` get and put a directory's files.

Object stores fail transiently (5xx, timeouts, dropped connections) on every week-long run: each call at a URL
is retried with exponential backoff for up to RETRY_SECONDS, then is a StoreUnavailable naming the URL. An
exclusive write at a URL is the store's own create-if-absent (GCS `ifGenerationMatch=0`, S3 `If-None-Match: *`):
two runs racing for one LOCK cannot both win; a store that offers no such write is refused, not guessed at.

This room imports nothing from the project: every other room builds on it.
"""
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

# How long a call to an object store is retried before the store counts as down (a run then stops with one line
# naming the checkpoint a rerun resumes from). SMALLCODER_STORE_RETRY_SECONDS sets it (the tests: a second).
RETRY_SECONDS = float(os.environ.get("SMALLCODER_STORE_RETRY_SECONDS", 300))


class StorageError(ValueError):
    """A path that cannot be used (an unknown URL scheme, a missing plugin, an output that exists); one line."""


class CorruptFile(StorageError):
    """A file whose size or checksum is not what the manifest written with it says: damaged since."""


class StoreUnavailable(StorageError):
    """An object store that kept failing (5xx, timeouts, dropped connections) past the retries' time budget."""


def fingerprint(payload: bytes) -> dict:
    """What a manifest records of a file, to verify it when it is read back: its size and sha256."""
    return {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def sha256(path: str) -> str:
    """sha256 of a file at a path or URL, streamed: a model's weights need not fit in memory twice."""
    fs, inner = filesystem(path)
    with fs.open(inner, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verified(path: str, payload: bytes, expected: dict) -> bytes:
    """`payload` (read from `path`) if it matches its manifest's `expected` fingerprint, else CorruptFile."""
    check(path, fingerprint(payload), expected)
    return payload


def check(path: str, got: dict, expected: dict) -> None:
    """CorruptFile unless `got`, the fingerprint of the file at `path` (one read whole, or streamed by its reader),
    is its manifest's `expected`."""
    if got != expected:
        what = (f"{got['bytes']:,} bytes, its manifest says {expected.get('bytes')}"
                if got["bytes"] != expected.get("bytes")
                else f"sha256 {got['sha256'][:12]}…, its manifest says {str(expected.get('sha256'))[:12]}…")
        raise CorruptFile(f"{path} is damaged ({what})")


def is_url(path: str) -> bool:
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def filesystem(path: str):
    """(fsspec filesystem, the path within it). A scheme fsspec does not know, or whose plugin (gcsfs for gs://,
    s3fs for s3://) is not installed, is a StorageError: never a local directory named "gs:"."""
    import fsspec
    try:
        fs, inner = fsspec.core.url_to_fs(path)
    except ImportError as e:  # fsspec names the package: "Install gcsfs to access Google Storage"
        raise StorageError(f"{path}: {e}") from None
    except ValueError as e:
        raise StorageError(f"{path}: unsupported URL ({e})") from None
    for name in ("gcsfs", "s3fs"):  # their retry loops log every failure with a traceback: we say it in one line
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    return fs, inner


def _transient(e: BaseException) -> bool:
    """Is `e` an object store's passing failure (worth retrying), not an answer (a missing file, a refusal)?"""
    if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(e, "code", None) or getattr(e, "status", None)  # gcsfs' HttpError.code, aiohttp's .status
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(e, (TimeoutError, ConnectionError)) or type(e).__module__.split(".")[0] in (
        "aiohttp", "requests", "urllib3", "botocore", "aiobotocore")


_store_down = False  # a call gave up: until one succeeds, the rest try once (a failed save's cleanup must not wait)


def _call(path: str, what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) on `path`'s filesystem: at a URL retried with exponential backoff (1 s, 2 s, ... 30 s,
    jittered) while it fails transiently, for up to RETRY_SECONDS; then a one-line StoreUnavailable."""
    global _store_down
    from fsspec.implementations.local import LocalFileSystem
    if isinstance(getattr(fn, "__self__", None), LocalFileSystem):
        return fn(*args, **kwargs)
    start, delay = time.monotonic(), 1.0
    while True:
        try:
            result = fn(*args, **kwargs)
            _store_down = False
            return result
        except Exception as e:
            if not _transient(e):
                raise
            if _store_down or time.monotonic() + delay > start + RETRY_SECONDS:
                why = " ".join(str(e).split())[:200] or type(e).__name__
                when = "again, the store still down" if _store_down else f"for {time.monotonic() - start:.0f} s"
                _store_down = True
                raise StoreUnavailable(f"{what} {path} failed {when} ({why})") from None
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(2 * delay, 30.0)


def join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names]) if is_url(base) else os.path.join(base, *names)


# The stores whose pipe_file(mode="create") is one create-if-absent request (gcsfs: ifGenerationMatch=0; s3fs:
# If-None-Match: *), or (memory://) one process's check-and-write.
CREATE_IF_ABSENT = ("gs", "gcs", "s3", "s3a", "memory")


def write_bytes(path: str, payload: bytes, exclusive: bool = False) -> None:
    """Write a whole file so that no reader ever sees part of it, durably. Locally: a tmp file, fsync, rename.
    An object store has no rename, but a single upload is all-or-nothing already. `exclusive`: FileExistsError
    if `path` exists, decided atomically (locally a hard link, at a URL the store's create-if-absent)."""
    if is_url(path):
        from fsspec.implementations.local import LocalFileSystem
        fs, inner = filesystem(path)
        if isinstance(fs, LocalFileSystem):  # file://x is the local path x: written as one
            return write_bytes(inner, payload, exclusive)
        if exclusive and (scheme := path.partition("://")[0].lower()) not in CREATE_IF_ABSENT:
            raise StorageError(f"{path}: {scheme}:// offers no create-if-absent write, so two runs could both "
                               f"take this file; use a gs://, s3:// or local path")
        try:
            return _call(path, "writing", fs.pipe_file, inner, payload, **({"mode": "create"} if exclusive else {}))
        except FileNotFoundError:  # an upload finds no folders to miss: its bucket is what is missing
            raise StorageError(f"cannot write {path}: its bucket does not exist (or these credentials cannot "
                               f"see it)") from None
    makedirs(os.path.dirname(path) or ".")
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


def makedirs(path: str) -> None:
    """A local directory and its parents, like os.makedirs. One that cannot be made (under /proc, a file in the way,
    no permission) is the user's path: one line naming it (a full disk while writing stays an OSError: save_step's)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        above = path  # the nearest part of it that exists: a file there is the reason, whatever errno says
        while above not in ("", "/") and not os.path.exists(above):
            above = os.path.dirname(above)
        why = f"{above} is not a directory" if os.path.exists(above) and not os.path.isdir(above) else e.strerror
        raise StorageError(f"cannot create directory {path}: {why or e}") from None


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    return _call(path, "reading", fs.cat_file, inner)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return _call(path, "looking for", fs.exists, inner)


def listdir(path: str) -> list[str]:
    """The names in directory `path` (none if it does not exist)."""
    fs, inner = filesystem(path)
    if not _call(path, "listing", fs.isdir, inner):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in _call(path, "listing", fs.ls, inner, detail=False))


def remove(path: str) -> None:
    """Delete a file or a directory tree; nothing there is fine."""
    fs, inner = filesystem(path)
    if _call(path, "looking for", fs.exists, inner):
        _call(path, "removing", fs.rm, inner, recursive=True)


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
    makedirs(parent)
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
