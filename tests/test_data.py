"""Tests for data.py: mixtures, packing, SFT masks and EOS, sharding, exact resume, local files, errors."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import corpus  # noqa: E402
import data  # noqa: E402
import sources  # noqa: E402
import tokenizer  # noqa: E402
from helpers import assert_same_batches, resumes, stream, take, write_jsonl  # noqa: E402

EOS = tokenizer.EOS_TOKEN
pytestmark = pytest.mark.usefixtures("cache")  # a private SMALLCODER_CACHE: nothing here writes to ~/.cache


def split_docs(tok, ids):
    """Decoded documents of a token stream, cut at EOS (the last one, possibly partial, is left out)."""
    eos, docs, cur = tokenizer.eos_id(tok), [], []
    for i in ids:
        if i == eos:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    return docs


# ---------------------------------------------------------------------------------------------- mixtures

def test_mixture_proportions_within_2_points(tmp_path, tok):
    weights = [0.5, 0.3, 0.2]
    mixture = [{"path": write_jsonl(tmp_path / f"s{k}.jsonl", [{"text": f"{k}"} for i in range(500)]), "weight": w}
               for k, w in enumerate(weights)]
    b = data.Batches(mixture, tok, seq_len=127, batch_size=16, seed=3)
    ids = []
    while sum(s["docs"] for s in b.stats()) < 12000:
        ids += stream(take(b, 10))[0]
    docs = split_docs(tok, ids)
    stats = b.stats()
    n = sum(s["docs"] for s in stats)
    assert n >= 12000
    for k, (s, w) in enumerate(zip(stats, weights)):
        assert abs(s["docs"] / n - w) < 0.02, (s, w)
        assert abs(docs.count(str(k)) / len(docs) - w) < 0.02  # what the rows hold, not just the counters
    assert stats[2]["epoch"] >= 1  # 500-document files were restarted


# ---------------------------------------------------------------------------------------------- packing

def test_packing_neither_loses_nor_duplicates(tmp_path, tok):
    texts = [f"doc number {i} " + "x" * (i * 7 % 50) for i in range(60)]
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    b = data.Batches([{"path": src, "weight": 1.0}], tok, seq_len=31, batch_size=3)
    batches = take(b, 40)
    for x in batches:
        assert x["inputs"].shape == x["targets"].shape == x["mask"].shape == (3, 31)
        assert x["inputs"].dtype == x["targets"].dtype == np.int32 and x["mask"].dtype == np.float32
        np.testing.assert_array_equal(x["inputs"][:, 1:], x["targets"][:, :-1])
        assert (x["mask"] == 1).all()
    ids, _ = stream(batches)
    docs = split_docs(tok, ids)
    train = [t for t in texts if not corpus.is_held_out(t)]  # (the rest is split="val")
    assert 0 < len(texts) - len(train) < 6
    assert len(docs) > 2 * len(train)  # wrapped around the file twice: every document, in order, every epoch
    assert docs == [train[i % len(train)] for i in range(len(docs))]
    expected = []
    for i in range(len(docs) + 1):
        expected += tok.encode(train[i % len(train)]).ids + [0]
    assert ids == expected[:len(ids)]  # the token stream itself, no token lost or repeated across rows


# ---------------------------------------------------------------------------------------------- SFT

def test_sft_mask_and_eos(tmp_path, tok):
    examples = [("add one", "def f(x):\n    return x + 1"), ("say hi", "print('hi')"),
                ("far too long", "x = 1\n" * 40), ("nothing", "pass")]
    src = write_jsonl(tmp_path / "sft.jsonl", [{"q": p, "a": r, "other": 1} for p, r in examples])
    seq_len = 47
    b = data.Batches([{"path": src, "weight": 1.0, "prompt": "q", "response": "a"}], tok, seq_len, batch_size=2)
    ids, mask = stream(take(b, 6))
    expected_ids, expected_mask = [], []
    while len(expected_ids) < len(ids):
        for p, r in examples:
            p_ids = tok.encode(f"User: {p}\nAssistant:").ids
            r_ids = tok.encode(" " + r).ids
            if len(p_ids) + len(r_ids) + 1 > seq_len + 1:
                continue  # the long one: dropped, never cut
            expected_ids += p_ids + r_ids + [0]
            expected_mask += [0.0] * len(p_ids) + [1.0] * (len(r_ids) + 1)
    n = len(ids)
    assert ids == expected_ids[:n]
    assert all(m == e for m, e in zip(mask, expected_mask[:n]) if m is not None)
    assert all(mask[i] == 1.0 for i in range(n) if ids[i] == 0 and mask[i] is not None)  # every EOS is trained on
    assert tok.decode(expected_ids[:expected_ids.index(0) + 1], skip_special_tokens=False) == \
        "User: add one\nAssistant: def f(x):\n    return x + 1" + EOS
    decoded = split_docs(tok, ids)
    assert not any("x = 1" in d for d in decoded)
    stats = b.stats()[0]
    assert stats["dropped"] >= 2 and stats["dropped"] in (stats["epoch"], stats["epoch"] + 1)  # once per pass


def test_sft_all_too_long_is_an_error(tmp_path, tok):
    src = write_jsonl(tmp_path / "long.jsonl", [{"q": "q", "a": "y = 2\n" * 50}] * 3)
    b = data.Batches([{"path": src, "weight": 1.0, "prompt": "q", "response": "a"}], tok, 16, 2)
    with pytest.raises(data.DataError, match="dropped"):
        next(b)


def test_only_appended_eos_ends_documents(tmp_path, tok):
    text = "a file that mentions <|endoftext|> in a string"
    src = write_jsonl(tmp_path / "eos.jsonl", [{"text": text}])
    ids, _ = stream(take(data.Batches([{"path": src, "weight": 1.0}], tok, 63, 1), 1))
    assert split_docs(tok, ids)[0] == text  # read as plain text, not as an EOS token
    assert tok.encode(text).ids.count(0) == 1  # (which the caller's tokenizer, left unchanged, would do)


def test_chat_text_is_trained_whole(tmp_path, tok):
    src = write_jsonl(tmp_path / "chat.jsonl", [{"text": "User: hi\nAssistant: hello"}])
    b = data.Batches([{"path": src, "weight": 1.0, "chat_text": True}], tok, 15, 1)
    x = next(b)
    assert (x["mask"] == 1).all() and 0 in x["targets"][0]


# ---------------------------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("n_files", [4, 3])  # by file when files divide evenly, else every other example
def test_two_process_sharding_disjoint_and_complete(tmp_path, tok, n_files):
    all_docs = [f"doc {i}" for i in range(40)]
    for f in range(n_files):
        write_jsonl(tmp_path / f"p{f}.jsonl", [{"text": t} for t in all_docs[f::n_files]])
    seen = []
    for rank in range(2):
        b = data.Batches([{"path": str(tmp_path / "p*.jsonl"), "weight": 1.0}], tok, 15, 4,
                         process_index=rank, process_count=2)
        docs = split_docs(tok, stream(take(b, 12))[0])
        first_epoch = docs[:docs.index(docs[0], 1)]  # the shard repeats in the same order
        assert docs[:2 * len(first_epoch)] == first_epoch * 2
        seen.append(set(first_epoch))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {d for d in all_docs if not corpus.is_held_out(d)}


# ---------------------------------------------------------------------------------------------- resume

@pytest.fixture
def mixed_sources(tmp_path):
    pre = write_jsonl(tmp_path / "pre.jsonl", [{"text": f"doc number {i} " * (1 + i % 5)} for i in range(37)])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"q": f"write {i}", "a": "def f(x):\n    return x + 1" * (i % 3)}
                                               for i in range(23)])
    return [{"path": pre, "weight": 0.6}, {"path": sft, "weight": 0.4, "prompt": "q", "response": "a"}]


def test_resume_yields_exactly_the_same_batches(monkeypatch, tok, mixed_sources):
    monkeypatch.setattr(sources, "CHUNK_DOCS", 5)  # many chunk boundaries and epochs inside a short test
    monkeypatch.setattr(sources, "READ_BATCH", 2)
    uninterrupted = data.Batches(mixed_sources, tok, 29, 3, seed=7)
    full = take(uninterrupted, 29)
    b = data.Batches(mixed_sources, tok, 29, 3, seed=7)
    for n, state, resumed in resumes(b, lambda: data.Batches(mixed_sources, tok, 29, 3, seed=7), 22):
        # checkpoints inside documents, at chunk ends, across epochs
        assert len(json.dumps(state)) < 4000
        assert_same_batches(full[n:n + 8], take(resumed, 8))
    assert resumed.stats() == uninterrupted.stats()  # counters (docs, tokens, dropped, epochs) resume too
    assert 0 < b.stats()[1]["docs"] and b.stats()[0]["epoch"] >= 1


def test_resume_does_not_reread_from_the_start(monkeypatch, tok, mixed_sources):
    monkeypatch.setattr(sources, "CHUNK_DOCS", 5)
    monkeypatch.setattr(sources, "READ_BATCH", 5)
    b = data.Batches(mixed_sources, tok, 29, 3)
    take(b, 20)
    state = b.state_dict()
    assert all(r["consumed"] <= 5 for r in state["readers"])  # a position inside the current chunk
    read = []
    original = sources.Reader._read_chunk

    def counting(self):
        columns, n = original(self)
        read.append(n)
        return columns, n
    monkeypatch.setattr(sources.Reader, "_read_chunk", counting)
    resumed = data.Batches(mixed_sources, tok, 29, 3)
    resumed.load_state_dict(state)
    next(resumed)  # needs a few documents: the restored chunks, not the 20 batches' worth again
    consumed = sum(r.docs + r.dropped for r in b.readers)
    assert sum(read) <= 20 < consumed


def test_val_split_cycles_deterministically(tmp_path, tok, capsys):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "train doc"}] * 5)
    write_jsonl(tmp_path / "val.jsonl", [{"text": f"val doc {i}"} for i in range(5)])
    src = {"path": str(tmp_path / "{split}.jsonl"), "weight": 1.0, "val_split": "val"}
    b = data.Batches([src], tok, 15, 2, split="val")
    first = take(b, 3)
    b.reset()
    again = take(b, 3)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert set(split_docs(tok, stream(first)[0])) <= {f"val doc {i}" for i in range(5)}
    with pytest.raises(data.DataError, match="val_split"):
        data.Batches([dict(src, val_split=None)], tok, 15, 2, split="val")
    # what a run makes of it: no held-out loss, said in one line, and training goes on
    assert data.held_out([dict(src, val_split=None)], tok, 15, 2) is None
    assert capsys.readouterr().out.startswith("no held-out loss: ")
    assert data.held_out([src], tok, 15, 2) is not None


# ---------------------------------------------------------------------------------------------- local files

def test_jsonl_parquet_and_txt_through_the_same_path(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [f"doc number {i}\nsecond line" for i in range(9)]
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    pq.write_table(pa.table({"text": texts}), tmp_path / "d.parquet")
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "txt" / f"{i}.txt").write_text(t)
    out = {}
    for name, path in [("jsonl", "d.jsonl"), ("parquet", "d.parquet"), ("txt", "txt/*.txt")]:
        b = data.Batches([{"path": str(tmp_path / path), "weight": 1.0}], tok, 23, 2)
        out[name] = stream(take(b, 4))[0]
    assert out["jsonl"] == out["parquet"] == out["txt"]
    train = [t for t in texts if not corpus.is_held_out(t)]
    assert split_docs(tok, out["jsonl"])[:len(train)] == train


# ---------------------------------------------------------------------------------------------- errors

def test_missing_text_field_names_dataset_and_fields(tmp_path, tok):
    src = write_jsonl(tmp_path / "code.jsonl", [{"content": "x", "lang": "py"}])
    with pytest.raises(data.DataError, match=r"code\.jsonl.*no field 'text'.*\['content', 'lang'\]"):
        next(data.Batches([{"path": src, "weight": 1.0}], tok, 15, 1))


def test_empty_source_is_an_error(tmp_path, tok):
    (tmp_path / "empty.jsonl").write_text("")
    src = {"path": str(tmp_path / "empty.jsonl"), "weight": 1.0}
    with pytest.raises(data.DataError, match="empty"):
        next(data.Batches([src], tok, 15, 1))
    with pytest.raises(data.DataError, match="no files match"):
        data.Batches([{"path": str(tmp_path / "nothing*.jsonl"), "weight": 1.0}], tok, 15, 1)


def test_source_dict_errors():
    with pytest.raises(data.DataError, match=r"unknown key.*'txt'"):
        sources.parse_source({"path": "a.jsonl", "weight": 1.0, "txt": "body"})
    with pytest.raises(data.DataError, match="weight"):
        sources.parse_source({"path": "a.jsonl"})
    with pytest.raises(data.DataError, match="positive"):
        sources.parse_source({"path": "a.jsonl", "weight": -1})
    with pytest.raises(data.DataError, match="together"):
        sources.parse_source({"path": "a.jsonl", "weight": 1, "prompt": "q"})
    s = sources.parse_source({"path": "org/set", "weight": 2, "name": "cfg", "split": "train", "text": "content"})
    assert (s.path, s.weight, s.name, s.text, s.sft) == ("org/set", 2.0, "cfg", "content", False)
    assert sources.parse_source({"path": "stdlib_sft", "weight": 1}).sft


def test_unreachable_hub_dataset_says_so(monkeypatch, tok):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'bigcode/starcoderdata' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(data.DataError) as e:
        data.Batches([{"path": "bigcode/starcoderdata", "data_dir": "python", "weight": 1.0}], tok, 15, 1)
    msg = str(e.value)
    assert "bigcode/starcoderdata" in msg and "unreachable" in msg and "gated" in msg and "local" in msg
    assert "\n" not in msg


def test_cli_error_is_one_line(tmp_path):
    import subprocess
    stage = tmp_path / "stage.py"
    stage.write_text(f"tokenizer = {str(tmp_path / 'nope.json')!r}\nmixture = []\nseq_len = 8\nbatch_size = 1\n")
    r = subprocess.run([sys.executable, "data.py", str(stage)], capture_output=True, text=True,
                       cwd=Path(data.__file__).parent)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: tokenizer file") and r.stderr.count("\n") == 1
