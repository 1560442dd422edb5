"""Faster, tested-equal rewrites of model.py's functions: every speed trick of the project, in one file.

model.py is the math as a reader expects it; this file is the same math arranged for the hardware, tested
equal to it, values and gradients (tests/test_fast.py). A function here that carries a model.py name keeps
that function's contract (arguments, result) and can replace it; one that arranges its arguments otherwise
(head-major keys, a flattened residual stream, a transposed cache) has a name of its own. The tools choose
with one switch, `--impl fast|reference` (default fast), through `implementation(name)`: a table of the
functions a tool calls.

What changes, and why (all measured; numbers in docs/PERFORMANCE.md):
  - Hand-written derivatives: `rms_norm`, `softmax` and `cross_entropy` keep less for the backward pass
    than autodiff of the formulas; `swiglu_down` recomputes its product instead of keeping it;
    `lm_head_cross_entropy` never holds more than one chunk of tokens' fp32 logits.
  - `dense`, every weight matmul, on a [N, I] activation (batch and time flattened): on a CPU its weight
    gradient transposes the narrower operand first, which XLA:CPU's fast GEMM then runs at full speed.
  - Training attention: cuDNN's flash attention on a GPU in 16-bit, JAX's Pallas splash kernel on a TPU,
    `blockwise_causal_attention` (query blocks that skip the masked keys) elsewhere.
  - Decoding: layers unrolled with per-layer weights and q|k|v, gate|up each fused into one matrix
    (`decoding_layout`), a cache array per layer, keys transposed ([B, G, K, S], `init_transposed_cache`),
    read in place; a prefill's lm_head only at the position sampled from (`last_logits`).
  - Sampling: `argmax` as two plain reductions, the decode loop compiled for 512-bit vectors on CPUs; the
    process: `reuse_host_memory` has glibc's malloc keep XLA:CPU's scratch instead of re-faulting it.

Shape suffixes are model.py's, plus N = B * T tokens and E = B * G (row, key/value head) pairs.
"""
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

import model
from model import Config


# ----------------------------------------------------------------------------- hand-written derivatives

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x_ND, gain_D, eps):
    """model.rms_norm, whose backward keeps x (in its own dtype) and r = 1 / sqrt(mean(x²) + eps), where
    autodiff kept two fp32 copies of x per norm:

        dx = r · (dx̂ - x̂ · mean(dx̂ · x̂)),  dx̂ = dy · gain,  x̂ = x · r;   dgain = Σ_N dy · x̂
    """
    return _rms_norm_fwd(x_ND, gain_D, eps)[0]


def _rms_norm_fwd(x_ND, gain_D, eps):
    x = x_ND.astype(jnp.float32)
    r_N1 = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (x * r_N1 * gain_D.astype(jnp.float32)).astype(x_ND.dtype), (x_ND, gain_D, r_N1)


def _rms_norm_bwd(eps, res, dy_ND):
    x_ND, gain_D, r_N1 = res
    xhat_ND, dy_ND = x_ND.astype(jnp.float32) * r_N1, dy_ND.astype(jnp.float32)
    dxhat_ND = dy_ND * gain_D.astype(jnp.float32)
    dx_ND = r_N1 * (dxhat_ND - xhat_ND * jnp.mean(dxhat_ND * xhat_ND, axis=-1, keepdims=True))
    dgain_D = jnp.sum(dy_ND * xhat_ND, axis=tuple(range(dy_ND.ndim - 1)))
    return dx_ND.astype(x_ND.dtype), dgain_D.astype(gain_D.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_jvp
def softmax(x):
    """model.softmax with its derivative written out, dy = y · (dx - sum(y · dx)): the rule reads only y,
    so the backward pass keeps one scores-sized array per layer (autodiff: three)."""
    return model.softmax(x)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    y, (dx,) = softmax(*primals), tangents
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


@jax.custom_vjp
def cross_entropy(logits_BTV, targets_BT):
    """model.cross_entropy with its backward written out, d/dlogits = (softmax(logits) - onehot(target)) · g:
    one elementwise pass (autodiff of take_along_axis scattered into a zeroed [B, T, V] array, then added it)."""
    return _cross_entropy_fwd(logits_BTV, targets_BT)[0]


def _cross_entropy_fwd(logits_BTV, targets_BT):
    logits = logits_BTV.astype(jnp.float32)
    logz_BT = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
    return logz_BT - target_logit_BT, (logits_BTV, logz_BT, targets_BT)


def _cross_entropy_bwd(res, g_BT):
    logits_BTV, logz_BT, targets_BT = res
    probs_BTV = jnp.exp(logits_BTV.astype(jnp.float32) - logz_BT[..., None])
    onehot_BTV = targets_BT[..., None] == jnp.arange(logits_BTV.shape[-1])
    return ((probs_BTV - onehot_BTV) * g_BT[..., None]).astype(logits_BTV.dtype), None  # targets: no gradient


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


LOSS_CHUNK = 2048  # tokens whose logits `loss` holds at once: 2048 x 49152 fp32 = 0.4 GB (8 x 1024 whole: 1.6)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _lm_head_cross_entropy(x_ND, w_DV, targets_N, chunk):
    return _lmce_fwd(x_ND, w_DV, targets_N, chunk)[0]


def lm_head_cross_entropy(x_ND, w_DV, targets_N, chunk=LOSS_CHUNK):
    """cross_entropy(x @ w, targets) per token, `chunk` tokens at a time (N is padded to a multiple of it):

        loss_n = logsumexp(z_n) - z_n[t_n],   z_n = x_n · w;   dz_n = g_n · (softmax(z_n) - onehot(t_n))

    The forward pass keeps x, w and each token's logsumexp; the backward pass recomputes each chunk's logits
    (a third more lm_head FLOPs) to form dx = dz · wᵀ and dw = Σ xᵀ · dz. So the [N, V] fp32 logits, their
    softmax and their gradient (~4.8 GB at 8 x 1024 tokens and the 49,152-token vocabulary) never exist.
    """
    N = x_ND.shape[0]
    pad = -N % chunk
    x_ND, targets_N = jnp.pad(x_ND, ((0, pad), (0, 0))), jnp.pad(targets_N, (0, pad))
    return _lm_head_cross_entropy(x_ND, w_DV, targets_N, chunk)[:N]  # padding's cotangent is zero


def _chunks(a, chunk):
    return a.reshape(-1, chunk, *a.shape[1:])


def _lmce_fwd(x_ND, w_DV, targets_N, chunk):
    def one_chunk(args):
        x_CD, targets_C = args
        logits_CV = jnp.matmul(x_CD, w_DV, preferred_element_type=jnp.float32)
        logz_C = jax.nn.logsumexp(logits_CV, axis=-1)
        return logz_C, logz_C - jnp.take_along_axis(logits_CV, targets_C[:, None], axis=-1)[:, 0]
    logz, loss = jax.lax.map(one_chunk, (_chunks(x_ND, chunk), _chunks(targets_N, chunk)))
    return loss.reshape(-1), (x_ND, w_DV, targets_N, logz.reshape(-1))


def _lmce_bwd(chunk, res, g_N):
    x_ND, w_DV, targets_N, logz_N = res

    def one_chunk(dw_DV, args):
        x_CD, targets_C, logz_C, g_C = args
        logits_CV = jnp.matmul(x_CD, w_DV, preferred_element_type=jnp.float32)
        onehot_CV = targets_C[:, None] == jnp.arange(w_DV.shape[1])
        dz_CV = ((jnp.exp(logits_CV - logz_C[:, None]) - onehot_CV) * g_C[:, None]).astype(x_CD.dtype)
        dx_CD = jnp.einsum("cv,dv->cd", dz_CV, w_DV).astype(x_CD.dtype)
        return dw_DV + jnp.matmul(x_CD.T, dz_CV, preferred_element_type=jnp.float32), dx_CD
    dw_DV, dx = jax.lax.scan(one_chunk, jnp.zeros(w_DV.shape, jnp.float32),
                             tuple(_chunks(a, chunk) for a in (x_ND, targets_N, logz_N, g_N.astype(jnp.float32))))
    return dx.reshape(x_ND.shape), dw_DV.astype(w_DV.dtype), None  # targets: no gradient


_lm_head_cross_entropy.defvjp(_lmce_fwd, _lmce_bwd)


# ----------------------------------------------------------------------------- matmuls

def dense(x_NI, w_IO, out_dtype=None):
    """x @ w, every weight matmul (`out_dtype`: the result's, default the inputs').

    Backward: dx = g·wᵀ, dw = xᵀ·g in the inputs' dtype. dw contracts N, the leading axis of both, a form
    XLA:CPU's fast GEMM (YNNPACK) leaves to Eigen at half the speed; so on a CPU the narrower of x and g is
    first transposed into an array of its own, behind barriers that keep XLA from folding it back in. The
    output is named "dense" for remat="dots" (a checkpoint policy cannot see inside a custom_vjp).
    """
    return checkpoint_name(_dense(x_NI, w_IO, out_dtype), "dense")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x_NI, w_IO, out_dtype):
    return jnp.matmul(x_NI, w_IO, preferred_element_type=out_dtype)


def _dense_fwd(x_NI, w_IO, out_dtype):
    return _dense(x_NI, w_IO, out_dtype), (x_NI, w_IO)


def _dense_bwd(out_dtype, res, g_NO):
    x_NI, w_IO = res
    g_NO = g_NO.astype(x_NI.dtype)  # the lm_head's fp32 cotangent: its two GEMMs run in the compute dtype
    dx_NI = jnp.einsum("no,io->ni", g_NO, w_IO).astype(x_NI.dtype)

    def dw_on_cpu(x_NI, g_NO):  # the narrower operand: XLA:CPU's transposes run at 0.3-1 GB/s
        barrier = jax.lax.optimization_barrier
        if x_NI.shape[1] <= g_NO.shape[1]:
            return jnp.matmul(barrier(x_NI.T), g_NO)
        return barrier(jnp.matmul(barrier(g_NO.T), x_NI)).T
    dw_IO = jax.lax.platform_dependent(x_NI, g_NO, cpu=dw_on_cpu, default=lambda x, g: jnp.matmul(x.T, g))
    return dx_NI, dw_IO.astype(w_IO.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


@jax.checkpoint
def swiglu_down(gate_NF, up_NF, w_down_FD):
    """dense(silu(gate) * up, w_down), rematerialised: the backward pass recomputes silu(gate) * up in one
    elementwise pass, so the forward keeps only gate and up (autodiff: four more [N, F])."""
    return dense(jax.nn.silu(gate_NF) * up_NF, w_down_FD)


_FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gate_up": ("w_gate", "w_up")}


def fuse_layer(w: dict) -> dict:
    """One layer's weights for decoding: wq, wk and wv side by side as "wqkv" [D, (H + 2G) K], w_gate and
    w_up as "w_gate_up" [D, 2 F], so that `project` multiplies each group in one matmul."""
    D = w["attn_norm"].shape[-1]
    fused = {name: jnp.concatenate([w[k].reshape(D, -1) for k in parts], axis=1) for name, parts in _FUSED.items()}
    return {**{k: v for k, v in w.items() if k not in sum(_FUSED.values(), ())}, **fused}


def project(h_ND, w, group, widths):
    """h times each matrix of a group ("wqkv" or "w_gate_up"), [N, width] each: one matmul where the decoding
    layout holds the group side by side, one per matrix in training (concatenated, the backward would keep it)."""
    if group in w:
        return jnp.split(dense(h_ND, w[group]), np.cumsum(widths)[:-1].tolist(), axis=1)
    return [dense(h_ND, w[name].reshape(h_ND.shape[1], -1)) for name in _FUSED[group]]


# ----------------------------------------------------------------------------- attention

def head_major_attention(q_BTHK, k_BGSK, v_BGSK, bias_BTS):
    """model.attention with keys and values head-major, [B, G, S, K], so that both products are batched
    GEMMs XLA:CPU runs in place, and the mask as an additive bias (0 or the most negative float), whose
    gradient needs no copy of the mask per layer."""
    (B, T, H, K), G = q_BTHK.shape, k_BGSK.shape[1]
    q_BGRTK = q_BTHK.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4)
    scores_BGRTS = jnp.einsum("bgrtk,bgsk->bgrts", q_BGRTK, k_BGSK, preferred_element_type=jnp.float32) / math.sqrt(K)
    probs_BGRTS = softmax(scores_BGRTS + bias_BTS[:, None, None]).astype(v_BGSK.dtype)
    out_BGRTK = jnp.einsum("bgrts,bgsk->bgrtk", probs_BGRTS, v_BGSK)
    return out_BGRTK.transpose(0, 3, 1, 2, 4).reshape(B, T, H, K)


ATTENTION_BLOCK = 128  # query block of `blockwise_causal_attention`: the fastest of 64/128/256 at T = 1024 on a CPU


def blockwise_causal_attention(q_BTHK, k_BGTK, v_BGTK, bias_BTT, block=ATTENTION_BLOCK):
    """`head_major_attention` over a whole sequence whose keys are its own positions (training, scoring), `block`
    queries at a time. Block [i, i + block) reads only keys [0, i + block), all later ones being masked:
    (n + 1) / 2n of the full square's work for n blocks, each block's scores in cache (flash attention's
    causal block skipping, without its online softmax). Padding queries get an average nothing reads."""
    T = q_BTHK.shape[1]
    if T <= block:
        return head_major_attention(q_BTHK, k_BGTK, v_BGTK, bias_BTT)
    return jnp.concatenate([head_major_attention(q_BTHK[:, i:i + block], k_BGTK[:, :, :i + block],
                                                 v_BGTK[:, :, :i + block], bias_BTT[:, i:i + block, :i + block])
                            for i in range(0, T, block)], axis=1)


def cudnn_causal_attention(q_BTHK, k_BTGK, v_BTGK):
    """Causal `jax.nn.dot_product_attention` with cuDNN's flash attention (a GPU, 16-bit inputs); XLA's
    composition elsewhere (how it is tested on a CPU). Training only: no padding mask."""
    on_gpu = training_attention(q_BTHK.dtype, q_BTHK.shape[1]) == "cudnn"
    return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, is_causal=True,
                                        implementation="cudnn" if on_gpu else "xla")


SPLASH_BLOCK = 512  # splash's query and key block (MaxText's default); a multiple of the TPU's 128 lanes


def splash_causal_attention(q_BTHK, k_BTGK, v_BTGK):
    """Causal attention with the Pallas "splash" kernel JAX ships for TPUs: flash attention (blocks of keys
    streamed with an online softmax, blocks above the diagonal skipped, no [T, T] scores; a backward kernel
    too). Elsewhere it runs in Pallas' interpret mode (slow, exact): how it is tested on a CPU. Training only
    (no padding mask). On a TPU, T must be a multiple of 128 and of min(SPLASH_BLOCK, T)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
    B, T, H, K = q_BTHK.shape
    b = min(SPLASH_BLOCK, T)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    causal = masks.MultiHeadMask([masks.CausalMask((T, T))] * H)
    # residual_checkpoint_name: remat="dots" keeps what the backward kernels start from (no forward rerun)
    kernel = splash.make_splash_mha(causal, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    residual_checkpoint_name="attention", interpret=jax.default_backend() != "tpu")
    # The kernel takes one sequence, heads first ([H, T, K] queries, [G, T, K] keys and values), unscaled: q is
    # scaled first, in fp32, rounded once to q's dtype (exact where sqrt(K) is a power of two; else as MaxText).
    q_BTHK = (q_BTHK.astype(jnp.float32) / math.sqrt(K)).astype(q_BTHK.dtype)
    out_BHTK = jax.vmap(kernel)(q_BTHK.swapaxes(1, 2), k_BTGK.swapaxes(1, 2), v_BTGK.swapaxes(1, 2))
    return out_BHTK.swapaxes(1, 2)


def training_attention(dtype, T: int) -> str:
    """Which attention trains here: "cudnn" (GPU, 16-bit), "splash" (TPU, T fits its blocks), else "blockwise"."""
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if jax.default_backend() == "tpu" and T % 128 == 0 and T % min(SPLASH_BLOCK, T) == 0:
        return "splash"
    return "blockwise"


# ----------------------------------------------------------------------------- the network

def flat_layer(x_ND, w, cos_sin, bias_BTS, config, kv=None, slot_B=0, fresh=False):
    """model.layer on the flattened residual stream x_ND, so that every weight matmul is 2-D and its gradient
    contracts one axis (XLA:CPU copied a transposed activation to contract two). With `kv`, this layer's cache,
    the new keys and values are written (`_write_cache`) and attention reads the cache, unless it is `fresh`."""
    B, T = bias_BTS.shape[:2]
    H, G, K = config.n_heads, config.n_kv_heads, config.head_dim
    h_ND = rms_norm(x_ND, w["attn_norm"], config.rms_norm_eps)
    q, k, v = project(h_ND, w, "wqkv", [H * K, G * K, G * K])
    q_BTHK = model.rope(q.reshape(B, T, H, K), cos_sin)
    k_BTGK = model.rope(k.reshape(B, T, G, K), cos_sin)
    v_BTGK = v.reshape(B, T, G, K)
    if kv is not None:
        kv = _write_cache(kv, k_BTGK, v_BTGK, slot_B, fresh)
    # A prefill into a fresh cache reads its own keys, blockwise with the padding mask (cuDNN, splash take none)
    path = training_attention(q_BTHK.dtype, T) if kv is None else "blockwise" if fresh else "cache"
    if path in ("cudnn", "splash"):
        a_BTHK = (cudnn_causal_attention if path == "cudnn" else splash_causal_attention)(q_BTHK, k_BTGK, v_BTGK)
    elif path == "blockwise":
        # Keys head-major, not [.., K, T]: the blocks' key gradients are then summed where they are made.
        a_BTHK = blockwise_causal_attention(q_BTHK, k_BTGK.swapaxes(1, 2), v_BTGK.swapaxes(1, 2), bias_BTS[..., :T])
    else:
        a_BTHK = head_major_attention(q_BTHK, kv[0].swapaxes(2, 3), kv[1], bias_BTS)
    x_ND = x_ND + dense(a_BTHK.reshape(B * T, H * K), w["wo"].reshape(H * K, -1))

    h_ND = rms_norm(x_ND, w["mlp_norm"], config.rms_norm_eps)
    gate_NF, up_NF = project(h_ND, w, "w_gate_up", [config.d_ff] * 2)
    x_ND = x_ND + swiglu_down(gate_NF, up_NF, w["w_down"])
    return x_ND, kv


def _write_cache(kv, k_BTGK, v_BTGK, slot_B, fresh):
    """One layer's cache (keys [B, G, K, S], values [B, G, S, K]) with row b's new keys and values at slots
    slot_B[b]..+T (`fresh`: from slot 0 of an empty cache): only those slots, in place, into the [B·G, ..] arrays
    the attention's products read (written [B, G, ..], the update ran twice, on two copies of the cache)."""
    (B, G, K, S), T = kv[0].shape, k_BTGK.shape[1]
    kT_EKS, v_ESK = kv[0].reshape(B * G, K, S), kv[1].reshape(B * G, S, K)
    k_ETK, v_ETK = (a.swapaxes(1, 2).reshape(B * G, T, K).astype(kT_EKS.dtype) for a in (k_BTGK, v_BTGK))
    if fresh:
        kT_EKS = jax.lax.dynamic_update_slice(kT_EKS, k_ETK.swapaxes(1, 2), (0, 0, 0))
        v_ESK = jax.lax.dynamic_update_slice(v_ESK, v_ETK, (0, 0, 0))
    else:  # a scatter, in place (a vmapped dynamic_update_slice copied the cache)
        e_E1, slot_ET = jnp.arange(B * G)[:, None], jnp.repeat(slot_B, G)[:, None] + jnp.arange(T)
        kT_EKS = kT_EKS.at[e_E1, :, slot_ET].set(k_ETK)
        v_ESK = v_ESK.at[e_E1, slot_ET, :].set(v_ETK)
    return kT_EKS.reshape(B, G, K, S), v_ESK.reshape(B, G, S, K)


_REMAT_POLICIES = {
    "full": None,
    # the weight matmuls' outputs and what splash's backward starts from (on a TPU; a name nothing else uses)
    "dots": jax.checkpoint_policies.save_only_these_names("dense", "attention"),
}


def forward(params, tokens_BT, config: Config, cache=None, gather=None):
    """model.forward's signature and result, except that a cache comes from this file's `init_transposed_cache`,
    not model.init_cache (`implementation` pairs the two), and is returned in that layout. `params` may also
    be `decoding_layout(params)`: the layers then run unrolled, each reading its own (fused) arrays."""
    B, T = tokens_BT.shape
    x_ND, w_head_DV, cache = _trunk(params, tokens_BT, config, cache, gather)
    logits_BTV = dense(x_ND, w_head_DV, jnp.float32).reshape(B, T, -1)
    return logits_BTV if cache is None else (logits_BTV, cache)


def last_logits(params, tokens_BT, config: Config, cache):
    """`forward` into a fresh cache (every row from slot 0), its logits [B, V] at the last position only:
    all a prefill samples from. It attends over its own keys, not the cache's empty slots."""
    B, T = tokens_BT.shape
    x_ND, w_head_DV, cache = _trunk(params, tokens_BT, config, cache, None, fresh=True)
    return dense(x_ND.reshape(B, T, -1)[:, -1], w_head_DV, jnp.float32), cache


def loss(params, tokens_BT, targets_BT, config: Config, gather=None, chunk=None):
    """Per-token loss [B, T], model.cross_entropy(model.forward(...), targets): beyond `chunk` tokens (default
    LOSS_CHUNK) through `lm_head_cross_entropy`, so the [N, V] fp32 logits never exist at once."""
    (B, T), chunk = tokens_BT.shape, chunk or LOSS_CHUNK
    x_ND, w_head_DV, _ = _trunk(params, tokens_BT, config, None, gather)
    if B * T <= chunk:  # one chunk's logits are the whole: keep them (the backward pass needs no recompute)
        return cross_entropy(dense(x_ND, w_head_DV, jnp.float32), targets_BT.reshape(-1)).reshape(B, T)
    return lm_head_cross_entropy(x_ND, w_head_DV, targets_BT.reshape(-1), chunk).reshape(B, T)


def _trunk(params, tokens_BT, config, cache, gather, fresh=False):
    """`forward` before the lm_head: (final-normed x_ND, the lm_head in the compute dtype, the cache or None)."""
    B, T = tokens_BT.shape
    gather = gather or (lambda w: w)
    w = jax.tree.map(lambda p: p.astype(config.dtype), params)
    w = {**gather({k: v for k, v in w.items() if k != "layers"}), "layers": w["layers"]}
    x_ND = w["embed"][tokens_BT.reshape(B * T)]

    slot_B, start_B, S = ((jnp.zeros((B,), jnp.int32),) * 2 + (T,) if cache is None
                          else (cache["index"], cache["start"], cache["v"][0].shape[2]))
    mask_BTS, cos_sin = model.attention_mask_and_angles(slot_B, start_B, T, S, config)
    bias_BTS = jnp.where(mask_BTS, 0.0, jnp.finfo(jnp.float32).min)  # `head_major_attention` adds it

    layers, L = w["layers"], config.n_layers
    if cache is None and not isinstance(layers, list):  # training, scoring: one layer, scanned
        def body(x_ND, w_layer):
            return flat_layer(x_ND, gather(w_layer), cos_sin, bias_BTS, config)[0], None
        if config.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[config.remat])
        x_ND, _ = jax.lax.scan(body, x_ND, layers)
    else:  # decoding: unrolled, each layer its own weights and cache arrays (XLA:CPU copied a slice of a
        # stacked weight inside scan, or one layer of a stacked cache, every token)
        layers = layers if isinstance(layers, list) else decoding_layout(w)["layers"]
        kv_L = [None] * L if cache is None else list(zip(cache["k"], cache["v"]))
        for l, w_layer in enumerate(layers):
            x_ND, kv_L[l] = flat_layer(x_ND, gather(w_layer), cos_sin, bias_BTS, config, kv_L[l], slot_B, fresh)
        if cache is not None:
            cache = dict(zip("kv", map(tuple, zip(*kv_L))), index=slot_B + T, start=start_B)

    x_ND = rms_norm(x_ND, w["final_norm"], config.rms_norm_eps)
    return x_ND, w["lm_head"], cache


def decoding_layout(params: dict) -> dict:
    """Params with "layers" as a list of per-layer dicts, each fused (`fuse_layer`), for decoding."""
    return {**params, "layers": [fuse_layer(jax.tree.map(lambda a: a[l], params["layers"]))
                                 for l in range(len(params["layers"]["wq"]))]}


def init_transposed_cache(config: Config, batch: int, length: int, start_B=None) -> dict:
    """model.init_cache's empty cache as the tuples of L arrays `forward` reads (`_trunk` says why), keys
    [B, G, K, S] (a transposed view: `flat_layer`) and values [B, G, S, K], where model.py has [L, B, S, G, K]."""
    G, K, dtype = config.n_kv_heads, config.head_dim, jnp.dtype(config.dtype)
    k = tuple(jnp.zeros((batch, G, K, length), dtype) for _ in range(config.n_layers))  # distinct buffers:
    v = tuple(jnp.zeros((batch, G, length, K), dtype) for _ in range(config.n_layers))  # aliased ones can't be donated
    start = jnp.zeros((batch,), jnp.int32) if start_B is None else jnp.asarray(start_B, jnp.int32)
    return {"k": k, "v": v, "index": jnp.zeros((batch,), jnp.int32), "start": start}


# ----------------------------------------------------------------------------- sampling

def argmax(x_BV):
    """jnp.argmax over the last axis (the first maximum; the first NaN if any) as two plain reductions, the max
    and the least index holding it: both vectorise, where XLA:CPU runs argmax's (value, index) reduce one element
    at a time (40 us over the tiny model's 8,192 logits, 7% of a batch-1 token)."""
    V = x_BV.shape[-1]
    nan_BV = jnp.isnan(x_BV)
    hit_BV = jnp.where(nan_BV.any(-1, keepdims=True), nan_BV, x_BV == jnp.max(x_BV, axis=-1, keepdims=True))
    return jnp.min(jnp.where(hit_BV, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def decode_compiler_options() -> dict | None:
    """The decode loop's XLA options: on a CPU, vectorise 512 bits wide (XLA:CPU's own loops, a third of a
    small batch-1 token, default to 256 even with AVX-512; without 512-bit registers nothing changes)."""
    return {"xla_cpu_prefer_vector_width": 512} if jax.default_backend() == "cpu" else None


# ----------------------------------------------------------------------------- the process

def reuse_host_memory() -> bool:
    """Have glibc's malloc reuse freed memory: one arena, no mmap, no trimming. Call before jax starts.

    XLA:CPU mallocs each run's scratch from a worker thread, whose arena hands anything that large to a fresh
    mmap: every step paid a page fault per 4 KB of first touch. On the main arena with mmap off the freed
    scratch is reused (resident memory never shrinks). Trimming is off (-1): any finite threshold (< 2 GiB)
    is below the 303M step's 3.76 GiB scratch. Returns False, doing nothing, without mallopt (macOS, Windows).
    """
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
    return all([mallopt(M_ARENA_MAX, 1) == 1, mallopt(M_MMAP_MAX, 0) == 1, mallopt(M_TRIM_THRESHOLD, -1) == 1])


# ----------------------------------------------------------------------------- the switch

class Implementation(NamedTuple):
    """The functions the tools call, from model.py or from this file."""
    forward: Callable            # (params, tokens_BT, config, cache=None, gather=None) -> logits[, cache]
    loss: Callable               # (params, tokens_BT, targets_BT, config, gather=None) -> per-token loss
    last_logits: Callable        # (params, tokens_BT, config, fresh cache) -> (logits_BV at the last position, cache)
    init_cache: Callable         # (config, batch, length, start_B=None) -> cache: "k", "v", "index" [B], "start" [B]
    decoding_layout: Callable    # params -> the params `forward` reads fastest when decoding
    argmax: Callable             # x_BV -> index of the first maximum per row
    decode_compiler_options: Callable  # () -> XLA options of the decode loop, or None


IMPLEMENTATIONS = ("fast", "reference")


def _reference_loss(params, tokens_BT, targets_BT, config, gather=None):
    return model.cross_entropy(model.forward(params, tokens_BT, config, gather=gather), targets_BT)


def _reference_last_logits(params, tokens_BT, config, cache):
    return (lambda logits_BTV, cache: (logits_BTV[:, -1], cache))(*model.forward(params, tokens_BT, config, cache))


def implementation(name: str) -> Implementation:
    """"reference": model.py as written; "fast": this file's rewrites."""
    if name == "reference":
        return Implementation(model.forward, _reference_loss, _reference_last_logits, model.init_cache,
                              lambda params: params, lambda x_BV: jnp.argmax(x_BV, axis=-1), lambda: None)
    if name == "fast":
        return Implementation(forward, loss, last_logits, init_transposed_cache, decoding_layout, argmax,
                              decode_compiler_options)
    raise ValueError(f"impl must be one of {', '.join(IMPLEMENTATIONS)}, not {name!r}")
