"""The whole pipeline through the command lines a user runs, on a tiny budget (a few minutes on 2 CPU cores):

  train.py stages/tiny.py -> train.py stages/tiny_sft.py from it -> sample.py --chat --json
  -> convert.py to Hugging Face -> transformers greedy-generates sample.py's tokens
  -> eval_code.py on 3 HumanEval problems -> convert.py --from-hf gives back the same weights.

The demo stage files are used as they are, shrunk by `--key=value` overrides, so the test guards the demo.
The stdlib tokenizer and corpus live in the user's cache dir (corpus.cache_dir()), built once and shared with
the demo: they take ~30 s to build the first time.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--max_steps=4", "--batch_size=4", "--seq_len=128", "--warmup_steps=1", "--log_interval=2",
        "--eval_interval=2", "--eval_batches=1", "--ckpt_interval=4"]
PROMPT = "Return the n-th Fibonacci number."
MAX_NEW = 32


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would; a failure shows its output."""
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def metrics(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Pretrain, then SFT from it; returns the directory holding tiny/, sft/ (and what later tests add)."""
    d = tmp_path_factory.mktemp("e2e")
    cli("train.py", "stages/tiny.py", f"--out_dir={d / 'tiny'}", *TINY)
    p = cli("train.py", "stages/tiny_sft.py", f"--init_from={d / 'tiny'}", f"--out_dir={d / 'sft'}", *TINY)
    assert f"initialised from {d / 'tiny'}" in p.stdout  # the pretrained weights, not a fresh init
    return d


def test_pretrain_then_sft(run):
    for name in ("tiny", "sft"):
        m = metrics(run / name)
        assert [r["step"] for r in m] == [2, 4]
        assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in m)
        assert m[-1]["tokens_seen"] == 4 * 4 * 128
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            assert (run / name / f).is_file()


@pytest.fixture(scope="module")
def chat_sample(run):
    p = cli("sample.py", "--ckpt", str(run / "sft"), "--chat", "--prompt", PROMPT, "--json",
            "--max-new-tokens", str(MAX_NEW))
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_sample_chat_json(chat_sample):
    s = chat_sample
    assert s["finish_reason"] in ("eos", "length")
    assert all(isinstance(i, int) for i in s["ids"])
    # "length" means exactly max_new_tokens ids; "eos" means fewer (EOS itself is not among them)
    assert (len(s["ids"]) == MAX_NEW) == (s["finish_reason"] == "length")
    assert 0 not in s["ids"]  # <|endoftext|> (id 0) never appears in ids
    assert isinstance(s["text"], str)


def test_hf_export_generates_the_same_tokens(run, chat_sample):
    import torch
    import transformers
    from tokenizers import Tokenizer

    cli("convert.py", "--ckpt", str(run / "sft"), "--out", str(run / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(run / "hf", torch_dtype=torch.float32).eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    tok = transformers.AutoTokenizer.from_pretrained(run / "hf")
    ours = Tokenizer.from_file(str(run / "sft" / "tokenizer.json"))
    chat = f"User: {PROMPT}\nAssistant:"  # tokenizer.CHAT_FORMAT
    prompt_ids = ours.encode(chat).ids
    assert tok(chat)["input_ids"] == prompt_ids  # the exported tokenizer encodes as ours does
    messages = [{"role": "user", "content": PROMPT}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == chat
    card = (run / "hf" / "README.md").read_text()  # the model card names both stages, pretraining first
    assert [line.split(" | ")[:2] for line in card.splitlines() if line.startswith(("| tiny ", "| sft "))] == \
        [["| tiny", "(random init)"], ["| sft", str(run / "tiny")]]

    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                          max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
    new = out[0, len(prompt_ids):].tolist()
    if chat_sample["finish_reason"] == "eos":
        assert new == chat_sample["ids"] + [hf.generation_config.eos_token_id]
    else:
        assert new == chat_sample["ids"]


def test_eval_code_scores_three_problems(run):
    out = run / "r.jsonl"
    p = cli("eval_code.py", "--ckpt", str(run / "sft"), "--task", "humaneval", "--limit", "3",
            "--max-new-tokens", str(MAX_NEW), "--out", str(out))
    rows = [r for r in map(json.loads, out.read_text().splitlines()) if "task_id" in r]  # not header, summary
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(isinstance(r["passed"], bool) for r in rows)
    passed = sum(r["passed"] for r in rows)
    assert f"humaneval: 3 tasks, 3 samples, {passed} passed" in p.stdout
    assert f"pass@1: {100 * passed / 3:.1f}%" in p.stdout


def test_hf_export_round_trips(run):
    if not (run / "hf").exists():
        cli("convert.py", "--ckpt", str(run / "sft"), "--out", str(run / "hf"))
    cli("convert.py", "--from-hf", str(run / "hf"), "--out", str(run / "back"))
    a, b = load_file(run / "sft" / "model.safetensors"), load_file(run / "back" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    cfg_a, cfg_b = (json.loads((run / d / "config.json").read_text()) for d in ("sft", "back"))
    files_a, files_b = cfg_a.pop("files"), cfg_b.pop("files")  # what each directory's config.json vouches for
    assert cfg_a == cfg_b and files_a["model.safetensors"] == files_b["model.safetensors"]
    assert "chat_template.jinja" in files_b  # the import keeps the export's chat template, checksummed too


def test_eos_rate_measures_the_chat_checkpoint(run):
    """docs/eos_rate.py: held-out requests that fit, p(EOS) from one padded batch equal to each row alone."""
    import jax
    sys.path.insert(0, os.path.join(REPO, "docs"))
    import eos_rate
    import model
    import sample
    params, config, tok = sample.load(str(run / "sft"))
    requests = eos_rate.held_out_requests(tok, 4, max_new_tokens=64)
    assert len(requests) == 4
    for prompt, reply in requests:
        assert reply[-1] == 0 and 0 not in reply[:-1] and len(reply) <= 64
        assert len(prompt) + len(reply) <= eos_rate.SFT_ROW
        assert tok.decode(prompt).startswith("User: Write a Python function `")
    p_eos = eos_rate.eos_probability(params, config, requests, eos=0)
    for (prompt, reply), p in zip(requests, p_eos):
        alone = model.forward(params, np.array([prompt + reply[:-1]], np.int32), config)[0, -1]
        np.testing.assert_allclose(p, jax.nn.softmax(alone)[0], rtol=1e-4)

    p = cli("docs/eos_rate.py", "--ckpt", str(run / "sft"), "--n", "3", "--seeds", "1", "--max-new-tokens", "64")
    assert "of 3 held-out chat prompts" in p.stdout
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{run / 'sft'}: greedy ") and "/3" in line and "sampled" in line and "p(EOS" in line
