"""card.py, the exported model card: its YAML is what the hub reads (parsed here by huggingface_hub's ModelCard),
with every field, eval_code.py's scores as a model-index, and one-line errors for bad --eval and --license."""
import json
import os

import pytest
from huggingface_hub import ModelCard

import card
import checkpoints
import convert
import eval_code
import model
import storage
from helpers import random_params, train_tokenizer, write_jsonl

CONFIG = model.Config(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=128)
HEADER = {"header": {"settings": {"harness": 1, "task": "humaneval", "chat": False, "shots": 0, "n_samples": 1,
                                  "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 512, "dtype": "float32"},
                     "run": {"checkpoint": "out/s2"}}}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["def f(x):\n    return x + 1\n", "hello world", 'print("hi")'] * 10, 300)


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory):
    """An import of a hub model, then two fake train.py runs: s1 from the import (pretraining on a hub dataset and
    a local file), s2 from s1 (SFT on a hub dataset and the offline stdlib pairs)."""
    root = tmp_path_factory.mktemp("runs")
    params = random_params(CONFIG)
    convert.to_checkpoint(params, CONFIG, tokenizer, str(root / "imported"),
                          source={"from_hf": "Beebey/smallcoder-303m", "hub_id": "Beebey/smallcoder-303m"})
    mixtures = {"s1": [{"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "weight": 3.0},
                       {"path": "data/x.jsonl", "weight": 1.0}],
                "s2": [{"path": "nvidia/OpenCodeInstruct", "weight": 3.0, "prompt": "input", "response": "output"},
                       {"path": "stdlib_sft", "weight": 1.0}, {"path": "HuggingFaceFW/fineweb-edu", "weight": 1.0}]}
    for stage, init in [("s1", "elsewhere/imported"), ("s2", str(root / "s1"))]:  # s1's: found beside it
        d = str(root / stage)
        checkpoints.save_model(d, params, CONFIG, tokenizer)
        state = {"step": 4, "config": {"init_from": init, "mixture": mixtures[stage], "tokenizer": "stdlib"}}
        storage.write_bytes(storage.join(checkpoints.step_dir(d, 4), "state.json"), json.dumps(state).encode())
        write_jsonl(root / stage / "metrics.jsonl", [{"step": 4, "loss": 2.5, "tokens_seen": 2048}])
    return root


def results(tmp_path, name, rows, header=None, summary=None) -> str:
    return write_jsonl(tmp_path / name, [*([header] if header else []), *rows, *([summary] if summary else [])])


def humaneval_rows(passed):
    return [{"task_id": f"HumanEval/{i}", "completion": "  return 1\n", "passed": p, "result": "passed" if p
             else "failed: AssertionError"} for i, p in enumerate(passed)]


def mbpp_rows(correct, n=10):  # n samples of each task, correct[t] of task t passing
    return [{"task_id": f"Mbpp/{11 + t}", "completion": "x", "passed": i < c, "result": "r"}
            for t, c in enumerate(correct) for i in range(n)]


def test_the_card_yaml_has_every_field_and_the_scores(runs, tmp_path):
    he = results(tmp_path, "he.jsonl", humaneval_rows([True, True, True, False]), HEADER,
                 {"summary": {"task": "humaneval", "pass@1": 0.75, "pass@1 stderr": 0.25}})
    mbpp = results(tmp_path, "mbpp.jsonl", mbpp_rows([3, 0]))  # an older file: no header, no summary
    out = tmp_path / "smallcoder-303m"
    convert.main(["--ckpt", str(runs / "s2"), "--out", str(out), "--license", "mit", "--eval", he, "--eval", mbpp])
    text = (out / "README.md").read_text()
    data = ModelCard(text, ignore_metadata_errors=False).data
    assert data.license == "mit" and data.language == ["en", "code"]
    assert data.datasets == ["HuggingFaceFW/fineweb-edu", "nvidia/OpenCodeInstruct"]  # hub ids, each once
    assert data.base_model == "Beebey/smallcoder-303m"  # the import s1 started from
    assert data.pipeline_tag == "text-generation" and data.library_name == "transformers"
    assert {"code", "llama", "smallcoder", "jax"} <= set(data.tags)
    assert data.model_name == "smallcoder-303m"
    got = {(r.dataset_type, r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {("openai/openai_humaneval", "HumanEval, 4 of 164 tasks", "pass@1"): 75.0,
                   ("google-research-datasets/mbpp", "MBPP, 2 of 500 tasks", "pass@1"): 15.0,  # (3/10 + 0) / 2
                   ("google-research-datasets/mbpp", "MBPP, 2 of 500 tasks", "pass@10"): 50.0}  # (1 + 0) / 2
    he_result = next(r for r in data.eval_results if r.dataset_type == "openai/openai_humaneval")
    assert he_result.metric_args == {"shots": 0, "n_samples": 1, "temperature": 0.0, "top_p": 1.0,
                                     "max_new_tokens": 512, "dtype": "float32"} and he_result.verified is False
    assert "| HumanEval, 4 of 164 tasks | 4 | pass@1 | 75.00% ± 25.00 |" in text
    assert "`data/x.jsonl`, `stdlib_sft` (not on the hub)" in text and "imported from `Beebey/smallcoder-303m`" in text
    assert "offline demo tokenizer" in text and "Context: 128 tokens" in text and "No safety tuning" in text
    usage = text[text.index("## Usage"):]
    assert 'model="YOUR_NAME/smallcoder-303m"' in usage and str(tmp_path) not in usage


def test_scores_are_eval_code_summarize(tmp_path):
    rows = mbpp_rows([0, 1, 4, 10, 7], n=12)
    want = {k: v[0] if isinstance(v, tuple) else v for k, v in eval_code.summarize(rows).items()}
    got = card.read_eval(results(tmp_path, "r.jsonl", rows))["scores"]
    assert got.keys() == want.keys() == {1, 10} and all(abs(got[k] - want[k]) < 1e-12 for k in got)


def test_a_header_names_the_task_and_its_settings(tmp_path):
    header = {"header": {"settings": {**HEADER["header"]["settings"], "chat": True}}}
    rows = [{**r, "task_id": f"HumanEval/{i}"} for i, r in enumerate(humaneval_rows([True] * 164))]
    e = card.read_eval(results(tmp_path, "chat.jsonl", rows, header))
    result, table = card._eval_row(e)
    assert e["task"] == "humaneval" and result["dataset"]["name"] == "HumanEval (chat prompt)"  # all 164 tasks
    assert result["metrics"][0]["value"] == 100.0 and "temperature 0.0" in table


def test_a_plain_export_has_the_fixed_fields_only(tokenizer, tmp_path):
    checkpoints.save_model(str(tmp_path / "ours"), random_params(CONFIG), CONFIG, tokenizer)
    convert.main(["--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")])
    data = ModelCard((tmp_path / "hf" / "README.md").read_text(), ignore_metadata_errors=False).data
    assert data.license == card.DEFAULT_LICENSE and data.language == ["en", "code"]
    assert data.datasets is None and data.base_model is None and data.eval_results is None


def test_an_import_records_where_it_came_from(runs, tmp_path):
    convert.main(["--ckpt", str(runs / "imported"), "--out", str(tmp_path / "hf")])
    data = ModelCard((tmp_path / "hf" / "README.md").read_text()).data
    assert data.base_model == "Beebey/smallcoder-303m"
    convert.main(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "local")])  # a directory: no hub id
    assert card.imported_from(str(tmp_path / "local")) == {"from_hf": str(tmp_path / "hf"), "hub_id": None}
    convert.main(["--ckpt", str(tmp_path / "local"), "--out", str(tmp_path / "again")])
    text = (tmp_path / "again" / "README.md").read_text()
    assert ModelCard(text).data.base_model is None and f"imported from `{tmp_path / 'hf'}`" in text


def _error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        convert.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_eval_files_and_licenses_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    ckpt, out = str(runs / "s2"), str(tmp_path / "hf")
    good = results(tmp_path, "good.jsonl", humaneval_rows([True]))
    bad = {"config.json": json.dumps({"d_model": 64}) + "\n",  # JSON, but not results
           "notes.txt": "pass@1 was 27%\n", "empty.jsonl": "",
           "other.jsonl": json.dumps({"task_id": "GSM8k/1", "completion": "", "passed": True}) + "\n",
           "truthy.jsonl": json.dumps({"task_id": "HumanEval/0", "completion": "", "passed": 1}) + "\n",
           "canonical.jsonl": "".join(json.dumps(r) + "\n" for r in [
               {"header": {"settings": {**HEADER["header"]["settings"], "completions": "canonical"}}},
               *humaneval_rows([True])])}
    for name, content in bad.items():
        (tmp_path / name).write_text(content)
    cases = {str(tmp_path / "missing.jsonl"): "cannot read it", str(tmp_path / "config.json"): "line 1 is not",
             str(tmp_path / "notes.txt"): "line 1 is not", str(tmp_path / "empty.jsonl"): "holds no",
             str(tmp_path / "other.jsonl"): "neither all HumanEval's", str(tmp_path / "truthy.jsonl"): "line 1 is not",
             str(tmp_path / "canonical.jsonl"): "reference solutions"}
    for path, message in cases.items():
        assert message in _error(capsys, "--ckpt", ckpt, "--out", out, "--eval", good, "--eval", path)
    for license in ("Apache 2.0", "apache-2.0\n", ""):
        assert "not a Hugging Face license id" in _error(capsys, "--ckpt", ckpt, "--out", out, "--license", license)
    assert "--ckpt exports only" in _error(capsys, "--from-hf", out, "--out", str(tmp_path / "x"), "--eval", good)
    assert not os.path.exists(out) and not (tmp_path / "x").exists()
    assert {name: (tmp_path / name).read_text() for name in bad} == bad  # the inputs are untouched


def test_scores_of_other_weights_are_refused(runs, tmp_path, capsys):
    """A results file whose header says it graded other weights is refused in one line, nothing written; one that
    graded the checkpoint exported, or an earlier export of it (the same bytes), goes into the card."""
    ckpt, rows = str(runs / "s2"), humaneval_rows([True, False])

    def graded(name, weights_sha256):
        settings = {**HEADER["header"]["settings"], "checkpoint": {"config.json": "c" * 64,
                                                                   "model.safetensors": weights_sha256}}
        return results(tmp_path, name, rows, {"header": {"settings": settings}})
    other = graded("other.jsonl", "0" * 64)
    message = _error(capsys, "--ckpt", ckpt, "--out", str(tmp_path / "hf"), "--eval", other)
    assert message == (f"error: --eval {other} graded other weights (sha256 000000000000…) than {ckpt} or this "
                       f"export: evaluate this model, or leave that file out\n")
    assert not (tmp_path / "hf").exists()
    first = tmp_path / "first"
    convert.main(["--ckpt", ckpt, "--out", str(first)])
    for name, weights in (("ours.jsonl", ckpt), ("export.jsonl", str(first))):
        out = tmp_path / f"hf-{name}"
        convert.main(["--ckpt", ckpt, "--out", str(out), "--eval",
                      graded(name, storage.sha256(os.path.join(weights, "model.safetensors")))])
        assert "HumanEval, 2 of 164 tasks" in (out / "README.md").read_text()
