"""model.py on its own: the formulas, parameter counts, initial loss, KV cache == full forward, remat/bf16.

Parity with transformers' LlamaForCausalLM is in test_convert.py (it needs the weight mapping); fast.py's
equality with this file is in test_fast.py.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import model
from helpers import GQA, random_params
from model import Config

# Test models are tiny, so runtime is nothing and XLA's compile time is everything: LLVM at -O0 compiles
# ~3x faster. (The 303M forward below uses the ordinary jit.)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
forward = jax.jit(model.forward, static_argnums=2, compiler_options=FAST_COMPILE)


def _tokens(config, shape, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, shape, dtype=np.int32)


def _init(config):
    """model.init itself. jax's default (partitionable) threefry compiles ~3x slower on a CPU than the
    classic one; the values differ, the distribution does not, and only the distribution is tested."""
    with jax.threefry_partitionable(False):
        return jax.jit(model.init, static_argnums=0)(config, jax.random.key(0))


@pytest.fixture(scope="module")
def tiny_params():
    return _init(model.CONFIGS["tiny"])


def test_param_count_smallcoder():
    assert model.param_count(model.CONFIGS["smallcoder"]) == 302_027_520


def test_flops_per_token_formula():
    c = model.CONFIGS["smallcoder"]
    norms = (2 * c.n_layers + 1) * c.d_model
    n_matmul = 302_027_520 - c.vocab_size * c.d_model - norms  # everything but the embedding lookup and gains
    assert model.flops_per_token(c) == 6 * n_matmul + 12 * c.n_layers * c.max_seq_len * c.d_model


def _initial_loss(params, config):
    # Over 256 tokens the mean loss is within ~0.02 (1 sigma) of its expectation, ln V + ~0.04 (logit variance / 2).
    tokens = _tokens(config, (2, 129))
    logits = jax.jit(model.forward, static_argnums=2)(params, tokens[:, :-1], config)
    return float(model.cross_entropy(logits, tokens[:, 1:]).mean())


def test_initial_loss_is_ln_vocab_tiny(tiny_params):
    config = model.CONFIGS["tiny"]
    assert abs(_initial_loss(tiny_params, config) - math.log(config.vocab_size)) < 0.1


def test_initial_loss_is_ln_vocab_smallcoder():
    # The real 303M config, once: ~1.2 GB of fp32 weights (a cut-down config would not test the real init).
    config = model.CONFIGS["smallcoder"]
    assert abs(_initial_loss(_init(config), config) - math.log(config.vocab_size)) < 0.1


# The cache tests share shapes (batch 2, 19 tokens, an 11-token prefill, a 24-slot cache) so that each
# config compiles three programs in all: full forward, prefill, one-token step.
@pytest.mark.parametrize("name", ["gqa", "tiny"])
def test_cache_prefill_and_decode_equal_forward(name, tiny_params):
    config, params = (GQA, random_params(GQA)) if name == "gqa" else (model.CONFIGS["tiny"], tiny_params)
    tokens = _tokens(config, (2, 19))
    full = forward(params, tokens, config)
    cache = model.init_cache(config, 2, 24)
    prefill, cache = forward(params, tokens[:, :11], config, cache)
    steps = [prefill]
    for t in range(11, 19):
        logits, cache = forward(params, tokens[:, t:t + 1], config, cache)
        steps.append(logits)
    assert cache["index"].tolist() == [19, 19]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_cache_with_left_padding_equals_each_row_alone():
    config, params = GQA, random_params(GQA)
    tokens = _tokens(config, (2, 19), seed=2)
    n1, pad = 13, 6  # row 0 has 19 real tokens; row 1 has 13, left-padded by 6 in the batch
    prompt = tokens.copy()
    prompt[1] = np.concatenate([np.full(pad, 7), tokens[1, :n1]])  # (the pad id does not matter)
    cache = model.init_cache(config, 2, 24, start_B=[0, pad])
    logits, cache = forward(params, prompt[:, :11], config, cache)
    steps = [logits]
    for t in range(11, 19):
        logits, cache = forward(params, prompt[:, t:t + 1], config, cache)
        steps.append(logits)
    batched = np.concatenate(steps, axis=1)
    # Each row alone, unpadded. Row 1 is right-padded instead, which a causal model cannot see: its first
    # n1 logits are those of the 13-token sequence (and the shapes match the compiled full forward).
    alone = forward(params, tokens, config)
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched[1, pad:], alone[1, :n1], atol=1e-5, rtol=0)


@functools.partial(jax.jit, static_argnums=2, compiler_options=FAST_COMPILE)
def _loss_and_grads(params, tokens, config):
    def loss_fn(p):
        return model.cross_entropy(model.forward(p, tokens[:, :-1], config), tokens[:, 1:]).mean()
    return jax.value_and_grad(loss_fn)(params)


def test_remat_gives_the_same_loss_and_gradients(capsys):
    params, tokens = random_params(GQA), _tokens(GQA, (2, 20))
    loss, grads = _loss_and_grads(params, tokens, GQA)
    for remat in ["full", "dots"]:
        loss_r, grads_r = _loss_and_grads(params, tokens, dataclasses.replace(GQA, remat=remat))
        np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
        for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
            np.testing.assert_allclose(g_r, g, atol=1e-6 * float(jnp.abs(g).max()), rtol=0)

    # ...and they keep what they say. "dots" saves the weight matmuls' outputs, among them the [L, B, T, d_ff]
    # of SwiGLU's gate and up, which "full" recomputes; "none" keeps more than either.
    def saved(remat):
        config = dataclasses.replace(GQA, remat=remat)
        print_saved_residuals(lambda p: jnp.mean(model.cross_entropy(
            model.forward(p, tokens, config), tokens)), params)
        return capsys.readouterr().out.splitlines()
    full, dots, none = saved("full"), saved("dots"), saved("none")
    ffn = f"f32[{GQA.n_layers},{tokens.shape[0]},{tokens.shape[1]},{GQA.d_ff}] output of scan"
    assert sum(line.startswith(ffn) for line in full) == 0
    assert sum(line.startswith(ffn) for line in dots) == 2  # gate and up
    assert len(full) < len(dots) < len(none)


def test_the_functions_are_their_formulas():
    """Each building block against the formula computed another way (numpy, float64 where it matters)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)) * 3
    gain = rng.normal(size=(8,))
    want = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5) * gain
    np.testing.assert_allclose(model.rms_norm(jnp.float32(x), jnp.float32(gain), 1e-5), want, rtol=1e-5)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(model.softmax(jnp.float32(x)), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    targets = rng.integers(0, 8, (2, 3))
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(model.cross_entropy(jnp.float32(x), targets),
                               -np.take_along_axis(logp, targets[..., None], -1)[..., 0], rtol=1e-5)
    np.testing.assert_allclose(model.silu(jnp.float32(x)), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)

    # RoPE: each pair (i, i + K/2) of a head rotates by pos * theta^(-2i/K), a 2-D rotation per pair.
    B, T, H, K = 1, 5, 2, 8
    q = rng.normal(size=(B, T, H, K))
    pos = np.arange(T)[None]
    got = np.asarray(model.rope(jnp.float32(q), model.rope_angles(jnp.asarray(pos), K, 100.0)))
    for t in range(T):
        for i in range(K // 2):
            a = t * 100.0 ** (-2 * i / K)
            c, s = np.cos(a), np.sin(a)
            x1, x2 = q[0, t, :, i], q[0, t, :, i + K // 2]
            np.testing.assert_allclose(got[0, t, :, i], c * x1 - s * x2, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got[0, t, :, i + K // 2], s * x1 + c * x2, rtol=1e-4, atol=1e-5)

    # Attention: per query head h, softmax over the allowed keys of KV head h // R.
    B, T, S, H, G, K = 2, 3, 4, 4, 2, 8
    q, k, v = rng.normal(size=(B, T, H, K)), rng.normal(size=(B, S, G, K)), rng.normal(size=(B, S, G, K))
    mask = rng.random((B, T, S)) < 0.7
    mask[..., 0] = True  # every query reads at least one key
    got = np.asarray(model.attention(jnp.float32(q), jnp.float32(k), jnp.float32(v), jnp.asarray(mask)))
    for b, t, h in np.ndindex(B, T, H):
        g = h // (H // G)
        scores = k[b, :, g] @ q[b, t, h] / np.sqrt(K)
        p = np.where(mask[b, t], np.exp(scores - scores[mask[b, t]].max()), 0.0)
        np.testing.assert_allclose(got[b, t, h], p @ v[b, :, g] / p.sum(), rtol=1e-4, atol=1e-5)


def test_bfloat16_forward_is_close_to_float32():
    params, tokens = random_params(GQA), _tokens(GQA, (2, 19))  # the cache tests' shapes: fp32 is compiled
    bf16 = dataclasses.replace(GQA, dtype="bfloat16")
    logits, logits_bf16 = forward(params, tokens, GQA), forward(params, tokens, bf16)
    assert logits_bf16.dtype == jnp.float32  # logits and the loss stay fp32
    scale = float(jnp.abs(logits).max())
    assert float(jnp.abs(logits_bf16 - logits).max()) < 0.02 * scale
    loss = model.cross_entropy(logits, tokens).mean()
    loss_bf16 = model.cross_entropy(logits_bf16, tokens).mean()
    assert abs(float(loss_bf16) - float(loss)) < 1e-2


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=100, n_heads=8), "not divisible by n_heads"),
    (dict(n_heads=8, n_kv_heads=3), "does not divide n_heads"),
    (dict(d_model=72, n_heads=8), "head_dim must be even"),
    (dict(dtype="float64"), "dtype must be"),
    (dict(remat="some"), "remat must be"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Config(**kwargs)
