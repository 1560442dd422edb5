"""convert.py and parity with transformers: the same random weights give the same logits in both.

Hugging Face models are built in-process with LlamaConfig/LlamaForCausalLM (tiny, random weights); the
tokenizer is a 289-token byte-level BPE trained here on a few strings, <|endoftext|> at id 0.
"""
import json
import logging
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import checkpoints
import convert
import fast
import model
import storage
from helpers import random_params, train_tokenizer
from tokenizer import CHAT_FORMAT, load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # tiny models: compile time is all that matters
forward = jax.jit(model.forward, static_argnums=2, compiler_options=FAST_COMPILE)
forward_fast = jax.jit(fast.forward, static_argnums=2, compiler_options=FAST_COMPILE)

# Several shapes of Llama: multi-head, grouped-query (3 query heads per KV head), multi-query; rope bases
# and epsilons other than the defaults; one is saved in shards.
HF_CONFIGS = {
    "mha": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                num_hidden_layers=2, rope_theta=10000.0, rms_norm_eps=1e-6),
    "gqa": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, intermediate_size=160,
                num_hidden_layers=3, rope_theta=500000.0, rms_norm_eps=1e-5),
    "mqa": dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=96,
                num_hidden_layers=2, rope_theta=1234.5, rms_norm_eps=1e-4),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["def f(x):\n    return x + 1\n", "hello world", 'print("hi")'] * 10, 300)


def hf_model(name, seed=0, **overrides):
    """A random fp32 LlamaForCausalLM; norm gains are randomised too so that their mapping is tested."""
    config = transformers.LlamaConfig(vocab_size=320, max_position_embeddings=128, tie_word_embeddings=False,
                                      bos_token_id=0, eos_token_id=0, **{**HF_CONFIGS[name], **overrides})
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.05 * torch.randn_like(p))
    return m


def save_hf(m, path, tokenizer, **kwargs):
    m.save_pretrained(path, **kwargs)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    return str(path)


def tensors(path):
    """Every tensor of a HF directory (single file or shards), by name."""
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


def assert_bitwise_equal(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_equal_transformers(name, tokenizer, tmp_path):
    m = hf_model(name)
    shards = {"max_shard_size": "50KB"} if name == "gqa" else {}
    params, config, _ = convert.from_hf(save_hf(m, tmp_path, tokenizer, **shards))
    assert (os.path.exists(tmp_path / convert.HF_INDEX_FILE)) == (name == "gqa")
    assert config.rope_theta == HF_CONFIGS[name]["rope_theta"]
    assert config.rms_norm_eps == HF_CONFIGS[name]["rms_norm_eps"]
    tokens = np.random.default_rng(0).integers(0, 320, (2, 33))
    with torch.no_grad():
        expected = m(torch.tensor(tokens)).logits.numpy()
    for T in (1, 7, 33):  # one batch per length: every length also runs HF's own forward of that length
        with torch.no_grad():
            want = m(torch.tensor(tokens[:, :T])).logits.numpy() if T < 33 else expected
        for impl, f in [("reference", forward), ("fast", forward_fast)]:
            diff = float(np.abs(np.asarray(f(params, tokens[:, :T], config)) - want).max())
            print(f"{name} T={T} {impl}: max |ours - transformers| = {diff:.2e} "
                  f"(logits up to {np.abs(want).max():.1f})")
            assert diff < 1e-4


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_param_count_equals_transformers(name, tokenizer, tmp_path):
    m = hf_model(name)
    _, config, _ = convert.from_hf(save_hf(m, tmp_path, tokenizer))
    assert model.param_count(config) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_to_ours_to_hf_is_bitwise(dtype, tokenizer, tmp_path):
    m = hf_model("gqa").to(getattr(torch, dtype))
    src = save_hf(m, tmp_path / "src", tokenizer, max_shard_size="50KB")
    params, config, tok = convert.from_hf(src)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(params))  # bf16 is stored as (exact) fp32
    convert.to_hf(params, config, tok, str(tmp_path / "back"), dtype)
    assert_bitwise_equal(tensors(src), tensors(tmp_path / "back"))


def test_ours_to_hf_to_ours_via_the_cli_is_bitwise(tokenizer, tmp_path):
    config = model.Config(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                          max_seq_len=128, rope_theta=50000.0, rms_norm_eps=1e-5)
    params = random_params(config)
    checkpoints.save_model(str(tmp_path / "ours"), params, config, tokenizer)
    run = lambda *args: subprocess.run([sys.executable, "convert.py", *args], cwd=REPO,  # noqa: E731
                                       capture_output=True, text=True)
    r = run("--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    # ... and through URLs, as in a bucket (file:// takes fsspec's path, as gs:// does)
    r = run("--from-hf", f"file://{tmp_path}/hf", "--out", f"file://{tmp_path}/again")
    assert r.returncode == 0, r.stderr
    r = run("--from-hf", f"file://{tmp_path}/hf", "--out", f"file://{tmp_path}/again")
    assert r.returncode == 2 and r.stderr == f"error: file://{tmp_path}/again already exists: refusing to overwrite it\n"
    back, config_back, _ = checkpoints.load_model(str(tmp_path / "again"))
    assert config_back == config
    assert_bitwise_equal(checkpoints.flatten(params), checkpoints.flatten(back))
    assert Tokenizer.from_file(str(tmp_path / "again" / checkpoints.TOKENIZER_FILE)).to_str() == tokenizer.to_str()


def load_with_transformers(path):
    """(model, tokenizer, every warning transformers logged or warned while loading them)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")  # it does not propagate to the root logger, so caplog misses it
    logger.addHandler(handler)
    transformers.logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
            tok = transformers.AutoTokenizer.from_pretrained(path)
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    messages += [f"{k}: {v}" for k, v in info.items() if v]  # missing, unexpected, mismatched keys
    return m, tok, messages


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_loads_the_export_without_warnings(dtype, tokenizer, tmp_path):
    config = model.Config(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                          max_seq_len=128, rope_theta=50000.0, rms_norm_eps=1e-5)
    params = random_params(config, seed=1)
    out = str(tmp_path / "hf")
    convert.to_hf(params, config, tokenizer, out, dtype)
    m, tok, messages = load_with_transformers(out)
    assert not messages  # e.g. "Some weights of ... were not initialized", unknown config keys
    assert m.dtype == getattr(torch, dtype)
    assert m.config.rope_parameters["rope_theta"] == 50000.0 and m.config.rms_norm_eps == 1e-5
    assert m.generation_config.eos_token_id == 0 and m.generation_config.pad_token_id == 0
    assert tok.eos_token_id == 0 and tok.model_max_length == 128
    text = "def f(x):\n    return x + 1\n"
    assert tok(text)["input_ids"] == tokenizer.encode(text).ids and tok.decode(tok(text)["input_ids"]) == text
    tokens = np.random.default_rng(0).integers(0, 320, (1, 9))
    with torch.no_grad():
        want = m.float()(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(forward(params, tokens, config))
    assert np.abs(ours - want).max() < (1e-4 if dtype == "float32" else 0.1)


def test_reads_transformers_4_and_5_rope_configs(tokenizer, tmp_path):
    src = save_hf(hf_model("mha"), tmp_path / "src", tokenizer)
    cfg_file = os.path.join(src, "config.json")
    cfg = json.load(open(cfg_file))
    assert "rope_parameters" in cfg and "rope_theta" not in cfg  # what transformers 5.x writes
    assert convert.from_hf(src)[1].rope_theta == 10000.0
    v4 = {k: v for k, v in cfg.items() if k != "rope_parameters"} | {"rope_theta": 321.0, "rope_scaling": None}
    json.dump(v4, open(cfg_file, "w"))
    assert convert.from_hf(src)[1].rope_theta == 321.0


# Each refusal: exit code 2, one line naming the field, no output directory.
REFUSALS = {
    "tie_word_embeddings": {"tie_word_embeddings": True},
    "attention_bias": {"attention_bias": True},
    "mlp_bias": {"mlp_bias": True},
    "rope_scaling": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "rope_parameters": {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
    "hidden_act": {"hidden_act": "gelu"},
    "architectures": {"architectures": ["MistralForCausalLM"]},
    "model_type": {"model_type": "mistral"},
    "head_dim": {"head_dim": 32},
    "n_kv_heads": {"num_key_value_heads": 3},
}


@pytest.fixture(scope="module")
def hf_dir(tokenizer, tmp_path_factory):
    return save_hf(hf_model("mha"), tmp_path_factory.mktemp("hf"), tokenizer)


def _cli_error(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        convert.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("field", list(REFUSALS))
def test_refusals_name_the_field_and_write_nothing(field, hf_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(hf_dir):
        os.symlink(os.path.join(hf_dir, f), bad / f)
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    os.unlink(bad / "config.json")
    json.dump({**cfg, **REFUSALS[field]}, open(bad / "config.json", "w"))
    err = _cli_error(capsys, "--from-hf", str(bad), "--out", str(tmp_path / "out"))
    assert field in err
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["bad"]


def test_refuses_pytorch_bin_only_and_missing_tokenizer(hf_dir, tmp_path, capsys):
    for keep, message in [(["config.json", "tokenizer.json"], "pytorch_model.bin"),
                          (["config.json", "model.safetensors"], "tokenizer.json")]:
        bad = tmp_path / "bad"
        bad.mkdir()
        for f in keep:
            os.symlink(os.path.join(hf_dir, f), bad / f)
        (bad / "pytorch_model.bin").write_bytes(b"")
        err = _cli_error(capsys, "--from-hf", str(bad), "--out", str(tmp_path / "out"))
        assert message in err and not (tmp_path / "out").exists()
        for f in os.listdir(bad):
            os.unlink(bad / f)
        bad.rmdir()


def test_existing_out_is_never_overwritten(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _cli_error(capsys, "--from-hf", hf_dir, "--out", str(out))
    assert "already exists" in err and os.listdir(out) == ["keep.txt"]
    convert.main(["--from-hf", hf_dir, "--out", str(tmp_path / "ours")])
    err = _cli_error(capsys, "--ckpt", str(tmp_path / "ours"), "--out", str(out))
    assert "already exists" in err and os.listdir(out) == ["keep.txt"]
    (out / "keep.txt").unlink()  # an empty directory is fine to fill
    convert.main(["--ckpt", str(tmp_path / "ours"), "--out", str(out)])
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]
    assert sorted(os.listdir(tmp_path)) == ["ours", "out"]  # no temporary directories left behind


def test_ckpt_errors_are_one_line(hf_dir, tmp_path, capsys):
    err = _cli_error(capsys, "--ckpt", hf_dir, "--out", str(tmp_path / "out"))
    assert "Hugging Face checkpoint" in err
    err = _cli_error(capsys, "--ckpt", str(tmp_path), "--out", str(tmp_path / "out"))
    assert "not a smallcoder checkpoint" in err


def test_a_damaged_tokenizer_json_is_one_line_either_way(hf_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(hf_dir, f), bad / f)
    (bad / "tokenizer.json").write_text('{"version": "1.0"')  # cut short
    err = _cli_error(capsys, "--from-hf", str(bad), "--out", str(tmp_path / "out"))
    assert "tokenizer.json' is not a tokenizer" in err and not (tmp_path / "out").exists()
    convert.main(["--from-hf", hf_dir, "--out", str(tmp_path / "ours")])
    (tmp_path / "ours" / "tokenizer.json").write_text("not json")  # not the file config.json lists
    err = _cli_error(capsys, "--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'ours' / 'tokenizer.json'} is damaged (8 bytes" in err and not (tmp_path / "out").exists()


def test_unreachable_hub_is_one_line_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    r = subprocess.run([sys.executable, "convert.py", "--from-hf", "nobody/no-such-model", "--out",
                        str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "nobody/no-such-model" in r.stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the export for other clients

CHAT_PROMPTS = ["Write a function that reverses a string.", "  leading and trailing spaces  ",
                "two\nlines {x} {{y}}", "unicode: é, 漢字, 🙂", ""]


@pytest.fixture(scope="module")
def export(tokenizer, tmp_path_factory):
    """A tiny random model exported through the CLI: (its directory, params, config)."""
    config = model.Config(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=128)
    params = random_params(config, seed=3)
    params["lm_head"] = params["lm_head"] * 20  # sharper choices: greedy is not decided by rounding
    root = tmp_path_factory.mktemp("export")
    checkpoints.save_model(str(root / "ours"), params, config, tokenizer)
    convert.main(["--ckpt", str(root / "ours"), "--out", str(root / "hf")])
    return str(root / "hf"), params, config


def test_chat_template_is_the_chat_format_byte_for_byte(export, tokenizer):
    tok = transformers.AutoTokenizer.from_pretrained(export[0])
    for prompt in CHAT_PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == CHAT_FORMAT.format(prompt=prompt)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert ids["input_ids"] == tokenizer.encode(text).ids  # no BOS, nothing else added
    # Turns concatenate as data.py packs SFT rows (each reply ends with EOS); a system message is a plain line.
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": " b "}, {"role": "user", "content": "c"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        "Be brief.\nUser: a\nAssistant: b<|endoftext|>User: c\nAssistant:"
    assert tok.apply_chat_template(chat[1:2], tokenize=False) == "User: a\n"  # no generation prompt asked for
    with pytest.raises(Exception, match="only system, user and assistant roles"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_chat_template_of_a_reply_is_the_sft_row_data_py_trains_on(export, tokenizer, tmp_path):
    import data
    rows = [{"q": "add one", "a": "def f(x):\n    return x + 1"}, {"q": "say hi", "a": "print('hi')"}]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    batch = next(data.Batches([{"path": str(tmp_path / "sft.jsonl"), "weight": 1.0, "prompt": "q", "response": "a"}],
                              tokenizer, 255, 1))
    trained = [int(batch["inputs"][0, 0])] + batch["targets"][0].tolist()
    tok = transformers.AutoTokenizer.from_pretrained(export[0])
    for r in rows:  # each example is one packed document; find it by its prompt's tokens
        exchange = [{"role": "user", "content": r["q"]}, {"role": "assistant", "content": r["a"]}]
        want = tok.apply_chat_template(exchange, tokenize=True, return_dict=True)["input_ids"]
        assert want[-1] == 0 and any(trained[i:i + len(want)] == want for i in range(len(trained)))


def test_batched_padding_and_generation(export):
    import torch
    tok = transformers.AutoTokenizer.from_pretrained(export[0])
    m = transformers.AutoModelForCausalLM.from_pretrained(export[0]).eval()
    prompts = ["def f(x):", "hello world, print it"]
    batch = tok(prompts, padding=True, return_tensors="pt")
    # No token_type_ids: transformers 4.46 returns them unless the config names the inputs, and generate refuses them.
    assert set(batch) == {"input_ids", "attention_mask"} == set(tok.model_input_names)
    declared = json.load(open(os.path.join(export[0], "tokenizer_config.json")))["model_input_names"]
    assert declared == ["input_ids", "attention_mask"]
    assert tok.pad_token_id == 0 and tok.padding_side == "left"
    n = [len(tok(p)["input_ids"]) for p in prompts]
    assert n[0] < n[1] and batch["attention_mask"].sum(1).tolist() == n
    assert batch["input_ids"][0, :n[1] - n[0]].tolist() == [0] * (n[1] - n[0])  # EOS pads, on the left
    with torch.no_grad():
        together = m.generate(**batch, max_new_tokens=6, do_sample=False)[:, n[1]:]
        for row, p, k in zip(together.tolist(), prompts, n):
            alone = m.generate(**tok(p, return_tensors="pt"), max_new_tokens=6, do_sample=False)[0, k:].tolist()
            assert row[:len(alone)] == alone


def test_chat_pipeline_replies_as_sample_py_does(export, tokenizer):
    import sample
    path, params, config = export
    chat = transformers.pipeline("text-generation", model=path)
    messages = [{"role": "user", "content": "Write a function that reverses a string."}]
    out = chat(messages, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out[:-1] == messages and out[-1]["role"] == "assistant"
    ours = sample.generate(params, config, tokenizer, [CHAT_FORMAT.format(prompt=messages[0]["content"])],
                           max_new_tokens=8)[0]
    print(f"chat pipeline reply: {out[-1]['content']!r}; sample.py: {ours.text!r}")
    assert out[-1]["content"] == ours.text


def test_import_keeps_the_chat_template(export, tokenizer, tmp_path):
    convert.main(["--from-hf", export[0], "--out", str(tmp_path / "ours")])
    assert (tmp_path / "ours" / checkpoints.CHAT_TEMPLATE_FILE).read_text() == convert.CHAT_TEMPLATE
    convert.main(["--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "again")])
    assert json.load(open(tmp_path / "again" / "tokenizer_config.json"))["chat_template"] == convert.CHAT_TEMPLATE
    # Another model's template, saved by transformers (as chat_template.jinja), survives HF -> ours -> HF.
    src = save_hf(hf_model("mha"), tmp_path / "foreign", tokenizer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(src)
    convert.main(["--from-hf", src, "--out", str(tmp_path / "foreign_ours")])
    convert.main(["--ckpt", str(tmp_path / "foreign_ours"), "--out", str(tmp_path / "foreign_back")])
    back = transformers.AutoTokenizer.from_pretrained(tmp_path / "foreign_back")
    assert back.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"
    assert "kept from the imported checkpoint" in (tmp_path / "foreign_back" / "README.md").read_text()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exports_get_normal_permissions(export, umask, tmp_path):
    old = os.umask(umask)
    try:
        convert.main(["--from-hf", export[0], "--out", str(tmp_path / "ours")])
        convert.main(["--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")])
    finally:
        os.umask(old)
    for d in ("ours", "hf"):
        assert (tmp_path / d).stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
        assert all((tmp_path / d / f).stat().st_mode & 0o777 == 0o666 & ~umask for f in os.listdir(tmp_path / d))


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_model_card_lists_the_training_stages(export, tmp_path, where):
    """Two fake train.py runs, s2 initialised from s1 (by a path relative to where it ran): both are in the card,
    whether the runs are local directories or in a bucket (read through storage.py, like every tool)."""
    params, config = export[1], export[2]
    tokenizer = load_tokenizer(export[0])
    root = str(tmp_path / "runs") if where == "local" else f"memory://card-{os.getpid()}/runs"
    mixture = [{"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "weight": 3.0},
               {"path": "x.jsonl", "weight": 1.0}]
    for stage, init, (first, last) in [("s1", "", (9.0, 5.5)), ("s2", "elsewhere/s1", (5.0, 1.25))]:
        d = storage.join(root, stage)
        checkpoints.save_model(d, params, config, tokenizer)
        state = {"step": 4, "config": {"init_from": init, "mixture": mixture}}
        storage.write_bytes(storage.join(checkpoints.step_dir(d, 4), "state.json"), json.dumps(state).encode())
        metrics = [{"step": 2, "loss": first, "tokens_seen": 1024},
                   {"step": 4, "loss": last, "tokens_seen": 2048, "val_loss": last + 0.5}]
        storage.write_bytes(storage.join(d, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in metrics).encode())
    convert.main(["--ckpt", storage.join(root, "s2"), "--out", str(tmp_path / "hf")])
    card = (tmp_path / "hf" / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith(("| s1 ", "| s2 "))]
    mix = "HuggingFaceFW/fineweb-edu[sample-10BT] 75%, x.jsonl 25%"
    assert rows == [f"| s1 | (random init) | {mix} | 4 | 2,048 | 9.00 -> 5.50 | 6.00 |",
                    f"| s2 | elsewhere/s1 | {mix} | 4 | 2,048 | 5.00 -> 1.25 | 1.75 |"]
    assert "| n_layers | 2 |" in card and "pipeline(\"text-generation\"" in card and "User: {prompt}" in card
    assert "No training record" in (open(os.path.join(export[0], "README.md")).read())


def test_import_refuses_shards_that_disagree_with_their_index(tokenizer, tmp_path):
    """An index naming a tensor in a shard that does not hold it (which once imported uninitialised memory as
    that weight), and a shard holding a tensor the index places elsewhere, are one-line errors naming it."""
    src = save_hf(hf_model("gqa"), tmp_path / "src", tokenizer, max_shard_size="50KB")
    index_file = tmp_path / "src" / convert.HF_INDEX_FILE
    original = json.loads(index_file.read_text())
    a, b = sorted(original["weight_map"])[:2]
    assert original["weight_map"][a] != original["weight_map"][b]
    moved = {**original["weight_map"], a: original["weight_map"][b]}  # a's own shard is no longer read
    index_file.write_text(json.dumps({**original, "weight_map": moved}))
    with pytest.raises(convert.ConvertError, match=f"places {a} in .*, which does not hold it"):
        convert.from_hf(src)
    swapped = {**original["weight_map"], a: original["weight_map"][b], b: original["weight_map"][a]}
    index_file.write_text(json.dumps({**original, "weight_map": swapped}))
    with pytest.raises(convert.ConvertError, match=f"holds ({a}|{b}), which .* does not place in that file"):
        convert.from_hf(src)
    r = subprocess.run([sys.executable, os.path.join(REPO, "convert.py"), "--from-hf", src, "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_tokenizer_larger_than_the_vocab(tokenizer, tmp_path):
    big = Tokenizer.from_str(tokenizer.to_str())
    big.add_tokens([f"extra_{i}" for i in range(400)])  # > the model's 320 rows
    src = save_hf(hf_model("mha"), tmp_path / "src", big)
    with pytest.raises(convert.ConvertError, match=r"has \d+ tokens, more than the model's vocab_size 320"):
        convert.from_hf(src)


def test_a_bucket_url_needs_its_plugin_and_is_never_a_local_directory(tmp_path, no_plugins):
    r = subprocess.run([sys.executable, os.path.join(REPO, "convert.py"), "--ckpt", str(tmp_path), "--out",
                        "gs://bucket/hf"], capture_output=True, text=True, cwd=tmp_path, env=no_plugins)
    assert r.returncode == 2 and r.stderr == "error: gs://bucket/hf: Please install gcsfs to access Google Storage\n"
    assert not (tmp_path / "gs:").exists()


def test_export_import_and_sample_through_an_object_store(export, tmp_path):
    import sample
    bucket = f"memory://convert-{os.getpid()}"
    hf_dir, want, want_config = export
    convert.main(["--ckpt", os.path.join(os.path.dirname(hf_dir), "ours"), "--out", f"{bucket}/hf"])
    convert.main(["--from-hf", f"{bucket}/hf", "--out", f"{bucket}/again"])  # no rename there: config.json last
    params, config, _ = sample.load(f"{bucket}/again")
    assert config == want_config
    assert_bitwise_equal(checkpoints.flatten(params), checkpoints.flatten(want))
    assert_bitwise_equal(tensors(storage.download(f"{bucket}/hf", (checkpoints.WEIGHTS_FILE,))), tensors(hf_dir))
