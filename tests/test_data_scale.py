"""Tests for data.py at pod scale (issue 20): bad input named by file and line, bounded memory per document,
the held-out split of every source, shuffled streams with exact resume, retried transient read errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import data  # noqa: E402
import sources  # noqa: E402
from helpers import assert_same_batches, resumes, stream, take, write_jsonl  # noqa: E402

ROOT = Path(data.__file__).parent
pytestmark = pytest.mark.usefixtures("cache")  # a private SMALLCODER_CACHE: nothing here writes to ~/.cache


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("lines, where", [
    ('{"text": "a"}\n{"text": "b"}\nnot json\n', r"bad\.jsonl line 3 is not JSON"),
    ('{"text": "a"}\n{"text": 123}\n', r"bad\.jsonl line 2: field 'text' is int, not a string"),
    ('{"text": ["a"]}\n', r"bad\.jsonl line 1: field 'text' is list, not a string"),
    ('{"text": "a"}\n[1, 2]\n', r"bad\.jsonl line 2 is not a JSON object"),
    ("", r"file \S*bad\.jsonl is empty"),
])
def test_bad_input_names_file_and_line(tmp_path, tok, lines, where):
    (tmp_path / "bad.jsonl").write_text(lines)
    with pytest.raises(data.DataError, match=where) as e:
        next(data.Batches([{"path": str(tmp_path / "bad.jsonl"), "weight": 1.0}], tok, 15, 1))
    assert "\n" not in str(e.value)


def test_empty_files(tmp_path, tok):
    (tmp_path / "a.txt").write_text("")  # an empty file among others is no error (an empty __init__.py)
    (tmp_path / "b.txt").write_text("hello")
    b = data.Batches([{"path": str(tmp_path / "*.txt"), "weight": 1.0}], tok, 15, 1)
    assert tok.decode(next(b)["inputs"][0].tolist()).startswith("hello")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(data.DataError, match=r"all 2 files are empty, e\.g\. \S*a\.txt$"):
        data.Batches([{"path": str(tmp_path / "*.txt"), "weight": 1.0}], tok, 15, 1)


def test_bad_sft_field_and_cli_error_is_one_line(tmp_path, tok):
    write_jsonl(tmp_path / "sft.jsonl", [{"q": "a", "a": "b"}, {"q": "a", "a": {"code": "x"}}])
    src = {"path": str(tmp_path / "sft.jsonl"), "weight": 1.0, "prompt": "q", "response": "a"}
    with pytest.raises(data.DataError, match=r"sft\.jsonl line 2: field 'a' is dict, not a string"):
        next(data.Batches([src], tok, 15, 1))
    tok.save(str(tmp_path / "tokenizer.json"))
    stage = tmp_path / "stage.py"
    stage.write_text(f"tokenizer = {str(tmp_path / 'tokenizer.json')!r}\nseq_len = 8\nbatch_size = 1\n"
                     f"mixture = [{{'path': {str(tmp_path / 'b*.jsonl')!r}, 'weight': 1.0}}]\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"\n')
    r = subprocess.run([sys.executable, "data.py", str(stage)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    # Besides decontamination's notes (which benchmark copies it found), the error is one line.
    (error,) = [line for line in r.stderr.splitlines() if not line.startswith("note: ")]
    assert error.startswith("error: source") and "bad.jsonl line 2 is not JSON" in error, r.stderr


# ---------------------------------------------------------------------------------------------- long documents

def test_long_documents_tokenise_as_a_whole(monkeypatch, tmp_path, tok):
    monkeypatch.setattr(sources, "PIECE_CHARS", 300)  # cut this file's code into dozens of pieces
    code = Path(json.__file__).with_name("decoder.py").read_text()
    one_line = "x = [" + "1, " * 400 + "]"  # no line break to cut before: cut at PIECE_CHARS
    for text in (code, one_line):
        pieces = list(sources._pieces(text))
        assert "".join(pieces) == text and max(map(len, pieces)) <= 300 and len(pieces) >= len(text) // 300
    assert all(p.startswith("\n") for p in list(sources._pieces(code))[1:])
    src = write_jsonl(tmp_path / "code.jsonl", [{"text": code}, {"text": "short"}])
    whole = tok.encode(code).ids + [0] + tok.encode("short").ids + [0]
    ids, _ = stream(take(data.Batches([{"path": src, "weight": 1.0}], tok, 255, 4), len(whole) // 1024 + 1))
    assert ids[:len(whole)] == whole  # the same tokens as one encode of the whole text


MEASURE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import data, tokenizer
b = data.Batches([{"path": sys.argv[2], "weight": 1.0}], tokenizer.load_tokenizer(sys.argv[3]), 63, 2)
rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
x = next(b)  # tokenises the whole document
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss, b.stats()[0]["tokens"], x["inputs"][0, 0])
"""


def test_a_huge_document_takes_bounded_memory(tmp_path, tok):
    line = "    total = sum(value * 2 for value in values if value)  # a line of code\n"
    first_line, two_lines = tok.encode(line).ids, tok.encode(line * 2).ids  # (a line after a line differs)
    tok.save(str(tmp_path / "tokenizer.json"))
    grown = {}
    for mb in (4, 16):
        lines = (mb << 20) // len(line)
        (tmp_path / "huge.txt").write_text(line * lines)
        r = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(tmp_path / "huge.txt"),
                            str(tmp_path / "tokenizer.json")], capture_output=True, text=True, check=True)
        grown[mb], tokens, first = map(int, r.stdout.split())
        assert tokens == len(first_line) + (len(two_lines) - len(first_line)) * (lines - 1) + 1  # all of it, once
        assert first == first_line[0]
    # Per character ~ a token here (a 400-token vocabulary): the text twice (str, arrow) and each token twice in
    # int32 (pieces, document) and once in the mask, ~11 bytes. Whole, a document took ~120 bytes per character.
    per_char = (grown[16] - grown[4]) / (12 << 20)
    assert per_char < 16, grown


# ---------------------------------------------------------------------------------------------- held-out split

def docs_of(tok, batches, n):
    """The whole documents in n batches (the first, possibly partial, and the last are left out)."""
    ids = stream(take(batches, n))[0]
    cuts = [i for i, t in enumerate(ids) if t == 0]
    return [tok.decode(ids[a + 1:b]) for a, b in zip(cuts, cuts[1:])]


@pytest.fixture
def docs_file(tmp_path):
    texts = [f"doc {i} " + "x" * (i % 7) for i in range(1500)]
    return texts, write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])


def test_every_source_has_a_held_out_split(tok, docs_file):
    texts, path = docs_file
    held = {t for t in texts if corpus.is_held_out(t)}
    assert 0.01 < len(held) / len(texts) < 0.035  # 1 in 50
    src = {"path": path, "weight": 1.0}  # no val_split
    train = set(docs_of(tok, data.Batches([src], tok, 63, 8), 110))  # > 1 epoch: 1500 documents of ~5 tokens
    assert train == set(texts) - held
    seen = []
    for rank in range(2):  # the same rule on every host: the hosts' held-out documents make up the set
        val = data.Batches([src], tok, 63, 2, split="val", process_index=rank, process_count=2)
        first = docs_of(tok, val, 6)
        val.reset()
        assert docs_of(tok, val, 6) == first  # the same held-out tokens at every evaluation
        seen.append(set(first))
    assert seen[0] | seen[1] == held and not seen[0] & seen[1]


def test_a_tiny_run_logs_val_loss(tmp_path, tok, docs_file):
    tok.save(str(tmp_path / "tokenizer.json"))
    stage = tmp_path / "stage.py"
    stage.write_text(f"mixture = [{{'path': {docs_file[1]!r}, 'weight': 1.0}}]\n"
                     f"tokenizer = {str(tmp_path / 'tokenizer.json')!r}\nout_dir = {str(tmp_path / 'out')!r}\n")
    model = "{'vocab_size': 512, 'd_model': 32, 'n_layers': 1, 'n_heads': 2, 'n_kv_heads': 1, 'd_ff': 64, " \
            "'max_seq_len': 32}"
    r = subprocess.run([sys.executable, "train.py", str(stage), "--model=tiny", f"--model_overrides={model}",
                        "--batch_size=4", "--seq_len=32", "--max_steps=4", "--warmup_steps=1", "--lr=1e-2",
                        "--log_interval=1", "--eval_interval=2", "--eval_batches=2", "--ckpt_interval=100"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    logged = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    val = [m["val_loss"] for m in logged if "val_loss" in m]
    assert len(val) == 2 and all(np.isfinite(val)) and val[1] < val[0]


STAND_IN_FIELDS = {"text": "a document about {i}", "content": "def f{i}(x):\n    return x", "input": "add {i}",
                   "output": "x + {i}", "problem": "what is {i} + 1?", "generated_solution": "{i} + 1"}


@pytest.mark.parametrize("stage", ["s1", "s2", "s3", "s4"])
def test_stage_mixtures_have_held_out_splits(tmp_path, tok, stage):
    """Each card stage, its hub sources replaced by local files with their fields, through the same code path."""
    import runpy
    mixture, held, rest = [], set(), set()
    for k, src in enumerate(runpy.run_path(str(ROOT / "stages" / f"{stage}.py"))["mixture"]):
        fields = sources.parse_source(src).fields
        rows = [{f: STAND_IN_FIELDS[f].format(i=f"{k}.{i}") for f in fields} for i in range(300)]
        for row in rows:  # the document as packed, on its side of the held-out rule (keyed by its fields)
            doc = f"User: {row[fields[0]]}\nAssistant: {row[fields[1]]}" if len(fields) == 2 else row[fields[0]]
            (held if corpus.is_held_out("\0".join(row[f] for f in fields)) else rest).add(doc)
        local = {key: v for key, v in src.items() if key not in ("path", "name", "data_dir")}  # hub-only keys
        mixture.append(dict(local, path=write_jsonl(tmp_path / f"{k}.jsonl", rows)))
    val = data.Batches(mixture, tok, 63, 4, split="val")
    val_docs = set(docs_of(tok, val, 8))
    assert val_docs and val_docs <= held and all(s["docs"] for s in val.stats())  # every source, held-out only
    train_docs = set(docs_of(tok, data.Batches(mixture, tok, 63, 4), 8))
    assert train_docs and train_docs <= rest


# ---------------------------------------------------------------------------------------------- shuffled streams

@pytest.fixture
def files(tmp_path):
    """4 files of 40 documents, none held out (so an epoch of process r of n is len(range(r, 160, n)) documents)."""
    texts = [t for t in (f"doc {i}" for i in range(200)) if not corpus.is_held_out(t)][:160]
    for f in range(4):
        write_jsonl(tmp_path / f"p{f}.jsonl", [{"text": t} for t in texts[f * 40:(f + 1) * 40]])
    return str(tmp_path / "p*.jsonl"), texts


def test_shuffle_is_seeded_and_complete(monkeypatch, tok, files):
    monkeypatch.setattr(sources, "CHUNK_DOCS", 16)  # the buffer: several chunks per file
    monkeypatch.setattr(sources, "READ_BATCH", 8)
    path, texts = files

    def epochs(seed, rank=0, ranks=1):
        """The first two epochs of one process's documents (the first document left out)."""
        n = len(range(rank, len(texts), ranks))
        docs = docs_of(tok, data.Batches([{"path": path, "weight": 1.0, "shuffle": True}], tok, 31, 8, seed=seed,
                                         process_index=rank, process_count=ranks), 12)
        assert len(docs) >= 2 * n
        return docs[:n - 1], docs[n - 1:2 * n - 1]
    first, second = epochs(0)
    assert first != texts[1:len(first) + 1] and first != second[1:] and epochs(1)[0] != first
    assert epochs(0) == (first, second)  # seeded: the same every time
    assert sorted(second) == sorted(texts)  # an epoch is every document once
    for ranks in (2, 3):  # by file (4 files on 2 processes), and every n-th document of each file (3)
        per_rank = [epochs(0, rank, ranks)[1] for rank in range(ranks)]
        assert sorted(sum(per_rank, [])) == sorted(texts)  # disjoint and complete, in a shuffled epoch


def test_resume_with_shuffle_is_exact(monkeypatch, tok, files):
    monkeypatch.setattr(sources, "CHUNK_DOCS", 5)
    monkeypatch.setattr(sources, "READ_BATCH", 2)
    mixture = [{"path": files[0], "weight": 0.7, "shuffle": True},
               {"path": files[0], "weight": 0.3, "shuffle": True, "prompt": "text", "response": "text"}]
    full = take(data.Batches(mixture, tok, 29, 3, seed=5), 40)
    b = data.Batches(mixture, tok, 29, 3, seed=5)
    for n, _, resumed in resumes(b, lambda: data.Batches(mixture, tok, 29, 3, seed=5), 36):
        # checkpoints inside documents, at chunk ends, across an epoch's end
        assert_same_batches(full[n:n + 4], take(resumed, 4))
    assert b.stats()[0]["epoch"] >= 1


# ---------------------------------------------------------------------------------------------- transient errors

class HTTPError(Exception):
    def __init__(self, status):
        super().__init__(f"{status} error for url https://huggingface.co/...")
        self.response = type("Response", (), {"status_code": status})()


@pytest.mark.parametrize("error", [lambda: HTTPError(429), lambda: HTTPError(503), lambda: ConnectionResetError(104)])
def test_transient_read_errors_are_retried_exactly(monkeypatch, tok, files, error):
    import datasets
    monkeypatch.setattr(sources, "CHUNK_DOCS", 5)
    monkeypatch.setattr(sources, "READ_BATCH", 2)
    mixture = [{"path": files[0], "weight": 1.0, "shuffle": True}]
    want = take(data.Batches(mixture, tok, 29, 3), 12)
    read, fail_at, waits = datasets.IterableDataset.iter, {7, 8, 30}, []  # fails at the 7th, 8th and 30th read

    def flaky(self, *args, **kwargs):
        for batch in read(self, *args, **kwargs):
            flaky.reads += 1
            if flaky.reads in fail_at:
                raise RuntimeError("while reading") from error()  # (datasets wraps errors)
            yield batch
    flaky.reads = 0
    monkeypatch.setattr(datasets.IterableDataset, "iter", flaky)
    monkeypatch.setattr(sources.time, "sleep", waits.append)
    got = take(data.Batches(mixture, tok, 29, 3), 12)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w["inputs"], g["inputs"])
    assert waits == [1, 2, 1]  # backoff doubles while the same chunk keeps failing


def test_permanent_and_endless_errors_are_one_line(monkeypatch, tok, files):
    import datasets
    waits = []
    monkeypatch.setattr(sources.time, "sleep", waits.append)
    for error, retried in ((HTTPError(404), 0), (HTTPError(502), sources.RETRIES)):
        def failing(self, *args, _error=error, **kwargs):
            raise _error
            yield
        monkeypatch.setattr(datasets.IterableDataset, "iter", failing)
        with pytest.raises(data.DataError, match=f"{error.response.status_code} error") as e:
            next(data.Batches([{"path": files[0], "weight": 1.0}], tok, 29, 3))
        assert "\n" not in str(e.value) and len(waits) == retried
        waits.clear()
