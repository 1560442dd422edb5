"""Tests for token_cache.py: prepare, then Batches(cache=...) equal to the stream, exact resume, refusals, and every
way a cache can be damaged found when it is opened, in one line."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import corpus
import data
import sources
import storage
import token_cache
import train
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
    # every file with its size and sha256, as storage.fingerprint gives them
    assert {name: storage.fingerprint(Path(prepared.cache, "0", name).read_bytes())
            for name in ("train.npy", "train-0.bin")} == pre["train"]["fingerprints"]


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
    # many shards (written a chunk at a time), each downloaded once, and checked a few tokens at a time (the same
    # sha256 as the whole file's)
    monkeypatch.setattr(token_cache, "SHARD_TOKENS", 200)
    monkeypatch.setattr(token_cache, "CHECK_TOKENS", 7)
    monkeypatch.setattr(sources, "CHUNK_DOCS", 10)
    try:
        manifests = token_cache.prepare(prepared.sources, tok, url)
        assert len(manifests[0]["train"]["shards"]) > 3
        for split in ("train", "val"):
            local = data.Batches(prepared.sources, tok, SEQ, ROWS, split=split, cache=prepared.cache)
            remote = data.Batches(prepared.sources, tok, SEQ, ROWS, split=split, cache=url)
            assert_same_batches(take(local, 30), take(remote, 30))
        # a damaged file is named by its URL, not by the temporary copy that was checked
        storage.write_bytes(f"{url}/1/train-0.bin", b"\0\0")
        with pytest.raises(data.DataError, match=f"^{url}/1/train-0.bin is damaged \\(2 bytes, its manifest says"):
            data.Batches(prepared.sources, tok, SEQ, ROWS, cache=url)
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


# ----------------------------------------------------------------------------- a damaged cache (#30)

@pytest.fixture(scope="module")
def sharded(prepared, tok, tmp_path_factory):
    """The fixture's sources in a cache of shards of ~2,100 tokens, three in source 0's train split."""
    cache = tmp_path_factory.mktemp("sharded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(token_cache, "SHARD_TOKENS", 2100)
        mp.setattr(sources, "CHUNK_DOCS", 10)
        token_cache.prepare(prepared.sources, tok, str(cache))
    assert len(json.loads((cache / "0" / "manifest.json").read_text())["train"]["shards"]) == 3
    return cache


def cut(name, size):
    return lambda d: os.truncate(d / name, size)


def tokens_set(name, at, value, refingerprint=False):
    """Token `at` of shard `name` becomes value(old); with refingerprint=True the manifest is rewritten to match, as
    if prepare had written it so."""
    def damage(d):
        tokens = np.fromfile(d / name, np.uint16)
        tokens[at] = value(tokens[at])
        tokens.tofile(d / name)
        if refingerprint:
            edit_manifest(lambda m: m["train"]["fingerprints"].update({name: storage.fingerprint(tokens.tobytes())}))(d)
    return damage


def flip(name, at):
    """Flip the low bit of byte at(contents) of `name`."""
    def damage(d):
        payload = bytearray((d / name).read_bytes())
        payload[at(payload)] ^= 1
        (d / name).write_bytes(bytes(payload))
    return damage


def shape_digit(npy):
    return npy.index(b"'shape': (") + 10  # the first digit of the number of rows: "(288, 5)" becomes "(388, 5)"


def first_end(npy):
    return 10 + int.from_bytes(npy[8:10], "little") + 4  # (.npy 1.0: 10 bytes, the header) bit 32: 4G tokens long


def edit_manifest(change):
    def damage(d):
        m = json.loads((d / "manifest.json").read_text())
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))
    return damage


def write(name, text):
    return lambda d: (d / name).write_text(text)


def replace(name, payload):
    """`name` becomes `payload`, and the manifest says so (as if prepare had written it)."""
    def damage(d):
        (d / name).write_bytes(payload)
        edit_manifest(lambda m: m["train"]["fingerprints"].update({name: storage.fingerprint(payload)}))(d)
    return damage


DAMAGE = {  # what is done to source 0 of a copy of `sharded` -> what its error says
    "a shard cut to 2,000 tokens": (cut("train-0.bin", 4000), r"train-0.bin is damaged \(4,000 bytes, its manifest "
                                                              r"says [\d,]+\)"),
    "a shard cut to 0 bytes": (cut("train-0.bin", 0), r"train-0.bin is damaged \(0 bytes"),
    "a shard cut to an odd number of bytes": (cut("train-1.bin", 4001), r"train-1.bin is damaged \(4,001 bytes"),
    "a deleted shard": (lambda d: (d / "train-2.bin").unlink(), r"train-2.bin is missing"),
    "a shard's token id flipped beyond the vocabulary": (tokens_set("train-1.bin", 5, lambda t: 0xFFFF),
                                                         r"train-1.bin is damaged \(sha256 \w+…, its manifest says"),
    "a shard's token id flipped to another id": (tokens_set("train-1.bin", 5, lambda t: t ^ 1),
                                                 r"train-1.bin is damaged \(sha256"),
    "a token id beyond the vocabulary, checksummed": (tokens_set("train-0.bin", 5, lambda t: 300, refingerprint=True),
                                                      r"train-0.bin holds token id 300, this tokenizer has 29\d"),
    "a flipped byte in the index header": (flip("train.npy", shape_digit), r"train.npy is damaged \(sha256"),
    "a flipped byte in the index": (flip("train.npy", first_end), r"train.npy is damaged \(sha256"),
    "an index replaced by another": (lambda d: shutil.copy(d / "val.npy", d / "train.npy"),
                                     r"train.npy is damaged \([\d,]+ bytes, its manifest says"),
    "an index not in .npy format, checksummed": (replace("train.npy", b"not an index"),
                                                 r"train.npy is not an index as prepare writes one"),
    "a manifest that is not JSON": (write("manifest.json", '{"source": '), r"0/manifest.json is not a token cache's"),
    "a manifest that is JSON null": (write("manifest.json", "null"), r"manifest.json is not a token cache's manifest "
                                                                     r"\(null is not a JSON object\)"),
    "a manifest without a field": (edit_manifest(lambda m: m["train"].pop("match_sets")),
                                   r"manifest.json is malformed \(train.match_sets is missing\)"),
    "a manifest from before checksums": (edit_manifest(lambda m: m["train"].pop("fingerprints")),
                                         r"malformed \(it was prepared before the cache's files carried checksums"),
    "a manifest that counts a document more": (edit_manifest(lambda m: m["train"].update(docs=m["train"]["docs"] + 1)),
                                               r"train.npy holds an array \(\d+, 5\) of int64, its manifest says"),
    "a manifest that counts a token more": (edit_manifest(lambda m: m["train"].update(tokens=m["train"]["tokens"] + 1)),
                                            r"malformed \(train has [\d,]+ tokens in shards starting at \[0, "),
    "a manifest that counts a shard less": (edit_manifest(lambda m: m["train"]["shards"].pop()),
                                            r"malformed \(train has 2 shards, its fingerprints are of"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_one_line_naming_what_is_wrong(prepared, sharded, tok, tmp_path, damage):
    cache = shutil.copytree(sharded, tmp_path / "cache")
    do, message = DAMAGE[damage]
    do(cache / "0")
    with pytest.raises(data.DataError, match=message) as e:
        data.Batches(prepared.sources, tok, SEQ, ROWS, cache=str(cache))
    assert "\n" not in str(e.value) and str(e.value).endswith(token_cache.AGAIN)
    assert str(cache / "0") in str(e.value)  # (the file it names)


# data.py's command line with 1 GiB of address space beyond what its imports take: the index above once made the
# reader allocate 20.6 GiB (np.arange over a document 4G tokens long), and here that would be a MemoryError
LIMITED = """import resource, runpy, sys
import data, datasets
vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) << 10
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = sys.argv[1:]
runpy.run_path("data.py", run_name="__main__")
"""


@pytest.mark.parametrize("damage", ["a flipped byte in the index", "a shard cut to 2,000 tokens"])
def test_the_command_line_says_it_in_one_line_and_allocates_nothing(prepared, sharded, tok, tmp_path, damage):
    cache = shutil.copytree(sharded, tmp_path / "cache")
    DAMAGE[damage][0](cache / "0")
    run = subprocess.run([sys.executable, "-c", LIMITED, "data.py", write_stage(tmp_path, prepared, tok), "--cache",
                          str(cache), "--batches", "100", "--rows", "0"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    errors = [line for line in run.stderr.splitlines() if not line.startswith("note: ")]  # (no MBPP offline)
    assert run.returncode == 2 and len(errors) == 1, run.stderr
    assert re.fullmatch(f"error: {re.escape(str(cache / '0'))}/{DAMAGE[damage][1]}.*", errors[0])


def test_train_dry_run_names_a_manifest_that_is_not_json(prepared, sharded, tok, tmp_path, capsys):
    cache = shutil.copytree(sharded, tmp_path / "cache")
    DAMAGE["a manifest that is not JSON"][0](cache / "0")
    with pytest.raises(SystemExit) as e:
        train.main([write_stage(tmp_path, prepared, tok), "--dry_run", "--max_steps=2", f"--token_cache={cache}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]
    assert e.value.code == 2 and errors == [f"error: {cache / '0' / 'manifest.json'} is not a token cache's manifest "
                                            f"(Expecting value: line 1 column 12 (char 11)): {token_cache.AGAIN}"]


def write_stage(tmp_path, prepared, tok) -> str:
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "stage.py").write_text(f"mixture = {prepared.sources!r}\ntokenizer = {str(tmp_path)!r}\n"
                                       f"seq_len = {SEQ}\nbatch_size = {ROWS}\n")
    return str(tmp_path / "stage.py")


def test_a_damaged_held_out_split_stops_the_run(prepared, sharded, tok, tmp_path, capsys):
    """A source without held-out documents only costs the held-out loss; a damaged val split is still damage: the
    run stops in one line instead of training on without it."""
    cache = shutil.copytree(sharded, tmp_path / "cache")
    flip("val-0.bin", lambda payload: 7)(cache / "0")
    with pytest.raises(SystemExit) as e:
        train.main([write_stage(tmp_path, prepared, tok), "--max_steps=1", f"--token_cache={cache}",
                    f"--out_dir={tmp_path / 'run'}", "--model_overrides={'n_layers': 1, 'vocab_size': 512}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]
    assert e.value.code == 2 and len(errors) == 1 and re.fullmatch(
        f"error: {re.escape(str(cache / '0'))}/val-0.bin is damaged \\(sha256 .*", errors[0]), errors
    assert not (tmp_path / "run" / "checkpoints").exists()
