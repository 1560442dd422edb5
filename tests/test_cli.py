"""One command-line dialect across the tools: every flag as `--a_b` or `--a-b`, `--k v` or `--k=v`; one name per
idea (--ckpt, --num-samples, --model, --dtype with one set of choices); --help anywhere; usage errors in one line.

Each tool is run in-process on something cheap: a tiny random checkpoint, a tiny local stage, a patched
bench worker. Old spellings (--n-samples, --config) keep working.
"""
import argparse
import json
import os

import pytest

import bench
import checkpoints
import cli
import convert
import data
import eval_code
import fast
import model
import sample
import storage
import train
from helpers import random_params, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HE_MINI = os.path.join(ROOT, "tests", "fixtures", "humaneval_mini.jsonl")


@pytest.fixture(autouse=True)
def keep_malloc(monkeypatch):
    monkeypatch.setattr(fast, "reuse_host_memory", lambda: False)  # the tools call it; pytest's process keeps its own


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["def f(x):\n    return x + 1\n", "import os", "User: hi\nAssistant: hello"] * 20, 300)


@pytest.fixture(scope="module")
def ckpt(tokenizer, tmp_path_factory):
    config = model.Config(vocab_size=300, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=64)
    path = tmp_path_factory.mktemp("ckpt")
    checkpoints.save_model(str(path), random_params(config), config, tokenizer)
    return str(path)


def usage_error(capsys, run, *argv):
    """`run(argv)` fails as bad input should: exit status 2, one line `error: ...` on stderr, no traceback."""
    with pytest.raises(SystemExit) as e:
        run(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def shows_help(capsys, run, *argv):
    with pytest.raises(SystemExit) as e:
        run(list(argv))
    assert e.value.code in (0, None) and "--" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the shared parser

def test_parse_cli_spellings_and_errors(capsys):
    p = argparse.ArgumentParser()
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--truncate-prompt", action="store_true")
    p.add_argument("--stop", action="append", default=[])
    want = {"max_new_tokens": 5, "top_p": 0.5, "truncate_prompt": True, "stop": ["--a_b", "x_y"]}
    for argv in (["--max_new_tokens", "5", "--top-p=0.5", "--truncate_prompt", "--stop=--a_b", "--stop", "x_y"],
                 ["--max-new-tokens=5", "--top_p", "0.5", "--truncate-prompt", "--stop=--a_b", "--stop=x_y"]):
        assert vars(cli.parse_args(p, argv)) == want  # values (after = or alone) are never respelled
    p.add_argument("rest", nargs="*")
    assert cli.parse_args(p, ["--top_p", "1", "--", "--a_b"]).rest == ["--a_b"]  # nor anything after a bare --
    assert "unrecognized arguments: --nope" in usage_error(capsys, lambda a: cli.parse_args(p, a), "--nope")
    assert "invalid int value" in usage_error(capsys, lambda a: cli.parse_args(p, a), "--max_new_tokens", "x")
    shows_help(capsys, lambda a: cli.parse_args(p, a), "--top_p", "0.5", "--help")


# ----------------------------------------------------------------------------- each tool

def test_sample(ckpt, capsys):
    """The issue's example, `--max_new_tokens 5`, and every other flag in both spellings give the same samples."""
    outs = []
    for argv in (["--ckpt", ckpt, "--max_new_tokens", "5", "--num_samples=2", "--temperature", "1", "--top_k=5",
                  "--top_p", "0.9", "--batch_size", "2", "--dtype=float32", "--json", "--prompt=import os"],
                 ["--ckpt=" + ckpt, "--max-new-tokens=5", "--n-samples", "2", "--temperature=1", "--top-k", "5",
                  "--top-p=0.9", "--batch-size=2", "--dtype", "float32", "--json", "--prompt", "import os"]):
        sample.main(argv)
        outs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert len(outs[0]) == 2 and outs[0] == outs[1] and all(len(r["ids"]) <= 5 for r in outs[0])
    shows_help(capsys, sample.main, "--ckpt", ckpt, "--max_new_tokens", "5", "--help")
    assert "invalid choice: 'float16'" in usage_error(capsys, sample.main, "--ckpt", ckpt, "--dtype", "float16")
    assert "--ckpt" in usage_error(capsys, sample.main, "--prompt", "x")


def test_eval_code(capsys):
    a = eval_code.parse_args(["--task=humaneval", "--canonical", "--max_new_tokens", "7", "--num_samples=1",
                              "--top_p", "0.5", "--batch_size=3", "--data", HE_MINI])
    b = eval_code.parse_args(["--task", "humaneval", "--canonical", "--max-new-tokens=7", "--n-samples", "1",
                              "--top-p=0.5", "--batch-size", "3", "--data=" + HE_MINI])
    assert vars(a) == vars(b) and a.num_samples == 1 and a.max_new_tokens == 7 and a.batch_size == 3
    assert eval_code.main(["--task=humaneval", "--canonical", "--data", HE_MINI, "--limit=2"]) == 0
    assert "pass@1: 100.0%" in capsys.readouterr().out
    shows_help(capsys, eval_code.main, "--task", "humaneval", "--help")
    assert eval_code.main(["--task", "humaneval", "--ckpt", "x", "--num_samples", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: --num-samples > 1 needs --temperature > 0")


def test_convert(ckpt, tmp_path, capsys):
    convert.main(["--ckpt=" + ckpt, "--out", str(tmp_path / "a"), "--dtype=bfloat16"])
    convert.main(["--ckpt", ckpt, "--out=" + str(tmp_path / "b"), "--dtype", "bfloat16"])
    convert.main(["--from_hf", str(tmp_path / "a"), "--out", str(tmp_path / "c")])
    convert.main(["--from-hf=" + str(tmp_path / "b"), "--out", str(tmp_path / "d")])
    for x, y in [("a", "b"), ("c", "d")]:
        assert sorted(os.listdir(tmp_path / x)) == sorted(os.listdir(tmp_path / y))
        assert (tmp_path / x / "model.safetensors").read_bytes() == (tmp_path / y / "model.safetensors").read_bytes()
    assert json.load(open(tmp_path / "a" / "config.json"))["dtype"] == "bfloat16"
    assert "float32" in json.load(open(tmp_path / "c" / "config.json"))["dtype"]
    shows_help(capsys, convert.main, "--ckpt", ckpt, "--help")
    err = usage_error(capsys, convert.main, "--from_hf", str(tmp_path / "a"), "--out", str(tmp_path / "e"),
                      "--dtype=bfloat16")
    assert "--dtype applies to --ckpt exports only" in err and not (tmp_path / "e").exists()
    assert "one of the arguments --ckpt --from-hf is required" in usage_error(capsys, convert.main, "--out", "x")


def test_bench(monkeypatch, capsys):
    spawned = []
    monkeypatch.setattr(bench, "spawn", lambda w, impl, args, accel: spawned.append((w, impl, args)))
    bench.main(["--model", "tiny", "--only=train", "--no_transformers", "--impl=fast", "--reps", "1"])
    bench.main(["--config=tiny", "--only", "train", "--no-transformers", "--impl", "fast", "--reps=1"])
    assert [(w["name"], i) for w, i, _ in spawned] == [("train_tiny", "fast")] * 2
    assert all(a.model == "tiny" and a.dtype == "float32" and a.reps == 1 for _, _, a in spawned)  # auto on a CPU
    spawned.clear()  # a sweep: one row per batch and remat policy, decoding rows as they are
    bench.main(["--model=tiny", "--batch", "2", "4", "--remat", "none", "full", "--impl=fast", "--no-transformers"])
    assert [(w["name"], w.get("batch"), w.get("remat")) for w, _, _ in spawned] == [
        ("train_tiny_2x256", 2, "none"), ("train_tiny_2x256_full", 2, "full"), ("train_tiny_4x256", 4, "none"),
        ("train_tiny_4x256_full", 4, "full"), ("decode_tiny_b1", 1, None), ("decode_tiny_b16", 16, None),
        ("pertoken_tiny", 1, None), ("eval_tiny_b16", 16, None), ("prefill_tiny_512", 1, None)]
    capsys.readouterr()
    assert "--batch must be positive, not 0" in usage_error(capsys, bench.main, "--batch", "0")
    assert "--rounds must be positive, not 0" in usage_error(capsys, bench.main, "--rounds", "0")
    assert "--reps must be positive, not -1" in usage_error(capsys, bench.main, "--reps=-1")
    spawned.clear()  # --rounds: every side of a workload again, alternating
    bench.main(["--model=tiny", "--only=decode", "--rounds=2", "--impl=fast", "--profile=prof"])
    assert [a.profile for _, _, a in spawned][:4] == ["prof", "prof", None, None]  # traced in the first round only
    assert [(w["name"], i) for w, i, _ in spawned] == [
        (name, side) for name in ("decode_tiny_b1", "decode_tiny_b16", "pertoken_tiny", "eval_tiny_b16",
                                  "prefill_tiny_512") for _ in range(2) for side in ("fast", "transformers")]
    shows_help(capsys, bench.main, "--model", "tiny", "--help")
    assert "invalid choice: 'float16'" in usage_error(capsys, bench.main, "--dtype", "float16")


def test_train(capsys):
    base = ["--max_steps=3", "--model=tiny", "--dtype", "float32", "--dry_run"]
    a = train.load_run_config(base + ["--model_overrides={'n_layers': 2}", "--lr", "1e-3"])
    b = train.load_run_config(["--max-steps", "3", "--model", "tiny", "--dtype=float32", "--dry-run", "true",
                               "--model-overrides", "{'n_layers': 2}", "--lr=1e-3"])
    assert a == b and a.max_steps == 3 and a.dry_run and a.model_overrides == {"n_layers": 2} and a.lr == 1e-3
    assert train.load_run_config(base + ["--dry_run", "false"]).dry_run is False
    # The knobs users change are plain keys: remat, dtype and impl (which replaced the attention key).
    c = train.load_run_config(["--max-steps=1", "--remat", "full", "--dtype=bfloat16", "--impl", "reference"])
    assert (c.remat, c.dtype, c.impl) == ("full", "bfloat16", "reference")
    with pytest.raises(cli.UsageError, match="--lr needs a value"):
        train.load_run_config(["--max_steps=3", "--lr"])
    with pytest.raises(cli.UsageError, match="unknown key 'attention'"):
        train.load_run_config(["--max_steps=3", "--attention=fused"])
    for argv in (["--max_steps=3", "--help"], ["stages/tiny.py", "-h"]):
        train.main(argv)
        assert "keys (default):" in capsys.readouterr().out
    assert "dtype must be one of auto, float32, bfloat16" in usage_error(capsys, train.main, "--max-steps=1",
                                                                          "--dtype", "float16")


def test_data(tokenizer, tmp_path, capsys):
    tokenizer.save(str(tmp_path / "tok.json"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x\n"}) + "\n"
                                                 for i in range(20)))
    stage = tmp_path / "stage.py"
    stage.write_text(f"tokenizer = {str(tmp_path / 'tok.json')!r}\nseq_len = 16\nbatch_size = 2\n"
                     f"mixture = [{{'path': {str(tmp_path / 'docs.jsonl')!r}, 'weight': 1.0}}]\n")
    headers = []
    for argv in ([str(stage), "--batches=1", "--rows", "1"], [str(stage), "--batches", "1", "--rows=1"]):
        data.main(argv)
        out = capsys.readouterr().out
        headers.append(out.split("\n\nsource")[0])  # the plan and the decoded row; throughput varies
    assert headers[0] == headers[1] and "2 rows x 16 tokens per batch" in headers[0] and "--- row 0" in headers[0]
    shows_help(capsys, data.main, str(stage), "--help")
    assert "invalid int value: 'x'" in usage_error(capsys, data.main, str(stage), "--rows", "x")


def test_model(capsys):
    outs = []
    for argv in (["--config", "tiny"], ["--model=tiny"], ["--model", "tiny"]):
        model.main(argv)
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2] and f"{model.param_count(model.CONFIGS['tiny']):,}" in outs[0]
    shows_help(capsys, model.main, "--model", "tiny", "--help")
    assert "invalid choice: 'huge'" in usage_error(capsys, model.main, "--model", "huge")


def test_paths_that_cannot_be_used_are_one_line_naming_them(gcs, tokenizer, tmp_path, capsys):
    """Issue 30, case 6: a missing bucket, a directory that cannot be made (under /proc: out_dir, tensorboard) and a
    missing checkpoint at a URL: one line naming the path the user gave (not a temporary copy of it), exit 2."""
    tokenizer.save(str(tmp_path / "tok.json"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x\n"}) + "\n"
                                                 for i in range(20)))
    stage = tmp_path / "stage.py"
    source = {"path": str(tmp_path / "docs.jsonl"), "weight": 1.0, "decontaminate": False}
    stage.write_text(f"tokenizer = {str(tmp_path / 'tok.json')!r}\nseq_len = 16\nbatch_size = 2\nmodel = 'tiny'\n"
                     f"mixture = [{source!r}]\n")
    bucket = gcs.bucket()
    no_bucket = "its bucket does not exist (or these credentials cannot see it)"
    for run, argv, said in [
            (train.main, [str(stage), "--max_steps=1", "--out_dir=gs://no-such-bucket/run"],
             f"error: cannot write gs://no-such-bucket/run/LOCK: {no_bucket}"),
            (train.main, [str(stage), "--max_steps=1", "--out_dir=/proc/smallcoder/run"],
             "error: cannot create directory /proc/smallcoder/run: No such file or directory"),
            (train.main, [str(stage), "--max_steps=1", f"--out_dir={tmp_path / 'run'}", "--tensorboard=/proc/sc/tb"],
             "error: cannot create directory /proc/sc/tb: No such file or directory"),
            (data.main, [str(stage), "--prepare", "gs://no-such-bucket/cache"],
             f"error: cannot write gs://no-such-bucket/cache/0/train-0.bin: {no_bucket}"),
            (sample.main, ["--ckpt", f"{bucket}/missing", "--prompt", "x"],
             f"error: {bucket}/missing is neither a checkpoint directory (no config.json) nor a Hugging Face hub id "
             f"(owner/name)")]:
        assert usage_error(capsys, run, *argv).startswith(said)
    assert storage.listdir(bucket) == []
