"""Fixtures shared by the test files."""
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))


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
