"""SmallCoder: a Llama-architecture decoder in pure JAX.

The parameters are a plain pytree (nested dicts of arrays). Layer weights are stacked on a leading
L axis and run with `jax.lax.scan`, so compile time does not grow with depth and a checkpoint is a
handful of arrays. One layer function serves both training (whole sequences) and decoding (a KV
cache, prefill then one token at a time): there is exactly one attention implementation.

Shape suffixes: B batch, T query positions, S key positions, N = B * T tokens, D model width,
H query heads, G key/value heads, R = H // G query heads per KV head, K head dim, F ffn width,
V vocab, L layers.

Run `python model.py [--config tiny]` to print a config, its parameter count and training FLOPs.
"""
import argparse
import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name


@dataclass(frozen=True)
class Config:
    """Architecture (the defaults are SmallCoder-303M) plus compute knobs (dtype, remat, attention)."""
    vocab_size: int = 49152
    d_model: int = 768
    n_layers: int = 24
    n_heads: int = 8
    n_kv_heads: int = 8          # < n_heads is grouped-query attention; must divide n_heads
    d_ff: int = 3072             # SwiGLU hidden width
    max_seq_len: int = 1024
    rope_theta: float = 10000.0  # the card shows no value: LlamaConfig's default [check on the hub]
    rms_norm_eps: float = 1e-6   # likewise LlamaConfig's default
    dtype: str = "float32"       # compute dtype of matmuls; "bfloat16" on accelerators
    remat: str = "none"          # "none" | "full" | "dots" (save matmul outputs, recompute the rest)
    attention: str = "reference"  # "fused": jax.nn.dot_product_attention (cuDNN flash attention on GPU)
                                  # for whole-sequence training; decoding always uses `attention` below

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.attention not in ("reference", "fused"):
            raise ValueError(f"attention must be reference or fused, not {self.attention!r}")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"remat must be none, full or dots, not {self.remat!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


CONFIGS = {
    "smallcoder": Config(),
    # The offline demo and test model: the stdlib BPE tokenizer has 8192 tokens.
    "tiny": Config(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=768,
                   max_seq_len=512),
}


# ----------------------------------------------------------------------------- parameters

def init(config: Config, key: jax.Array) -> dict:
    """Random fp32 parameters.

    Matrices ~ N(0, 0.02²) (GPT-2/Llama practice). The two projections that write into the
    residual stream (attention output, MLP down) are scaled by 1/sqrt(2L) so the residual's
    variance does not grow with depth. lm_head uses std 0.01 so the initial logits are small:
    loss on random tokens starts within a few hundredths of ln(vocab). Norm gains are ones.
    """
    c = config
    L, D, H, G, K, F, V = c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size
    std, resid_std = 0.02, 0.02 / math.sqrt(2 * L)
    shapes = {
        "wq": ((L, D, H, K), std), "wk": ((L, D, G, K), std), "wv": ((L, D, G, K), std),
        "wo": ((L, H, K, D), resid_std),
        "w_gate": ((L, D, F), std), "w_up": ((L, D, F), std), "w_down": ((L, F, D), resid_std),
    }
    keys = jax.random.split(key, len(shapes) + 2)
    layers = {name: s * jax.random.normal(k, shape, jnp.float32)
              for k, (name, (shape, s)) in zip(keys, shapes.items())}
    layers["attn_norm"] = jnp.ones((L, D), jnp.float32)
    layers["mlp_norm"] = jnp.ones((L, D), jnp.float32)
    return {
        "embed": std * jax.random.normal(keys[-2], (V, D), jnp.float32),
        "layers": layers,
        "final_norm": jnp.ones((D,), jnp.float32),
        "lm_head": 0.01 * jax.random.normal(keys[-1], (D, V), jnp.float32),
    }


def param_count(config: Config) -> int:
    """Exact number of parameters (untied embeddings)."""
    shapes = jax.eval_shape(lambda: init(config, jax.random.key(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def flops_per_token(config: Config, seq_len: int | None = None) -> int:
    """Training FLOPs per token, PaLM's convention (appendix B):

        6 * N_matmul + 12 * L * T * D

    N_matmul counts the weights of every matmul (attention, MLP and lm_head; not the embedding
    lookup, not norm gains): 2 FLOPs per weight forward, 4 backward. The second term is attention's
    QK^T and AV products (the full T x T square: causal masking is not credited).
    """
    c = config
    T = seq_len or c.max_seq_len
    attn = c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.d_model
    mlp = 3 * c.d_model * c.d_ff
    n_matmul = c.n_layers * (attn + mlp) + c.d_model * c.vocab_size
    return 6 * n_matmul + 12 * c.n_layers * T * c.d_model


# ----------------------------------------------------------------------------- the network

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x_ND, gain_D, eps):
    """RMSNorm: y = x̂ · gain, x̂ = x · r, r = 1 / sqrt(mean(x²) + eps), computed in fp32.

    Backward written out, dx = r · (dx̂ - x̂ · mean(dx̂ · x̂)) with dx̂ = dy · gain, dgain = Σ_N dy · x̂: it
    keeps x (in its own dtype) and r, where autodiff kept two fp32 [N, D] arrays per norm.
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


def rope_angles(pos_BT, K, theta):
    """cos and sin of the rotary angles, each [B, T, 1, K]: computed once per forward, read by every layer.

    Pair i of the K/2 frequencies θ_i = theta^(-2i/K) is dims (i, i + K/2), Hugging Face's split-half
    layout (so no permutation at export), and rotates by pos·θ_i. Angles are fp32: bf16 positions near
    1024 would be off by whole radians.
    """
    inv_freq = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angle_BTK = jnp.concatenate([pos_BT.astype(jnp.float32)[..., None] * inv_freq] * 2, -1)
    return jnp.cos(angle_BTK)[:, :, None, :], jnp.sin(angle_BTK)[:, :, None, :]


def rope(x_BTNK, cos_sin):
    """Rotary embedding: x' = x * cos + rotate_half(x) * sin,   rotate_half([a, b]) = [-b, a]."""
    cos, sin = cos_sin
    x = x_BTNK.astype(jnp.float32)
    a, b = jnp.split(x, 2, axis=-1)
    return (x * cos + jnp.concatenate([-b, a], -1) * sin).astype(x_BTNK.dtype)


@jax.custom_jvp
def softmax(x):
    """softmax over the last axis, with its derivative written out: dy = y * (dx - sum(y * dx)).

    The rule reads only y, so the backward pass keeps one scores-sized array per layer (autodiff: three).
    """
    e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    y, (dx,) = softmax(*primals), tangents
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


def dense(x_NI, w_IO, out_dtype=None):
    """x @ w, every weight matmul of the model (`out_dtype`: the result's, default the inputs').

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


def attention(q_BTHK, k_BGSK, v_BGSK, bias_BTS):
    """softmax(q·kᵀ/sqrt(K) + bias) v with grouped-query heads: query head h reads KV head h // R.

    bias_BTS is 0 where query t may read key s and the most negative float where it may not (the causal
    mask, left padding): an addition, whose gradient needs no copy of the mask per layer. Keys and values
    come head-major, [B, G, S, K], so that both products are batched GEMMs XLA:CPU runs in place.
    """
    B, T, H, K = q_BTHK.shape
    G = k_BGSK.shape[1]
    q_BGRTK = q_BTHK.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4)
    scores_BGRTS = jnp.einsum("bgrtk,bgsk->bgrts", q_BGRTK, k_BGSK,
                              preferred_element_type=jnp.float32) / math.sqrt(K)
    probs_BGRTS = softmax(scores_BGRTS + bias_BTS[:, None, None]).astype(v_BGSK.dtype)
    out_BGRTK = jnp.einsum("bgrts,bgsk->bgrtk", probs_BGRTS, v_BGSK)
    return out_BGRTK.transpose(0, 3, 1, 2, 4).reshape(B, T, H, K)


def fused_attention(q_BTHK, k_BTGK, v_BTGK):
    """Causal `jax.nn.dot_product_attention`: cuDNN's flash attention on a GPU in 16-bit, XLA's composition
    elsewhere. (Left to choose, jax picks XLA's everywhere: the full square of fp32 scores, no flash.)"""
    cudnn = jax.default_backend() == "gpu" and q_BTHK.dtype in (jnp.bfloat16, jnp.float16)
    return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, is_causal=True,
                                        implementation="cudnn" if cudnn else "xla")


ATTENTION_BLOCK = 128  # query block of `causal_attention`: the fastest of 64/128/256 at T = 1024 on a CPU


def causal_attention(q_BTHK, k_BGTK, v_BGTK, bias_BTT, block=ATTENTION_BLOCK):
    """`attention` over a whole sequence whose keys are its own positions (training, scoring), `block`
    queries at a time. Block [i, i + block) reads only keys [0, i + block), all later ones being masked:
    (n + 1) / 2n of the full square's work for n blocks, each block's scores in cache (flash attention's
    causal block skipping, without its online softmax). Padding queries, with no key to read, get an
    arbitrary average, as in the full square; nothing reads them.
    """
    T = q_BTHK.shape[1]
    if T <= block:
        return attention(q_BTHK, k_BGTK, v_BGTK, bias_BTT)
    return jnp.concatenate([attention(q_BTHK[:, i:i + block], k_BGTK[:, :, :i + block], v_BGTK[:, :, :i + block],
                                      bias_BTT[:, i:i + block, :i + block]) for i in range(0, T, block)], axis=1)


def layer(x_ND, w, cos_sin, bias_BTS, config, kv=None, index=0, l=0):
    """One pre-norm block: x += attn(norm(x)); x += swiglu(norm(x)).

    With `kv` (the whole stacked cache: keys [L, B, G, K, S], values [L, B, G, S, K]) the new keys
    and values are written at layer `l`, slot `index`, and attention reads all of layer l's slots;
    without it, attention reads this call's keys. Returns the new x and the updated cache (None
    without one). The residual stream is x_ND, batch and time flattened, so that every weight matmul is
    2-D and its gradient contracts one axis (XLA:CPU copied a transposed activation to contract two).
    """
    B, T = bias_BTS.shape[:2]
    H, G, K = config.n_heads, config.n_kv_heads, config.head_dim
    h_ND = rms_norm(x_ND, w["attn_norm"], config.rms_norm_eps)
    q, k, v = project(h_ND, w, "wqkv", [H * K, G * K, G * K])
    q_BTHK = rope(q.reshape(B, T, H, K), cos_sin)
    k_BTGK = rope(k.reshape(B, T, G, K), cos_sin)
    v_BTGK = v.reshape(B, T, G, K)
    if kv is None and config.attention == "fused":  # optional fast kernel, same math (tested equal)
        a_BTHK = fused_attention(q_BTHK, k_BTGK, v_BTGK)
    elif kv is None:
        # Keys head-major, not [.., K, T]: the blocks' key gradients are then summed where they are made.
        a_BTHK = causal_attention(q_BTHK, k_BTGK.swapaxes(1, 2), v_BTGK.swapaxes(1, 2), bias_BTS)
    else:
        # Write just the new slots into the stacked cache, a loop carry that XLA updates in place, then read
        # layer l. Keys are stored [.., K, S] and read as a transposed view that XLA folds into the scores'
        # product (stored [.., S, K], they were transposed every token).
        kT_LBGKS, v_LBGSK = kv
        kT_1BGKT = k_BTGK.transpose(0, 2, 3, 1)[None].astype(kT_LBGKS.dtype)
        v_1BGTK = v_BTGK.swapaxes(1, 2)[None].astype(v_LBGSK.dtype)
        kT_LBGKS = jax.lax.dynamic_update_slice(kT_LBGKS, kT_1BGKT, (l, 0, 0, 0, index))
        v_LBGSK = jax.lax.dynamic_update_slice(v_LBGSK, v_1BGTK, (l, 0, 0, index, 0))
        kv = (kT_LBGKS, v_LBGSK)
        a_BTHK = attention(q_BTHK, kT_LBGKS[l].swapaxes(2, 3), v_LBGSK[l], bias_BTS)
    x_ND = x_ND + dense(a_BTHK.reshape(B * T, H * K), w["wo"].reshape(H * K, -1))

    # SwiGLU: down(silu(gate(h)) * up(h))
    h_ND = rms_norm(x_ND, w["mlp_norm"], config.rms_norm_eps)
    gate_NF, up_NF = project(h_ND, w, "w_gate_up", [config.d_ff] * 2)
    x_ND = x_ND + swiglu_down(gate_NF, up_NF, w["w_down"])
    return x_ND, kv


_FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gate_up": ("w_gate", "w_up")}


def fuse_projections(w: dict) -> dict:
    """One layer's weights for decoding: wq, wk and wv side by side as "wqkv" [D, (H + 2G) K], w_gate and
    w_up as "w_gate_up" [D, 2 F], so that `project` multiplies each group in one matmul."""
    D = w["attn_norm"].shape[-1]
    fused = {name: jnp.concatenate([w[k].reshape(D, -1) for k in parts], axis=1) for name, parts in _FUSED.items()}
    return {**{k: v for k, v in w.items() if k not in sum(_FUSED.values(), ())}, **fused}


def project(h_ND, w, group, widths):
    """h times each matrix of a group ("wqkv" or "w_gate_up"), [N, width] each: one matmul where the decoding
    layout holds the group side by side, one per matrix in training (concatenated inside the layer scan, each
    group would be a new array that the backward pass keeps)."""
    if group in w:
        return jnp.split(dense(h_ND, w[group]), np.cumsum(widths)[:-1].tolist(), axis=1)
    return [dense(h_ND, w[name].reshape(h_ND.shape[1], -1)) for name in _FUSED[group]]


@jax.checkpoint
def swiglu_down(gate_NF, up_NF, w_down_FD):
    """dense(silu(gate) * up, w_down), silu(g) = g σ(g), rematerialised: the backward pass recomputes
    silu(gate) * up in one elementwise pass, so the forward keeps only gate and up (autodiff: four more [N, F])."""
    return dense(jax.nn.silu(gate_NF) * up_NF, w_down_FD)


_REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer: recompute it all in the backward pass
    "dots": jax.checkpoint_policies.save_only_these_names("dense"),  # the weight matmuls' outputs
}


def forward(params, tokens_BT, config: Config, cache=None, gather=None):
    """Logits (fp32) for every position of `tokens_BT`.

    Without `cache`: a causal forward over the whole sequence (training, scoring).
    With `cache` (from `init_cache`): the tokens are written at slots cache["index"]..+T, they attend
    to every earlier valid slot, and the updated cache is returned too: `(logits_BTV, cache)`.
    Rows of a batch may be left-padded: slots before cache["start"][b] are never attended to and
    positions count from the first real token, exactly like Hugging Face with an attention mask.
    `gather` (FSDP, see train.py) maps a dict of weight shards to the full weights; it is applied to
    the non-layer weights up front and to each layer's weights inside the scan, just in time.
    """
    dtype = jnp.dtype(config.dtype)
    B, T = tokens_BT.shape
    gather = gather or (lambda w: w)
    w = jax.tree.map(lambda p: p.astype(dtype), params)
    w = {**gather({k: v for k, v in w.items() if k != "layers"}), "layers": w["layers"]}
    x_ND = w["embed"][tokens_BT.reshape(B * T)]

    if cache is None:
        index, start_B, S = 0, jnp.zeros((B,), jnp.int32), T
    else:
        index, start_B, S = cache["index"], cache["start"], cache["v"].shape[3]
    slot_T = index + jnp.arange(T)
    pos_BT = slot_T[None, :] - start_B[:, None]
    slot_S = jnp.arange(S)
    mask_BTS = (slot_S[None, None, :] <= slot_T[None, :, None]) & (slot_S[None, None, :] >= start_B[:, None, None])
    bias_BTS = jnp.where(mask_BTS, 0.0, jnp.finfo(jnp.float32).min)
    cos_sin = rope_angles(pos_BT, config.head_dim, config.rope_theta)

    def body(carry, xs):
        x_ND, kv = carry
        w_layer, l = xs
        return layer(x_ND, gather(w_layer), cos_sin, bias_BTS, config, kv, index, l), None

    if config.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[config.remat])
    kv = None if cache is None else (cache["k"], cache["v"])
    if isinstance(w["layers"], list):
        # Per-layer weights (see `decoding_layout`): a Python loop, so each layer reads its own arrays.
        for l, w_layer in enumerate(w["layers"]):
            (x_ND, kv), _ = body((x_ND, kv), (w_layer, l))
    else:
        (x_ND, kv), _ = jax.lax.scan(body, (x_ND, kv), (w["layers"], jnp.arange(config.n_layers)))

    x_ND = rms_norm(x_ND, w["final_norm"], config.rms_norm_eps)
    logits_NV = dense(x_ND, w["lm_head"], jnp.float32)
    logits_BTV = logits_NV.reshape(B, T, -1)
    if cache is None:
        return logits_BTV
    return logits_BTV, {"k": kv[0], "v": kv[1], "index": index + T, "start": start_B}


def decoding_layout(params: dict) -> dict:
    """Params with "layers" as a list of per-layer dicts, each fused (`fuse_projections`), for decoding:
    forward then unrolls the layers (slicing a stacked weight inside scan made XLA:CPU copy it every token)."""
    L = len(params["layers"]["wq"])
    return {**params, "layers": [fuse_projections(jax.tree.map(lambda a: a[l], params["layers"])) for l in range(L)]}


def init_cache(config: Config, batch: int, length: int, start_B=None) -> dict:
    """An empty KV cache of `length` slots; `start_B` = left-padding per row (default none). Keys are stored
    [L, B, G, K, S] (read as a transposed view: see `layer`), values [L, B, G, S, K]."""
    L, G, K, dtype = config.n_layers, config.n_kv_heads, config.head_dim, jnp.dtype(config.dtype)
    k = jnp.zeros((L, batch, G, K, length), dtype)
    v = jnp.zeros((L, batch, G, length, K), dtype)  # a distinct buffer: aliased k and v cannot be donated
    start = jnp.zeros((batch,), jnp.int32) if start_B is None else jnp.asarray(start_B, jnp.int32)
    return {"k": k, "v": v, "index": jnp.array(0, jnp.int32), "start": start}


@jax.custom_vjp
def cross_entropy(logits_BTV, targets_BT):
    """Per-token -log softmax(logits)[target] = logsumexp(logits) - logits[target], in fp32.

    Backward written out, d/dlogits = (softmax(logits) - onehot(target)) · g: one elementwise pass over
    the logits (autodiff of take_along_axis scattered into a zeroed [B, T, V] array, then added it).
    """
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


# ----------------------------------------------------------------------------- checkpoint I/O

class CheckpointError(ValueError):
    """A path that is not a usable model checkpoint directory."""


CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


def flatten(params: dict) -> dict:
    """{"layers": {"wq": a}} -> {"layers.wq": a}."""
    return {".".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(params)}


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for name, v in flat.items():
        *parents, leaf = name.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def save(path: str, params: dict, config: Config) -> None:
    """Write config.json and model.safetensors (fp32) into directory `path`; each file atomically."""
    from safetensors.numpy import save_file
    os.makedirs(path, exist_ok=True)
    flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flatten(params).items()}
    _atomic_write(os.path.join(path, WEIGHTS_FILE), lambda p: save_file(flat, p))
    text = json.dumps(dataclasses.asdict(config), indent=2)
    _atomic_write(os.path.join(path, CONFIG_FILE), lambda p: Path(p).write_text(text))


def load_config(path: str) -> Config:
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise CheckpointError(f"{path} is not a smallcoder checkpoint directory (no {CONFIG_FILE})")
    with open(file) as f:
        d = json.load(f)
    if "model_type" in d or "architectures" in d:
        raise CheckpointError(f"{path} is a Hugging Face checkpoint: import it with "
                              f"`python convert.py --from-hf {path} --out DIR`")
    unknown = set(d) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise CheckpointError(f"{file} has unknown keys: {sorted(unknown)}")
    return Config(**d)


def load(path: str) -> tuple[dict, Config]:
    """Read a checkpoint directory written by `save`: (fp32 params as numpy arrays, config)."""
    from safetensors.numpy import load_file
    config = load_config(path)
    file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(file):
        raise CheckpointError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    params = unflatten(load_file(file))
    expected = jax.eval_shape(lambda: init(config, jax.random.key(0)))
    got = jax.tree.map(lambda a: a.shape, params)
    want = jax.tree.map(lambda a: a.shape, expected)
    if got != want:
        raise CheckpointError(f"{file} does not match {CONFIG_FILE}: shapes {got} != {want}")
    return params, config


# ----------------------------------------------------------------------------- host memory

def reuse_host_memory() -> bool:
    """Have glibc's malloc reuse freed memory: one arena, no mmap, no trimming. Call before jax starts.

    XLA:CPU mallocs each run's scratch from a worker thread, whose arena hands anything that large to a
    fresh mmap: every step paid a page fault per 4 KB of first touch. On the main arena with mmap off the
    freed scratch is reused (the price: resident memory never shrinks). Trimming is off entirely (-1), not
    just raised: any finite threshold (an int, so < 2 GiB) is below the 303M step's 3.76 GiB scratch, which
    was then returned to the kernel and faulted back in every step. Returns False, doing nothing, where
    the C library has no mallopt (macOS, Windows).
    """
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
    return all([mallopt(M_ARENA_MAX, 1) == 1, mallopt(M_MMAP_MAX, 0) == 1, mallopt(M_TRIM_THRESHOLD, -1) == 1])


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description="Print a SmallCoder config, its parameter count and FLOPs.")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="smallcoder")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    for field in dataclasses.fields(config):
        print(f"{field.name:>14} = {getattr(config, field.name)}")
    print(f"{'parameters':>14} = {param_count(config):,}")
    print(f"{'train FLOPs':>14} = {flops_per_token(config):,} per token at seq_len {config.max_seq_len} "
          f"(6 N_matmul + 12 L T D)")


if __name__ == "__main__":
    main()
