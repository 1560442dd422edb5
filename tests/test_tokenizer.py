"""Tests for corpus.py and tokenizer.py: the offline stdlib corpus and its held-out split, the stdlib tokenizer
(trained once, then read from the cache), loading a tokenizer and its one-line errors."""
import json

import pytest

import corpus
import data
import tokenizer

pytestmark = pytest.mark.usefixtures("cache")  # the stdlib corpus and tokenizer: a private cache


def test_stdlib_sft_pairs():
    code = 'class A:\n    def area(self, r=2):\n        """Return the area.\n\n        More.\n        """\n' \
           '        return 3 * r * r\n\ndef nodoc(x):\n    return x\n'
    (pair,) = corpus.stdlib_sft_pairs(code)
    assert pair["prompt"] == "Write a Python function `area(self, r=2)` that: Return the area."
    assert pair["response"] == "def area(self, r=2):\n    return 3 * r * r"


def test_stdlib_corpus_and_tokenizer(monkeypatch, capsys, tmp_path):
    files = corpus.stdlib_files()
    assert len(files) > 300 and not any("site-packages" in r or "/test/" in f"/{r}" for r, _ in files)
    val = [r for r, _ in files if corpus.is_held_out(r)]
    assert 0.005 < len(val) / len(files) < 0.05
    split = corpus.stdlib_corpus("stdlib")
    paths = {s: {json.loads(line)["path"] for f in fs for line in open(f)} for s, fs in split.items()}
    assert paths["val"] == set(val) and not paths["train"] & paths["val"]

    stdlib_tok = tokenizer.load_tokenizer("stdlib")
    assert stdlib_tok.get_vocab_size() == 8192 and tokenizer.eos_id(stdlib_tok) == 0
    monkeypatch.setattr(tokenizer, "_train_stdlib_tokenizer", lambda: 1 / 0)  # the second call must not retrain
    assert tokenizer.load_tokenizer("stdlib").to_str() == stdlib_tok.to_str()

    # the offline demo's data (stages/tiny.py), previewed by data.py from the cached corpus and tokenizer
    stage = tmp_path / "tiny.py"
    stage.write_text('tokenizer = "stdlib"\nmixture = [{"path": "stdlib", "weight": 1.0}]\nseq_len = 64\n'
                     'batch_size = 2\nsteps = 10  # other keys belong to train.py\n')
    data.main([str(stage), "--batches", "3"])
    out = capsys.readouterr().out
    assert "tokens/s" in out and "100.0%" in out and "--- row 0 (64/64 targets in the loss) ---" in out


def test_tokenizer_errors(monkeypatch, tmp_path, tok):
    from tokenizers import Tokenizer

    def offline(*args, **kwargs):
        raise RuntimeError("hub unreachable")
    monkeypatch.setattr(Tokenizer, "from_pretrained", offline)
    with pytest.raises(tokenizer.TokenizerError, match="tiny_starcoder_py"):
        tokenizer.load_tokenizer("bigcode/starcoder")
    with pytest.raises(tokenizer.TokenizerError, match="does not exist"):
        tokenizer.load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "truncation"')  # cut short
    with pytest.raises(tokenizer.TokenizerError, match="tokenizer.json' is not a tokenizer"):
        tokenizer.load_tokenizer(str(tmp_path))
    tok.save(str(tmp_path / "tokenizer.json"))
    assert tokenizer.eos_id(tokenizer.load_tokenizer(str(tmp_path))) == 0  # a directory holding tokenizer.json
    no_eos = Tokenizer.from_str(tok.to_str().replace(tokenizer.EOS_TOKEN, "<|end|>"))
    with pytest.raises(tokenizer.TokenizerError, match="endoftext"):
        tokenizer.eos_id(no_eos)
