"""fast.py == model.py: every replaced function, values and gradients, then the whole model and the tokens.

fp32 throughout with tight tolerances (the rewrites change the order of some sums, so not bit for bit);
bf16 where a rewrite chooses dtypes itself. What makes the rewrites fast on a particular platform (HLO
layouts, page faults) is tested in test_platform.py.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import checkpoints
import fast
import model
import sample
from helpers import GQA, random_params

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # tiny shapes: compile time is everything
RNG = np.random.default_rng(0)


def _normal(*shape, scale=1.0):
    return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32)


def _assert_same_function(ours, reference, args, rtol=1e-5, atol=1e-6):
    """Equal values, and equal gradients of a random linear function of the output w.r.t. every argument."""
    out = reference(*args)
    np.testing.assert_allclose(ours(*args), out, rtol=rtol, atol=atol)
    weights = _normal(*out.shape)
    grads = [jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * weights), range(len(args)))(*args)
             for f in (ours, reference)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(jnp.abs(b).max())))


# ----------------------------------------------------------------------------- each function

def test_rms_norm_equals_the_reference_and_keeps_less(capsys):
    x, gain = _normal(4, 6, 16, scale=3), _normal(16)
    _assert_same_function(lambda x, g: fast.rms_norm(x, g, 1e-5), lambda x, g: model.rms_norm(x, g, 1e-5), (x, gain))
    # bf16 inputs (the accelerators' compute dtype): bf16 gradients close to the fp32 reference's
    grads = lambda f, *a: jax.grad(lambda x, g: jnp.sum(f(x, g, 1e-5).astype(jnp.float32)), (0, 1))(*a)
    for a, b in zip(grads(fast.rms_norm, x.astype(jnp.bfloat16), gain), grads(model.rms_norm, x, gain)):
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0, atol=0.03 * float(jnp.abs(b).max()))
    # it keeps what it says: x in its own dtype and one fp32 number per token (autodiff: two fp32 copies of x)
    print_saved_residuals(lambda x, g: jnp.sum(fast.rms_norm(x, g, 1e-5)), x.astype(jnp.bfloat16), gain)
    saved = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in saved] == ["bf16[4,6,16]", "f32[16]", "f32[4,6,1]"], saved


def test_softmax_equals_the_reference_forward_and_reverse_mode():
    x = _normal(3, 5, 7).at[:, :, 4:].add(jnp.finfo(jnp.float32).min)  # an additive mask, as attention applies it
    _assert_same_function(fast.softmax, model.softmax, (x,))
    dx = _normal(*x.shape)
    np.testing.assert_allclose(jax.jvp(fast.softmax, (x,), (dx,))[1], jax.jvp(model.softmax, (x,), (dx,))[1],
                               rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(fast.softmax(x)[..., 4:]).max()) == 0.0  # masked keys get exactly zero weight


def test_cross_entropy_equals_the_reference():
    logits, targets = _normal(4, 6, 11, scale=3), jnp.asarray(RNG.integers(0, 11, (4, 6)))
    _assert_same_function(lambda l: fast.cross_entropy(l, targets), lambda l: model.cross_entropy(l, targets),
                          (logits,))
    g = jax.grad(lambda l: fast.cross_entropy(l, targets).sum())(logits.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16


def test_dense_equals_matmul_in_every_dtype():
    for (n, i, o) in [(6, 5, 7), (6, 7, 5)]:  # x the narrower operand, then g
        x, w = _normal(n, i), _normal(i, o)
        _assert_same_function(fast.dense, jnp.matmul, (x, w))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    assert fast.dense(xb, wb).dtype == jnp.bfloat16 and fast.dense(xb, wb, jnp.float32).dtype == jnp.float32
    c = _normal(n, o)
    dx, dw = jax.grad(lambda x, w: jnp.sum(fast.dense(x, w, jnp.float32) * c), (0, 1))(xb, wb)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    want = jax.grad(lambda x, w: jnp.sum((x @ w) * c), (0, 1))(x, w)
    for a, b in zip((dx, dw), want):
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=2e-2, atol=5e-2)


def test_lm_head_cross_entropy_equals_the_reference():
    """Chunks of 8 over 37 tokens (the last one padded), values and gradients for x and w, fp32 and bf16."""
    x, w, targets = _normal(37, 16), _normal(16, 50), jnp.asarray(RNG.integers(0, 50, 37))
    reference = lambda x, w: model.cross_entropy((x @ w)[None], targets[None])[0]  # noqa: E731
    _assert_same_function(lambda x, w: fast.lm_head_cross_entropy(x, w, targets, chunk=8), reference, (x, w))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: fast.lm_head_cross_entropy(x, w, targets, chunk=8).sum(), (0, 1))(xb, wb)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    want = jax.grad(lambda x, w: reference(x, w).sum(), (0, 1))(xb.astype(jnp.float32), wb.astype(jnp.float32))
    for a, b in zip((dx, dw), want):
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0, atol=0.02 * float(jnp.abs(b).max()))


def test_chunked_loss_never_holds_the_full_logits():
    """The compiled gradient of fast.loss holds no [N, V] fp32 array once N exceeds the chunk (and does below
    it, where the whole is one chunk): here N = 40 tokens, V = 512, chunks of 16."""
    params, tokens = random_params(GQA), np.random.default_rng(1).integers(0, GQA.vocab_size, (2, 21), np.int32)
    N, V = tokens[:, :-1].size, GQA.vocab_size

    def hlo(chunk):
        grad = jax.grad(lambda p: fast.loss(p, tokens[:, :-1], tokens[:, 1:], GQA, chunk=chunk).sum())
        return jax.jit(grad).lower(params).compile().as_text()
    assert f"f32[{N},{V}]" in hlo(64)
    chunked = hlo(16)
    assert f"f32[{N},{V}]" not in chunked and f"f32[48,{V}]" not in chunked and f"f32[16,{V}]" in chunked


def test_swiglu_down_equals_the_formula():
    gate, up, w_down = _normal(6, 10), _normal(6, 10), _normal(10, 4)
    _assert_same_function(fast.swiglu_down, lambda g, u, w: (model.silu(g) * u) @ w, (gate, up, w_down))


def _mask_BTS(B, T, S, start_B, index=0):
    slot_T, slot_S = index + jnp.arange(T), jnp.arange(S)
    return (slot_S[None, None] <= slot_T[None, :, None]) & (slot_S[None, None] >= jnp.asarray(start_B)[:, None, None])


def test_every_attention_equals_the_reference():
    """Head-major attention with an additive bias, the blockwise causal one (ragged last block, left padding,
    GQA) and jax.nn.dot_product_attention (cuDNN's path, XLA's composition here) all equal model.attention.
    Padding queries, which have no key to read, get an arbitrary average in each; nothing reads them."""
    B, T, H, G, K = 2, 11, 4, 2, 8
    q, k, v = _normal(B, T, H, K), _normal(B, T, G, K), _normal(B, T, G, K)
    mask = _mask_BTS(B, T, T, [0, 3])  # row 1 is left-padded by 3
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    real = np.asarray(mask.any(-1))[:, :, None, None]
    reference = lambda q, k, v: model.attention(q, k, v, mask) * real  # noqa: E731
    head_major = lambda f: lambda q, k, v: f(q, k.swapaxes(1, 2), v.swapaxes(1, 2), bias) * real  # noqa: E731
    _assert_same_function(head_major(fast.head_major_attention), reference, (q, k, v))
    _assert_same_function(head_major(functools.partial(fast.blockwise_causal_attention, block=4)), reference, (q, k, v))
    causal = _mask_BTS(B, T, T, [0, 0])  # cuDNN's path takes no padding: training rows are packed
    _assert_same_function(fast.cudnn_causal_attention, lambda q, k, v: model.attention(q, k, v, causal), (q, k, v))


def test_splash_attention_equals_the_reference(monkeypatch):
    """The TPU's Pallas splash kernel, in interpret mode on a CPU: two 128-query blocks of a 256-token causal
    sequence with GQA and the 303M's head_dim (96, less than the TPU's 128 lanes), values and gradients (fp32:
    the kernel's online softmax sums in another order)."""
    B, T, H, G, K = 2, 256, 4, 2, 96
    q, k, v = _normal(B, T, H, K), _normal(B, T, G, K), _normal(B, T, G, K)
    causal = _mask_BTS(B, T, T, [0, 0])
    monkeypatch.setattr(fast, "SPLASH_BLOCK", 128)
    _assert_same_function(fast.splash_causal_attention, lambda q, k, v: model.attention(q, k, v, causal),
                          (q, k, v), rtol=1e-5, atol=1e-5)


def _tpu_kernels(f, *args) -> int:
    """How many Mosaic (Pallas TPU) kernels f(*args) holds, lowered for a TPU (no TPU needed: lowering runs
    Mosaic's own checks of the kernels' shapes and blocks; compiling would need the chip)."""
    return jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",)).as_text().count("tpu_custom_call")


def test_splash_lowers_for_a_tpu_and_dots_remat_keeps_its_forward(monkeypatch):
    """On a TPU (faked: the backend's name) the kernel and its backward lower for the chip at the 303M's head_dim
    (96) and sequence (1024, blocks of 512) with GQA. The whole model's gradient then holds three kernels, the
    forward in the layer scan and dq, dkv in its backward, with remat="dots" as without remat: "dots" keeps the
    forward's output and statistics. Keeping only the matmuls' outputs (or remat="full") it runs the forward twice."""
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q = jax.ShapeDtypeStruct((2, 1024, 4, 96), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 1024, 2, 96), jnp.bfloat16)
    grad = jax.grad(lambda *a: fast.splash_causal_attention(*a).astype(jnp.float32).sum(), (0, 1, 2))
    assert (_tpu_kernels(fast.splash_causal_attention, q, kv, kv), _tpu_kernels(grad, q, kv, kv)) == (1, 3)

    base = model.Config(vocab_size=512, d_model=192, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=256,
                        max_seq_len=1024, dtype="bfloat16")
    params = jax.eval_shape(lambda: model.init(base, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((2, 1025), jnp.int32)

    def kernels(remat):
        config = dataclasses.replace(base, remat=remat)
        return _tpu_kernels(jax.grad(lambda p, t: fast.loss(p, t[:, :-1], t[:, 1:], config).mean()), params, tokens)
    assert [kernels(remat) for remat in ("none", "dots", "full")] == [3, 3, 4]
    monkeypatch.setitem(fast._REMAT_POLICIES, "dots", jax.checkpoint_policies.save_only_these_names("dense"))
    assert kernels("dots") == 4


def test_training_attention_follows_the_backend(monkeypatch):
    """cuDNN on a GPU in 16-bit, splash on a TPU when T fills its blocks, XLA's blockwise attention otherwise."""
    for backend, dtype, T, want in [("cpu", jnp.bfloat16, 1024, "blockwise"), ("gpu", jnp.bfloat16, 1024, "cudnn"),
                                    ("gpu", jnp.float32, 1024, "blockwise"), ("tpu", jnp.bfloat16, 1024, "splash"),
                                    ("tpu", jnp.float32, 256, "splash"), ("tpu", jnp.bfloat16, 100, "blockwise"),
                                    ("tpu", jnp.bfloat16, 768, "blockwise")]:
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        assert fast.training_attention(dtype, T) == want, (backend, dtype, T)


# ----------------------------------------------------------------------------- the whole model

@functools.partial(jax.jit, static_argnums=(2, 3), compiler_options=FAST_COMPILE)
def _loss_and_grads(params, tokens, config, loss):
    def loss_fn(p):
        return loss(p, tokens[:, :-1], tokens[:, 1:], config).mean()
    return jax.value_and_grad(loss_fn)(params)


@pytest.mark.parametrize("remat, chunk, attention", [("none", None, None), ("full", None, None), ("dots", None, None),
                                                     ("none", 16, None), ("dots", None, "splash")])
def test_loss_and_gradients_equal_the_reference(remat, chunk, attention, monkeypatch):
    """The whole model's loss and every weight's gradient; chunk 16: 40 tokens' logits 16 at a time; "splash":
    training attention through the TPU's kernel (interpret mode) on one 128-token block, as a TPU would run it."""
    T = 20
    if attention:
        monkeypatch.setattr(fast, "training_attention", lambda dtype, T: attention)
        T = 128  # the kernel's blocks are whole 128-lane tiles
    config = dataclasses.replace(GQA, remat=remat, max_seq_len=T)
    params, tokens = random_params(GQA), np.random.default_rng(1).integers(0, GQA.vocab_size, (2, T + 1), np.int32)
    loss, grads = _loss_and_grads(params, tokens, config, fast.implementation("reference").loss)
    loss_fast, grads_fast = _loss_and_grads(params, tokens, config, functools.partial(fast.loss, chunk=chunk))
    np.testing.assert_allclose(loss_fast, loss, rtol=1e-6)
    for name, g, g_fast in zip(checkpoints.flatten(grads), jax.tree.leaves(grads), jax.tree.leaves(grads_fast)):
        np.testing.assert_allclose(g_fast, g, atol=1e-5 * float(jnp.abs(g).max()), rtol=0, err_msg=name)


def test_fast_remat_keeps_what_it_says(capsys):
    """"dots" saves the weight matmuls' outputs, among them SwiGLU's gate and up, which "full" recomputes; without
    remat too only gate and up (swiglu_down recomputes the rest), and the fused decoding groups never appear."""
    params, tokens = random_params(GQA), np.random.default_rng(1).integers(0, GQA.vocab_size, (2, 20), np.int32)

    def saved(remat):
        config = dataclasses.replace(GQA, remat=remat)
        print_saved_residuals(lambda p: jnp.mean(fast.cross_entropy(fast.forward(p, tokens, config), tokens)), params)
        return capsys.readouterr().out.splitlines()
    full, dots, none = saved("full"), saved("dots"), saved("none")
    ffn = f"f32[{GQA.n_layers},{tokens.size},{GQA.d_ff}] output of scan"
    assert [sum(line.startswith(ffn) for line in r) for r in (full, dots, none)] == [0, 2, 2]
    L, D, E = GQA.n_layers, GQA.d_model, (GQA.n_heads + 2 * GQA.n_kv_heads) * GQA.head_dim
    assert not any(f"[{L},{D},{E}]" in line or f"[{L},{D},{2 * GQA.d_ff}]" in line for line in none + dots)
    assert len(full) < len(dots) < len(none)


def test_decoding_equals_the_reference_forward():
    """fast's cache (transposed keys) and decoding layout (unrolled, fused): a left-padded prefill, then one
    token at a time, gives the reference's whole-sequence logits."""
    params = random_params(GQA)
    tokens = np.random.default_rng(2).integers(0, GQA.vocab_size, (2, 19), np.int32)
    start = [0, 5]
    tokens[1, :5] = 7  # padding, never attended to
    forward = jax.jit(fast.forward, static_argnums=2, compiler_options=FAST_COMPILE)
    reference = jax.jit(model.forward, static_argnums=2, compiler_options=FAST_COMPILE)
    cache = model.init_cache(GQA, 2, 24, start)
    want, _ = reference(params, tokens, GQA, cache)
    for layout in (params, fast.decoding_layout(params)):
        cache = fast.init_transposed_cache(GQA, 2, 24, start)
        logits, cache = forward(layout, tokens[:, :11], GQA, cache)
        steps = [logits]
        for t in range(11, 19):
            logits, cache = forward(layout, tokens[:, t:t + 1], GQA, cache)
            steps.append(logits)
        got = np.concatenate(steps, axis=1)
        np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[1, 5:], want[1, 5:], atol=1e-5, rtol=0)


def test_a_fresh_prefill_and_rows_at_their_own_slots_equal_the_reference():
    """Two prompts of different lengths, each prefilled alone by `last_logits` (into a fresh cache; fast.py attends
    over its own keys and applies the lm_head at the last position only), then decoding side by side in one
    cache at different slots, one write per row: the reference's whole-sequence logits, in both implementations."""
    params = random_params(GQA)
    tokens = np.random.default_rng(3).integers(0, GQA.vocab_size, (2, 19), np.int32)
    want = jax.jit(model.forward, static_argnums=2, compiler_options=FAST_COMPILE)(params, tokens, GQA)
    for name in fast.IMPLEMENTATIONS:
        net = fast.implementation(name)
        prefill = jax.jit(net.last_logits, static_argnums=2, compiler_options=FAST_COMPILE)
        caches = []
        for b, n in ((0, 11), (1, 6)):
            logits, cache = prefill(params, tokens[b:b + 1, :n], GQA, net.init_cache(GQA, 1, 24))
            np.testing.assert_allclose(logits[0], want[b, n - 1], atol=1e-5, rtol=0)
            caches.append(cache)
        cache = jax.tree.map(lambda *a: jnp.concatenate(a, axis=sample._row_axis(a[0])), *caches)  # rows side by side
        assert cache["index"].tolist() == [11, 6]
        step = jax.jit(net.forward, static_argnums=2, compiler_options=FAST_COMPILE)
        for t in range(7):
            logits, cache = step(params, tokens[[0, 1], [11 + t, 6 + t]][:, None], GQA, cache)
            np.testing.assert_allclose(logits[:, 0], want[[0, 1], [11 + t, 6 + t]], atol=1e-5, rtol=0)


def test_argmax_and_draws_match_jax():
    """fast.argmax is jnp.argmax, ties (first index), infinities and NaNs (the first NaN) included, and a draw
    through it is jax.random.categorical's for the row's key: the faster reductions change no token."""
    x = jax.random.normal(jax.random.key(1), (4, 8192))
    x = x.at[0, 3].set(jnp.inf).at[1, 5].set(x[1].max()).at[2].set(-jnp.inf)
    x = x.at[3, 7].set(jnp.nan).at[3, 9].set(jnp.nan).at[3, 2].set(jnp.inf)
    assert fast.argmax(x).tolist() == jnp.argmax(x, -1).tolist() == [3, int(jnp.argmax(x[1])), 0, 7]
    finite = x[:2]
    for seed in range(4):
        keys = jax.random.split(jax.random.key(seed), 2)  # one per row
        got = sample.pick(finite, keys, 0.7, 0, 1.0, fast.argmax)
        assert got.tolist() == [int(jax.random.categorical(k, row / 0.7)) for k, row in zip(keys, finite)]


def test_greedy_and_sampled_tokens_are_identical():
    config = dataclasses.replace(GQA, max_seq_len=128)
    params = random_params(config)
    params["lm_head"] = params["lm_head"] * 20  # sharp choices: no near-ties between the two sums' orders
    prompts = [np.random.default_rng(i).integers(1, 512, n).tolist() for i, n in enumerate([3, 17, 9])]
    for temperature in (0.0, 0.9):
        run = lambda impl: sample.generate_ids(params, config, prompts, 0, max_new_tokens=24,  # noqa: E731
                                               temperature=temperature, seed=3, batch_size=2, impl=impl)
        assert run("fast") == run("reference")


def test_implementation_names():
    assert fast.implementation("reference").forward is model.forward
    assert fast.implementation("fast").forward is fast.forward
    assert fast.implementation("fast").init_cache is fast.init_transposed_cache  # forward's cache layout
    with pytest.raises(ValueError, match="impl must be one of fast, reference, not 'turbo'"):
        fast.implementation("turbo")
