"""SmallCoder: a Llama-architecture decoder in pure JAX, written as its formulas.

The parameters are a plain pytree (nested dicts of arrays). Layer weights are stacked on a leading L axis
and run with `jax.lax.scan`, so compile time does not grow with depth and a checkpoint is a handful of
arrays. One layer function serves both training (whole sequences) and decoding (a KV cache, prefill then
one token at a time), and one `attention` function with a mask serves both. Derivatives come from autodiff.

This file is the reference: read it to learn the model. `fast.py` holds rewrites of some of its functions
that run faster on particular hardware; each is tested equal to the function here, and the tools pick one
or the other with a single switch (`--impl`).

Shape suffixes: B batch, T query positions, S key positions (cache slots), D model width, H query heads,
G key/value heads, R = H // G query heads per KV head, K head dim, F ffn width, V vocab, L layers
(elsewhere: N = B * T tokens in fast.py, M new tokens in sample.py, A micro-batches in train.py).

Run `python model.py [--model tiny]` to print a config, its parameter count and training FLOPs.
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Config:
    """Architecture (the defaults are SmallCoder-303M) plus two compute knobs (dtype, remat)."""
    vocab_size: int = 49152
    d_model: int = 768
    n_layers: int = 24
    n_heads: int = 8
    n_kv_heads: int = 8          # < n_heads is grouped-query attention; must divide n_heads
    d_ff: int = 3072             # SwiGLU hidden width
    max_seq_len: int = 1024
    # The card gives neither: these are LlamaConfig's defaults (transformers), which the export writes out.
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dtype: str = "float32"       # compute dtype of matmuls; "bfloat16" on accelerators
    remat: str = "none"          # "none" | "full" | "dots" (save matmul outputs, recompute the rest)

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
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

class Weight(NamedTuple):
    shape: tuple
    axes: tuple        # logical axis names, one per dim: how train.py shards the weight
    std: float | None  # initial values ~ N(0, std²); None = ones (norm gains)


def weights(config: Config) -> dict:
    """Every parameter as a `Weight`, in the pytree layout of the parameters.

    Matrices ~ N(0, 0.02²) (GPT-2/Llama practice). The two projections that write into the residual
    stream (attention output, MLP down) are scaled by 1/sqrt(2L) so the residual's variance does not grow
    with depth. lm_head uses std 0.01 so the initial logits are small: loss on random tokens starts within
    a few hundredths of ln(vocab).
    """
    c = config
    L, D, H, G, K, F, V = c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size
    std, resid_std = 0.02, 0.02 / math.sqrt(2 * L)
    layers = {
        "wq": Weight((L, D, H, K), ("layers", "embed", "heads", "head_dim"), std),
        "wk": Weight((L, D, G, K), ("layers", "embed", "kv_heads", "head_dim"), std),
        "wv": Weight((L, D, G, K), ("layers", "embed", "kv_heads", "head_dim"), std),
        "wo": Weight((L, H, K, D), ("layers", "heads", "head_dim", "embed"), resid_std),
        "w_gate": Weight((L, D, F), ("layers", "embed", "ffn"), std),
        "w_up": Weight((L, D, F), ("layers", "embed", "ffn"), std),
        "w_down": Weight((L, F, D), ("layers", "ffn", "embed"), resid_std),
        "attn_norm": Weight((L, D), ("layers", "norm"), None),
        "mlp_norm": Weight((L, D), ("layers", "norm"), None),
    }
    return {"layers": layers, "embed": Weight((V, D), ("vocab", "embed"), std),
            "final_norm": Weight((D,), ("norm",), None), "lm_head": Weight((D, V), ("embed", "vocab"), 0.01)}


def _is_weight(x) -> bool:
    return isinstance(x, Weight)


def init(config: Config, key: jax.Array) -> dict:
    """Random fp32 parameters, as `weights` describes them: one key per random matrix, in the table's order."""
    table = weights(config)
    n_random = sum(w.std is not None for w in jax.tree.leaves(table, is_leaf=_is_weight))
    keys = iter(jax.random.split(key, n_random))

    def draw(w: Weight):
        return jnp.ones(w.shape, jnp.float32) if w.std is None else w.std * jax.random.normal(next(keys), w.shape)

    def walk(d):  # the table's own order (jax.tree would sort the names)
        return {name: walk(v) if isinstance(v, dict) else draw(v) for name, v in d.items()}
    return walk(table)


def logical_axes() -> dict:
    """Each weight's logical axis names, by the weight's name (no two leaves share one)."""
    return {path[-1].key: w.axes
            for path, w in jax.tree_util.tree_leaves_with_path(weights(Config()), is_leaf=_is_weight)}


def param_count(config: Config) -> int:
    """Exact number of parameters (untied embeddings)."""
    return sum(math.prod(w.shape) for w in jax.tree.leaves(weights(config), is_leaf=_is_weight))


def flops_per_token(config: Config, seq_len: int | None = None) -> int:
    """Training FLOPs per token, PaLM's convention (appendix B):

        6 * N_matmul + 12 * L * T * D

    N_matmul counts the weights of every matmul (attention, MLP and lm_head; not the embedding lookup, not
    norm gains): 2 FLOPs per weight forward, 4 backward. The second term is attention's QK^T and AV products
    (the full T x T square: causal masking is not credited).
    """
    c = config
    T = seq_len or c.max_seq_len
    attn = c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.d_model
    mlp = 3 * c.d_model * c.d_ff
    n_matmul = c.n_layers * (attn + mlp) + c.d_model * c.vocab_size
    return 6 * n_matmul + 12 * c.n_layers * T * c.d_model


# ----------------------------------------------------------------------------- the network

def rms_norm(x_BTD, gain_D, eps):
    """RMSNorm, in fp32:  y = x / sqrt(mean(x²) + eps) · gain."""
    x = x_BTD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * gain_D.astype(jnp.float32)
    return y.astype(x_BTD.dtype)


def rope_angles(pos_BT, K, theta):
    """cos and sin of the rotary angles, each [B, T, 1, K]: computed once per forward, read by every layer.

    Pair i of the K/2 frequencies θ_i = theta^(-2i/K) is dims (i, i + K/2), Hugging Face's split-half
    layout (so no permutation at export), and rotates by pos·θ_i. Angles are fp32: bf16 positions near
    1024 would be off by whole radians.
    """
    inv_freq = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angle_BTK = jnp.concatenate([pos_BT.astype(jnp.float32)[..., None] * inv_freq] * 2, -1)
    return jnp.cos(angle_BTK)[:, :, None, :], jnp.sin(angle_BTK)[:, :, None, :]


def rope(x_BTHK, cos_sin):
    """Rotary embedding of queries [B, T, H, K] or keys [B, T, G, K]:

        x' = x · cos + rotate_half(x) · sin,   rotate_half([a, b]) = [-b, a]
    """
    cos, sin = cos_sin
    x = x_BTHK.astype(jnp.float32)
    a, b = jnp.split(x, 2, axis=-1)
    return (x * cos + jnp.concatenate([-b, a], -1) * sin).astype(x_BTHK.dtype)


def softmax(x):
    """softmax over the last axis: exp(x - max x) / sum(exp(x - max x)). The shift cancels in the ratio
    (it only keeps exp from overflowing), so no gradient needs to flow through it."""
    e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def attention(q_BTHK, k_BSGK, v_BSGK, mask_BTS):
    """softmax(q·kᵀ / sqrt(K), where mask) · v, grouped-query: query head h reads KV head h // R.

    mask_BTS is True where query t may read key s (the causal mask, left padding, unwritten cache slots).
    Scores and softmax are fp32.
    """
    B, T, H, K = q_BTHK.shape
    G = k_BSGK.shape[2]
    q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
    scores_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_BSGK,
                              preferred_element_type=jnp.float32) / math.sqrt(K)
    scores_BGRTS = jnp.where(mask_BTS[:, None, None], scores_BGRTS, jnp.finfo(jnp.float32).min)
    probs_BGRTS = softmax(scores_BGRTS).astype(v_BSGK.dtype)
    out_BTGRK = jnp.einsum("bgrts,bsgk->btgrk", probs_BGRTS, v_BSGK)
    return out_BTGRK.reshape(B, T, H, K)


def silu(x):
    """silu(x) = x · σ(x)."""
    return x * jax.nn.sigmoid(x)


def layer(x_BTD, w, cos_sin, mask_BTS, config, kv=None, slot_B=0):
    """One pre-norm block:  x += attention(norm(x));  x += swiglu(norm(x)).

    With `kv`, this layer's cache (keys, values, each [B, S, G, K]), row b's new keys and values are written
    at slots slot_B[b]..+T and attention reads every slot the mask allows; without it, attention reads this
    call's own keys. Returns the new x and the updated cache (None without one).
    """
    h_BTD = rms_norm(x_BTD, w["attn_norm"], config.rms_norm_eps)
    q_BTHK = rope(jnp.einsum("btd,dhk->bthk", h_BTD, w["wq"]), cos_sin)
    k_BTGK = rope(jnp.einsum("btd,dgk->btgk", h_BTD, w["wk"]), cos_sin)
    v_BTGK = jnp.einsum("btd,dgk->btgk", h_BTD, w["wv"])
    if kv is not None:  # cache[b, slot_B[b] + t] = new[b, t]
        b_B1, slot_BT = jnp.arange(x_BTD.shape[0])[:, None], jnp.reshape(slot_B, (-1, 1)) + jnp.arange(x_BTD.shape[1])
        kv = k_BSGK, v_BSGK = (kv[0].at[b_B1, slot_BT].set(k_BTGK.astype(kv[0].dtype)),
                               kv[1].at[b_B1, slot_BT].set(v_BTGK.astype(kv[1].dtype)))
    else:
        k_BSGK, v_BSGK = k_BTGK, v_BTGK
    a_BTHK = attention(q_BTHK, k_BSGK, v_BSGK, mask_BTS)
    x_BTD = x_BTD + jnp.einsum("bthk,hkd->btd", a_BTHK, w["wo"])

    # SwiGLU: down(silu(gate(h)) * up(h))
    h_BTD = rms_norm(x_BTD, w["mlp_norm"], config.rms_norm_eps)
    gate_BTF = jnp.einsum("btd,df->btf", h_BTD, w["w_gate"])
    up_BTF = jnp.einsum("btd,df->btf", h_BTD, w["w_up"])
    x_BTD = x_BTD + jnp.einsum("btf,fd->btd", silu(gate_BTF) * up_BTF, w["w_down"])
    return x_BTD, kv


REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer: recompute it all in the backward pass
    # the weight matmuls' outputs (attention's two products have batch dims: recomputed)
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def attention_mask_and_angles(slot_B, start_B, T: int, S: int, config: Config):
    """Which of S key slots each of T queries, written at slots slot[b]..slot[b]+T, may read, and their angles:

        mask_BTS[b, t, s] = start_B[b] <= s <= slot_B[b] + t,    position[b, t] = slot_B[b] + t - start_B[b]

    So query t reads itself and earlier slots (causal; later slots are not written yet) but never the row's
    left padding, and positions count from each row's first real token. `slot_B` may be one slot for all rows.
    Returns (mask_BTS, `rope_angles`).
    """
    slot_BT, slot_S = jnp.reshape(slot_B, (-1, 1)) + jnp.arange(T), jnp.arange(S)
    mask_BTS = (slot_S[None, None, :] <= slot_BT[:, :, None]) & (slot_S[None, None, :] >= start_B[:, None, None])
    return mask_BTS, rope_angles(slot_BT - start_B[:, None], config.head_dim, config.rope_theta)


def forward(params, tokens_BT, config: Config, cache=None, gather=None):
    """Logits (fp32) for every position of `tokens_BT`.

    Without `cache`: a causal forward over the whole sequence (training, scoring).
    With `cache` (from `init_cache`): row b's tokens are written at slots cache["index"][b]..+T, attend to
    every earlier valid slot, and the updated cache is returned too: `(logits_BTV, cache)`.
    Rows of a batch may be left-padded: slots before cache["start"][b] are never attended to and positions
    count from the first real token, exactly like Hugging Face with an attention mask.
    `gather` (FSDP, see train.py) maps a dict of weight shards to the full weights; it is applied to the
    non-layer weights up front and to each layer's weights inside the scan, just in time.
    """
    B, T = tokens_BT.shape
    gather = gather or (lambda w: w)
    w = jax.tree.map(lambda p: p.astype(config.dtype), params)
    w = {**gather({k: v for k, v in w.items() if k != "layers"}), "layers": w["layers"]}
    x_BTD = w["embed"][tokens_BT]

    if cache is None:
        slot_B, start_B, S = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32), T
    else:
        slot_B, start_B, S = cache["index"], cache["start"], cache["k"].shape[2]
    mask_BTS, cos_sin = attention_mask_and_angles(slot_B, start_B, T, S, config)

    def body(x_BTD, w_and_kv):
        w_layer, kv = w_and_kv
        return layer(x_BTD, gather(w_layer), cos_sin, mask_BTS, config, kv, slot_B)

    if config.remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[config.remat])
    kv = None if cache is None else (cache["k"], cache["v"])
    x_BTD, kv = jax.lax.scan(body, x_BTD, (w["layers"], kv))  # kv: each layer's cache in, updated out

    x_BTD = rms_norm(x_BTD, w["final_norm"], config.rms_norm_eps)
    logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, w["lm_head"], preferred_element_type=jnp.float32)
    if cache is None:
        return logits_BTV
    return logits_BTV, {"k": kv[0], "v": kv[1], "index": slot_B + T, "start": start_B}


def init_cache(config: Config, batch: int, length: int, start_B=None) -> dict:
    """An empty KV cache of `length` slots: keys and values [L, B, S, G, K] in the compute dtype, each row's
    next slot to write ("index": rows may be at different slots) and left padding ("start", default none)."""
    shape = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
    start = jnp.zeros((batch,), jnp.int32) if start_B is None else jnp.asarray(start_B, jnp.int32)
    return {"k": jnp.zeros(shape, config.dtype), "v": jnp.zeros(shape, config.dtype),
            "index": jnp.zeros((batch,), jnp.int32), "start": start}


def cross_entropy(logits_BTV, targets_BT):
    """Per-token loss, in fp32:  -log softmax(logits)[target] = logsumexp(logits) - logits[target],
    logsumexp(x) = m + log(sum(exp(x - m))) with m = max x (as in `softmax`, the shift cancels)."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    m_BT1 = jax.lax.stop_gradient(jnp.max(logits_BTV, axis=-1, keepdims=True))
    logz_BT = (m_BT1 + jnp.log(jnp.sum(jnp.exp(logits_BTV - m_BT1), axis=-1, keepdims=True)))[..., 0]
    return logz_BT - jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description="Print a SmallCoder config, its parameter count and FLOPs.")
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, as in every tool
    parser.add_argument("--model", "--config", choices=sorted(CONFIGS), default="smallcoder")
    args = parser.parse_args(argv)  # one-word flags: nothing to respell (cli.parse_args does it for the others)
    config = CONFIGS[args.model]
    for field in dataclasses.fields(config):
        print(f"{field.name:>14} = {getattr(config, field.name)}")
    print(f"{'parameters':>14} = {param_count(config):,}")
    print(f"{'train FLOPs':>14} = {flops_per_token(config):,} per token at seq_len {config.max_seq_len} "
          f"(6 N_matmul + 12 L T D)")


if __name__ == "__main__":
    main()
