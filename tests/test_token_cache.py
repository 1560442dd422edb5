"""Tests for token_cache.py: prepare, then Batches(cache=...) equal to the stream, exact resume, refusals."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

import corpus
import data
import sources
import storage
import token_cache
from helpers import assert_same_batches, resumes, take, train_tokenizer

SEQ, ROWS = 29, 3


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["def f(x):\n    return x + 1\n", "User: write f1\nAssistant: done"] * 50, 300)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tok):
    """A pretraining source in 2 files (shared by file on 2 processes) that holds out by is_held_out, and an SFT
    source in 1 file (shared by example) with a val_split; empty and too-long examples in both; one cache."""
    root = tmp_path_factory.mktemp("sources")

    def write(name, rows):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = ["" if i % 37 == 5 else f"x = {i}\n" * (1 + i % 4) for i in range(300)]
    for f in range(2):
        write(f"pre-{f}.jsonl", [{"text": t} for t in texts[f::2]])
    # both processes get held-out documents, so split="val" works on 2 of them
    assert all(any(corpus.is_held_out(t) for t in texts[f::2]) for f in range(2))
    for split, n in (("train", 90), ("val", 9)):
        write(f"sft-{split}.jsonl", [{"q": f"write f{i}", "a": "def f(x):\n    return x + 1\n" * (i % 4)}
                                     for i in range(n)])
    sources = [{"path": str(root / "pre-*.jsonl"), "weight": 0.6},
               {"path": str(root / "sft-{split}.jsonl"), "weight": 0.4, "prompt": "q", "response": "a",
                "val_split": "val"}]
    cache = str(tmp_path_factory.mktemp("cache"))
    return SimpleNamespace(sources=sources, cache=cache, manifests=token_cache.prepare(sources, tok, cache))


def test_prepare_writes_both_splits_of_every_source(prepared):
    pre, sft = prepared.manifests
    assert pre["dtype"] == "uint16" and pre["source"]["path"] == prepared.sources[0]["path"]
    assert pre["train"]["files"] == 2 and sft["train"]["files"] == 1
    # every example lands on exactly one side (empty ones are kept, to be dropped and counted when read)
    assert pre["train"]["docs"] + pre["val"]["docs"] == 300 and 0 < pre["val"]["docs"] < 30
    assert (sft["train"]["docs"], sft["val"]["docs"]) == (90, 9)
    index = np.load(f"{prepared.cache}/0/train.npy")
    assert index.shape == (pre["train"]["docs"], 5) and index[-1, 0] == pre["train"]["tokens"]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("processes", [1, 2])
def test_cache_batches_equal_the_stream(prepared, tok, split, processes):
    for p in range(processes):
        stream = data.Batches(prepared.sources, tok, SEQ, ROWS, seed=3, split=split, process_index=p,
                              process_count=processes)
        cached = data.Batches(prepared.sources, tok, SEQ, ROWS, seed=3, split=split, process_index=p,
                              process_count=processes, cache=prepared.cache)
        assert_same_batches(take(stream, 100), take(cached, 100))
        assert stream.stats() == cached.stats()  # documents, tokens, dropped examples, epochs
        # past an epoch's end; dropped: SFT examples too long for a row, empty documents (all held out: crc32 0)
        pre, sft = cached.stats()
        assert pre["epoch"] >= 1 and sft["epoch"] >= 1 and sft["dropped"] and (split == "train") != pre["dropped"]


def test_resume_from_the_cache_is_exact(prepared, tok):
    mixture = [dict(s, shuffle=True) for s in prepared.sources]

    def batches():
        return data.Batches(mixture, tok, SEQ, ROWS, seed=5, cache=prepared.cache)
    full, epochs = take(batches(), 48), set()
    for n, state, resumed in resumes(batches(), batches, 40):  # at every step: inside documents, between, across an epoch's end
        assert_same_batches(full[n:n + 8], take(resumed, 8))
        epochs.add(state["readers"][1]["epoch"])
    assert epochs == {0, 1}
    # shuffled: each epoch a different permutation of the same documents
    reader = batches().readers[0]
    orders = []
    for epoch in (0, 1):
        reader.load({"epoch": epoch})
        reader.next_doc()
        orders.append(reader.order[1])
    assert sorted(orders[0]) == sorted(orders[1]) == list(reader.mine) and list(orders[0]) != list(orders[1])
    stream = data.Batches(prepared.sources, tok, SEQ, ROWS)
    with pytest.raises(data.DataError, match="token_cache was False, now True"):
        data.Batches(prepared.sources, tok, SEQ, ROWS, cache=prepared.cache).load_state_dict(stream.state_dict())


def test_cache_refuses_another_tokenizer_or_source(prepared, tok, tmp_path):
    other = train_tokenizer(["hello world, and a different vocabulary"] * 20, 280)
    refusals = {"another tokenizer": (prepared.sources, other),
                "another source: text 'text', this stage's is 'body'":
                    ([dict(prepared.sources[0], text="body"), prepared.sources[1]], tok),
                "has no source 2": (prepared.sources + [dict(prepared.sources[0], path=str(tmp_path))], tok)}
    for message, (mixture, tokenizer) in refusals.items():
        with pytest.raises(data.DataError, match=message) as e:
            data.Batches(mixture, tokenizer, SEQ, ROWS, cache=prepared.cache)
        assert "\n" not in str(e.value)
    # a mixture's weights and shuffles are choices at read time: the same cache serves them
    data.Batches([dict(s, weight=1.0, shuffle=True) for s in prepared.sources], tok, SEQ, ROWS, cache=prepared.cache)


def test_cache_at_a_url(prepared, tok, monkeypatch):
    url = "memory://smallcoder-test/token-cache"
    # many shards (written a chunk at a time), each downloaded once
    monkeypatch.setattr(token_cache, "SHARD_TOKENS", 200)
    monkeypatch.setattr(sources, "CHUNK_DOCS", 10)
    try:
        manifests = token_cache.prepare(prepared.sources, tok, url)
        assert len(manifests[0]["train"]["shards"]) > 3
        for split in ("train", "val"):
            local = data.Batches(prepared.sources, tok, SEQ, ROWS, split=split, cache=prepared.cache)
            remote = data.Batches(prepared.sources, tok, SEQ, ROWS, split=split, cache=url)
            assert_same_batches(take(local, 30), take(remote, 30))
    finally:
        storage.remove("memory://smallcoder-test")


def test_preview_prepares_and_times_both(prepared, tok, tmp_path, capsys):
    tok.save(str(tmp_path / "tokenizer.json"))
    stage = tmp_path / "stage.py"
    stage.write_text(f"mixture = {prepared.sources!r}\ntokenizer = {str(tmp_path)!r}\nseq_len = {SEQ}\n"
                     f"batch_size = {ROWS}\n")
    data.main([str(stage), "--prepare", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert f"train {prepared.manifests[1]['train']['docs']} documents" in out and "written in" in out
    # (the fixture's cache, built with the tokenizer before it was saved: its identity survives a save and load)
    data.main([str(stage), "--cache", prepared.cache, "--batches", "20"])
    out = capsys.readouterr().out
    assert "tokenise+pack:" in out and "token cache+pack:" in out and "faster" in out
