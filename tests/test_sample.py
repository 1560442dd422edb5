"""sample.py: parity with transformers' greedy generate, EOS/stop handling, sampling rules, the CLI.

Everything runs on a tiny random model and a tiny BPE tokenizer trained here (<|endoftext|> = id 0).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import checkpoints
import model
import sample
from helpers import train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["def add(a, b):\n    return", "import os", "x = [i * i for i in range(10)]\nprint(x",
           "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(PROMPTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, 320)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """Random weights with a sharpened lm_head, so greedy choices are not near-ties between implementations."""
    config = model.Config(vocab_size=tokenizer.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                          d_ff=128, max_seq_len=128)
    params = model.init(config, jax.random.key(1))
    params["lm_head"] = params["lm_head"] * 50
    params["layers"]["attn_norm"] = 1 + 0.1 * jax.random.normal(jax.random.key(2), (2, 64))
    return params, config


def to_hf(params, config):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    c = config
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    p = jax.tree.map(lambda a: torch.tensor(np.asarray(a, np.float32)), params)
    D = c.d_model
    sd = {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["final_norm"],
          "lm_head.weight": p["lm_head"].T}
    for i in range(c.n_layers):
        w = {k: v[i] for k, v in p["layers"].items()}
        pre = f"model.layers.{i}."
        sd |= {pre + "self_attn.q_proj.weight": w["wq"].reshape(D, -1).T,
               pre + "self_attn.k_proj.weight": w["wk"].reshape(D, -1).T,
               pre + "self_attn.v_proj.weight": w["wv"].reshape(D, -1).T,
               pre + "self_attn.o_proj.weight": w["wo"].reshape(-1, D).T,
               pre + "mlp.gate_proj.weight": w["w_gate"].T, pre + "mlp.up_proj.weight": w["w_up"].T,
               pre + "mlp.down_proj.weight": w["w_down"].T,
               pre + "input_layernorm.weight": w["attn_norm"], pre + "post_attention_layernorm.weight": w["mlp_norm"]}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return hf


def hf_greedy(hf, prompt_ids, eos, max_new):
    """transformers' greedy generate on a left-padded batch; generated ids up to (excluding) EOS."""
    import torch
    width = max(map(len, prompt_ids))
    ids = torch.tensor([[eos] * (width - len(r)) + r for r in prompt_ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in prompt_ids])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new, min_new_tokens=0,
                          eos_token_id=eos, pad_token_id=eos)
    rows = [r.tolist() for r in out[:, width:]]
    return [r[:r.index(eos)] if eos in r else r for r in rows]


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_greedy_matches_transformers(tiny, tokenizer, impl):
    params, config = tiny
    hf = to_hf(params, config)
    ids = [tokenizer.encode(p).ids for p in PROMPTS]
    for rows in ([ids[0]], [ids[3]], ids):  # single prompts, then a batch of four different lengths
        want = hf_greedy(hf, rows, eos=0, max_new=16)
        assert sample.generate_ids(params, config, rows, 0, max_new_tokens=16, impl=impl) == want
    # With an EOS that the rows reach at different steps: each row stops on its own, like transformers.
    free = sample.generate_ids(params, config, ids, 0, max_new_tokens=16, impl=impl)
    eos = free[1][5]
    assert any(eos not in r for r in free)
    want = hf_greedy(hf, ids, eos=eos, max_new=16)
    got = sample.generate_ids(params, config, ids, eos, max_new_tokens=16, batch_size=3, impl=impl)
    assert got == want
    assert got[1] == free[1][:free[1].index(eos)]
    for g, f in zip(got, free):
        if eos not in f:
            assert g == f  # rows that never meet this EOS run to max_new_tokens, unaffected by the others


def test_eos_always_wins(tiny, tokenizer):
    params, config = tiny
    # Residual dim 0 is huge and positive for every token, and only EOS reads it: EOS wins every step.
    params = dict(params, embed=params["embed"].at[:, 0].set(1e3),
                  lm_head=params["lm_head"].at[0, :].set(0.0).at[0, 0].set(1e3))
    samples = sample.generate(params, config, tokenizer, PROMPTS + [""], max_new_tokens=8, batch_size=2)
    assert [(s.ids, s.text, s.finish_reason) for s in samples] == [([], "", "eos")] * 5
    samples = sample.generate(params, config, tokenizer, PROMPTS[:1], max_new_tokens=8, stop=["x"],
                              on_token=lambda i, t: pytest.fail("no text to stream"))
    assert [(s.ids, s.text, s.finish_reason) for s in samples] == [([], "", "eos")]


def test_stop_strings_and_streaming(tiny, tokenizer):
    params, config = tiny
    full = sample.generate(params, config, tokenizer, PROMPTS, max_new_tokens=24)
    assert all(s.finish_reason == "length" and len(s.ids) == 24 for s in full)
    assert [s.ids for s in full] == sample.generate_ids(params, config, [tokenizer.encode(p).ids for p in PROMPTS],
                                                        0, max_new_tokens=24)
    target = full[2].text
    stop = next(target[k:k + 2] for k in range(10, len(target)) if "\ufffd" not in target[k:k + 2])
    streamed, done = {}, {}
    got = sample.generate(params, config, tokenizer, PROMPTS, max_new_tokens=24, stop=[stop, "never here"],
                          on_token=lambda i, t: streamed.__setitem__(i, streamed.get(i, "") + t),
                          on_done=lambda i, s: done.setdefault(i, []).append(s))
    assert done == {i: [s] for i, s in enumerate(got)}  # each prompt's final sample, once
    for s, f, i in zip(got, full, range(4)):
        k = f.text.find(stop)
        if k >= 0:
            assert (s.text, s.finish_reason) == (f.text[:k], "stop")
            m = len(s.ids)
            assert s.ids == f.ids[:m] and stop in tokenizer.decode(s.ids) and stop not in tokenizer.decode(s.ids[:-1])
        else:
            assert (s.ids, s.text, s.finish_reason) == (f.ids, f.text, "length")
        assert streamed.get(i, "") == s.text
    assert got[2].finish_reason == "stop"


def test_every_prompt_gets_the_tokens_it_gets_alone(tiny, tokenizer):
    """Continuous batching: rows end at different steps (an EOS some reach, the length) and are refilled while
    prompts wait, the cache grows past its first buckets (64, 128 slots), and still each prompt's tokens, greedy
    or sampled, are those it gets decoding alone: at batch size 1, 3 and 8, with either implementation."""
    params, config = tiny
    ids = [tokenizer.encode(p).ids for p in PROMPTS * 2]
    free = sample.generate_ids(params, config, ids, 0, max_new_tokens=90, batch_size=1)
    lengths = lambda t: {r.index(t) if t in r else 90 for r in free}  # noqa: E731  (with t as the EOS)
    eos = max(sorted(set(sum(free, []))), key=lambda t: len(lengths(t)))
    ended = sample.generate_ids(params, config, ids, eos, max_new_tokens=90, batch_size=1)
    assert len({len(r) for r in ended}) > 2 and max(map(len, ended)) == 90  # uneven: rows refill
    for impl in ("fast", "reference"):
        for batch in (3, 8):
            assert sample.generate_ids(params, config, ids, eos, max_new_tokens=90, batch_size=batch,
                                       impl=impl) == ended
    for temperature, top_p in ((1.0, 1.0), (0.8, 0.9)):
        run = lambda batch: sample.generate_ids(params, config, ids, eos, max_new_tokens=40, seed=7,  # noqa: E731
                                                temperature=temperature, top_p=top_p, batch_size=batch)
        alone = run(1)
        assert run(3) == alone and run(8) == alone and alone[0] != alone[4]  # a prompt twice: two draws


def test_a_row_that_ends_takes_the_next_prompt(tokenizer):
    """bench.py's chain model generates a known number of tokens per prompt: the rows, decode steps and
    prompts admitted are exactly those of the schedule (a free row takes the next prompt before the next step),
    where batch-at-a-time decoding would run every batch as long as its longest row."""
    import bench
    config = model.Config(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64)
    params = bench.chain_params(model.init(config, jax.random.key(0)), config)
    max_new, rows = 12, 3
    ends = [3, None, 2, None, 5, 1, None, 7, 4]  # tokens each generates, EOS included; None: runs to max_new
    prompts = [[5, 6, config.vocab_size - n if n else 9] for n in ends]  # one length: admitted in order
    stats = {}
    out = sample.generate_ids(params, config, prompts, 0, max_new_tokens=max_new, batch_size=rows, stats=stats)
    assert [len(o) for o in out] == [n - 1 if n else max_new for n in ends]
    assert out[0] == [config.vocab_size - 2, config.vocab_size - 1] and out[1] == list(range(10, 10 + max_new))
    left, running, steps = [(n or max_new) - 1 for n in ends], [], 0  # decode steps each prompt needs
    while left or running:
        while left and len(running) < rows:
            running.append(left.pop(0))
        running = [r for r in running if r > 0]  # a first token that ends the row frees it at once
        if len(running) == rows or not left:
            steps += bool(running)
            running = [r - 1 for r in running]
    assert stats == {"rows": rows, "steps": steps, "prompts": len(ends)}
    at_a_time = sum(max((n or max_new) - 1 for n in ends[i:i + rows]) for i in range(0, len(ends), rows))
    assert steps < at_a_time


@pytest.mark.parametrize("rows, slots", [(1, 512), (3, 256)])
def test_the_decode_loop_reads_the_cache_where_it_lies(rows, slots):
    """The compiled decode loop (fast path) holds no copy of any layer's keys or values: its scratch is smaller than
    one layer's keys. It held two when each token sliced its layer out of a stacked cache (2.2 MB at 1 row, 1,024
    slots of the tiny model, for 1 MB of keys a layer), and as many when the write ran twice, for the loop carry
    and for the products, each on its own copy."""
    config = model.Config(vocab_size=320, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=512)
    params = sample._decoding_params(model.init(config, jax.random.key(0)), config=config, impl="fast")
    index = np.arange(rows, dtype=np.int32)
    state = sample._admit(params, None, np.ones((rows, 8), np.int32), np.zeros(rows, np.int32), index, index,
                          np.uint32(0), np.int32(0), config=config, slots=slots, max_new=32, sampling=(0.0, 0, 1.0),
                          impl="fast")
    assert [a.shape for a in state["cache"]["k"]] == [(rows, 2, 16, slots)] * 3  # [B, G, K, S], one per layer
    loop = sample._decode_jit("fast").lower(params, state, jnp.int32(4), jnp.bool_(False), config=config,
                                            sampling=(0.0, 0, 1.0)).compile()
    layer_keys = rows * config.n_kv_heads * config.head_dim * slots * 4
    assert loop.memory_analysis().temp_size_in_bytes < layer_keys / 2


def test_weights_are_prepared_once_per_params(tiny, monkeypatch):
    """Repeated calls on the same params reuse one prepared copy of the weights; other values, arrays changed
    in place (numpy), deleted (donated) ones and gone params are never served a stale copy, and none is kept
    past its params."""
    import gc
    params, config = tiny
    made, prepare = [], sample._prepare
    monkeypatch.setattr(sample, "_prepare", lambda p, **kw: made.append(1) or prepare(p, **kw))
    monkeypatch.setattr(sample, "_PREPARED", {})
    run = lambda p: sample.generate_ids(p, config, [[5, 6, 7]], 0, max_new_tokens=6)  # noqa: E731
    mine = jax.tree.map(jnp.array, params)  # fresh arrays: this test's own
    first = run(mine)
    assert run(mine) == first and len(made) == 1
    other = {**mine, "lm_head": jnp.roll(mine["lm_head"], 1, axis=1)}  # other tokens from the first on
    host, host_other = jax.tree.map(np.array, mine), jax.tree.map(np.array, other)
    assert run(host) == first and run(host_other) != first and len(made) == 3  # numpy: prepared every call
    assert run(other) == run(host_other) and len(made) == 5
    np.copyto(host["lm_head"], host_other["lm_head"])  # in place
    assert run(host) == run(host_other)
    run(mine)
    mine["embed"].delete()  # as a donated buffer is
    with pytest.raises(RuntimeError, match="deleted"):
        run(mine)
    again = jax.tree.map(jnp.array, params)
    assert run(again) == first and len(sample._PREPARED) == 1
    del again
    gc.collect()
    assert sample._PREPARED == {}


def test_context_overflow(tiny, tokenizer):
    params, config = tiny
    long_ids = list(range(1, 101))
    with pytest.raises(sample.ContextError, match="100 tokens.*130 > max_seq_len=128"):
        sample.generate_ids(params, config, [long_ids], 0, max_new_tokens=30)
    out = sample.generate_ids(params, config, [long_ids], 0, max_new_tokens=30, truncate=True)
    assert out == sample.generate_ids(params, config, [long_ids[-98:]], 0, max_new_tokens=30)


def test_filter_logits():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda **kw: np.isfinite(np.asarray(sample.filter_logits(logits, **kw)))[0].tolist()
    assert keep() == [True] * 5
    assert keep(top_k=2) == [True, True, False, False, False]
    assert keep(top_p=0.5) == [True, False, False, False, False]       # 0.5 already reaches 0.5
    assert keep(top_p=0.6) == [True, True, False, False, False]        # 0.5 < 0.6 <= 0.7
    assert keep(top_p=0.86) == [True, True, True, True, False]         # 0.85 < 0.86
    assert keep(top_k=3, top_p=0.99) == [True, True, True, False, False]
    assert keep(top_p=1e-6) == [True, False, False, False, False]      # always at least one token
    batch = jnp.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert np.isfinite(np.asarray(sample.filter_logits(batch, top_k=1))).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_sampling_seeds(tiny, tokenizer):
    params, config = tiny
    ids = [tokenizer.encode(p).ids for p in PROMPTS[:2]]
    run = lambda **kw: sample.generate_ids(params, config, ids, -1, max_new_tokens=16, temperature=3.0, **kw)
    assert run(seed=1) == run(seed=1)
    assert run(seed=1) != run(seed=2)
    assert run(seed=-1) == run(seed=2**32 - 1)  # seeds count modulo 2³², negative ones too
    greedy = sample.generate_ids(params, config, ids, -1, max_new_tokens=16)
    assert run(seed=3, top_k=1) == greedy   # top-k 1 leaves only the argmax to draw


def test_cli_json(tiny, tokenizer, tmp_path):
    params, config = tiny
    checkpoints.save_model(str(tmp_path), params, config, tokenizer)
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", str(tmp_path), "--max-new-tokens", "6",
           "--num-samples", "2", "--temperature", "1", "--seed", "5", "--json"]
    r = subprocess.run(cmd + ["--prompt", "import os"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(set(row) == {"ids", "text", "finish_reason"} for row in rows)
    assert rows == [{"ids": s.ids, "text": s.text, "finish_reason": s.finish_reason} for s in sample.generate(
        params, config, tokenizer, ["import os"] * 2, max_new_tokens=6, temperature=1.0, seed=5)]
    r = subprocess.run(cmd + ["--prompt", "x" * 200], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: prompt 0 has") and "Traceback" not in r.stderr


def test_cli_says_it_reads_a_prompt_from_a_terminal(tiny, tokenizer, tmp_path, monkeypatch, capsys):
    """Without --prompt, a terminal gets one line saying what the silence waits for; a pipe gets none."""
    import io
    params, config = tiny
    checkpoints.save_model(str(tmp_path), params, config, tokenizer)
    for tty in (True, False):
        stdin = io.StringIO("import os")
        stdin.isatty = lambda: tty
        monkeypatch.setattr(sys, "stdin", stdin)
        sample.main(["--ckpt", str(tmp_path), "--max-new-tokens", "4"])
        said = "reading the prompt from stdin (end it with Ctrl-D; or pass --prompt)" in capsys.readouterr().err
        assert said == tty


def test_cli_default_max_new_tokens_fits_a_short_context(tiny, tokenizer, tmp_path):
    """512 new tokens by default, fewer when the context is shorter (the demo model has 512 in all)."""
    params, config = tiny  # max_seq_len 128
    checkpoints.save_model(str(tmp_path), params, config, tokenizer)
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", str(tmp_path), "--json", "--chat",
           "--prompt", "import os"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    room = config.max_seq_len - len(tokenizer.encode("User: import os\nAssistant:").ids)
    want = sample.generate(params, config, tokenizer, ["User: import os\nAssistant:"], max_new_tokens=room)[0]
    assert row["ids"] == want.ids and row["finish_reason"] == want.finish_reason
