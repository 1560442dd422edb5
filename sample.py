"""Sampling from SmallCoder: prompts in, completions out, stopping on EOS.

    python sample.py --ckpt out/tiny_sft --chat --prompt "Write a function that reverses a string."

How prompts are decoded (`_decode_rows`): `batch_size` rows decode at once, continuously.
  1. Prompts wait shortest first. Each free row takes the next one: prompts admitted together are left-padded
     to a bucketed width and prefilled in one forward pass (`_admit`) that writes their rows of the KV cache
     (pad slots are never attended to; positions count from each row's first real token, as in Hugging Face
     with an attention mask) and computes the lm_head at the last position only, the one sampled from.
  2. Then one token per step for every row inside a jitted `lax.while_loop` (`_decode`); each row writes its
     own cache slot. The loop exits to the host when a row ends while prompts wait (its row is refilled at
     once: no row idles while work remains), when a row's slots run out, or every few steps when the host
     has work (stop strings are matched on decoded text; streaming prints text as it arrives). The state,
     cache included, is donated, so each call updates it in place.
  3. A step reads every slot of the cache, so the cache holds only what is written, rounded up
     (`cache_bucket`: 64, then multiples of 128, as llama.cpp rounds), and grows as rows fill it:
     a token's cost tracks the tokens written, not max_new_tokens.
Prompt i samples with its own key, so its tokens depend neither on its row nor on its neighbours: the same
tokens at any batch size. Shapes are bucketed (prompt width, cache slots, rows admitted at once), so new lengths
reuse compiled code. The model runs through fast.py's rewrites (`--impl fast`, the default) or model.py as
written (`--impl reference`): the same tokens. Shape suffixes are model.py's, plus M = max_new_tokens and
P = prompts admitted at once.

Finish reasons: "eos" (the model ended the text; EOS is never part of ids or text), "length" (max_new_tokens
reached) or "stop" (a stop string appeared; text ends just before it, ids keep every token up to and including
the one that completed it, so decode(ids) may run a few characters past text).
"""
import argparse
import json
import math
import os
import sys
import weakref
from dataclasses import dataclass, replace
from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np

import checkpoints
import cli
import fast
import storage
from tokenizer import CHAT_FORMAT, eos_id


class ContextError(ValueError):
    """A prompt plus max_new_tokens does not fit in the model's context (max_seq_len)."""


@dataclass
class Sample:
    ids: list[int]       # generated token ids, EOS excluded (see the module docstring for "stop")
    text: str            # their text, without EOS and without the stop string
    finish_reason: str   # "eos" | "length" | "stop"


# ----------------------------------------------------------------------------- loading

def load(ckpt: str):
    """(params, config, tokenizer) from our model directory (local or a URL), a Hugging Face Llama directory or a
    hub id (imported by convert.py)."""
    d = checkpoints.read_config(ckpt) if storage.is_url(ckpt) or os.path.isdir(ckpt) else None
    if d is not None and "model_type" not in d:
        return checkpoints.load_model(ckpt)
    if d is None and (os.path.exists(ckpt) or storage.is_url(ckpt) or ckpt.startswith((".", "/", "~"))
                      or ckpt.count("/") != 1):
        raise checkpoints.CheckpointError(f"{ckpt} is neither a checkpoint directory (no {checkpoints.CONFIG_FILE})"
                                          f" nor a Hugging Face hub id (owner/name)")
    import convert  # a Hugging Face directory or hub id
    return convert.from_hf(ckpt)


# ----------------------------------------------------------------------------- sampling rules

def filter_logits(logits_BV, top_k: int = 0, top_p: float = 1.0):
    """Set to -inf every logit outside the k largest (top_k > 0) and outside the nucleus (top_p < 1): the
    smallest set of most likely tokens whose probability sums to >= top_p. Ties at a cut-off are all kept."""
    logits_BV = logits_BV.astype(jnp.float32)
    if top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # A token is kept while the mass of the tokens ranked above it is still < top_p (HF's rule).
        n_keep_B = jnp.maximum(jnp.sum(jnp.cumsum(probs_BV, -1) - probs_BV < top_p, -1), 1)
        cutoff_B1 = jnp.take_along_axis(sorted_BV, n_keep_B[:, None] - 1, axis=-1)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return logits_BV


def pick(logits_BV, keys_B, temperature: float, top_k: int, top_p: float, argmax=partial(jnp.argmax, axis=-1)):
    """Next token per row: argmax when temperature == 0, else a draw from softmax(filtered logits / T), row b
    with its own key (the Gumbel-max trick, as jax.random.categorical draws it: the same token for the same
    key), so what a row draws never depends on the rows beside it."""
    if temperature == 0.0:
        return argmax(logits_BV)
    logits_BV = filter_logits(logits_BV.astype(jnp.float32) / temperature, top_k, top_p)
    gumbel_BV = jax.vmap(lambda key: jax.random.gumbel(key, logits_BV.shape[1:], logits_BV.dtype))(keys_B)
    return argmax(logits_BV + gumbel_BV)


# ----------------------------------------------------------------------------- the jitted steps

def bucket(n: int) -> int:
    """Prompt-width bucket: powers of two up to 64, then multiples of 64. Bounds how often prefill recompiles."""
    return 1 << max(n - 1, 0).bit_length() if n <= 64 else -(-n // 64) * 64


# The cache's growth step. llama.cpp rounds the cells it attends over up to 256; at 128 the tiny model's tokens
# cost 10-15% less at ~1,000 new tokens (docs/PERFORMANCE.md), for one more compiled loop per 256 slots.
CACHE_BUCKET = 128


def cache_bucket(n: int) -> int:
    """Cache slots to hold n: 64, then multiples of CACHE_BUCKET. A step reads every slot of the cache, so the
    cache grows with the tokens written (a handful of compiled loop variants), not to max_new_tokens at once."""
    return max(64, 1 << (n - 1).bit_length()) if n <= CACHE_BUCKET else -(-n // CACHE_BUCKET) * CACHE_BUCKET


# `sampling` = (temperature, top_k, top_p) is static: it picks which code runs (argmax, top_k's k); so is
# `impl`, the name of the implementation (fast.implementation) that runs the model.
@partial(jax.jit, static_argnames=("config", "slots", "max_new", "sampling", "impl"), donate_argnames=("state",))
def _admit(params, state, tokens_PT, start_P, prompt_P, rows_P, seed, eos, *, config, slots, max_new, sampling,
           impl):
    """Prefill P left-padded prompts into a fresh cache of `slots` slots, pick each one's first token, and put
    them in rows `rows_P` of the decode state (row B, past the end, drops a padding prompt). Without a state
    (the first admission, which fills every row) they are the state. The lm_head runs at the last position
    only: it is the only one sampled from."""
    P = tokens_PT.shape[0]
    net = fast.implementation(impl)
    keys_P = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), prompt_P)  # prompt i's key
    logits_PV, cache = net.last_logits(params, tokens_PT, config, net.init_cache(config, P, slots, start_P))
    tok_P = pick(logits_PV, jax.vmap(jax.random.fold_in)(keys_P, jnp.zeros(P, jnp.int32)), *sampling, net.argmax)
    new = {"cache": cache, "tok": tok_P, "key": keys_P, "out": jnp.full((P, max_new), eos).at[:, 0].set(tok_P),
           "n": jnp.ones(P, jnp.int32), "done": (tok_P == eos) | (max_new == 1), "steps": jnp.int32(0), "eos": eos}
    if state is None:
        return new
    put = lambda a, new_a: a.at[(slice(None),) * _row_axis(a) + (rows_P,)].set(new_a, mode="drop")  # noqa: E731
    return {**state, "cache": jax.tree.map(put, state["cache"], cache),
            **{k: put(state[k], new[k]) for k in ("tok", "key", "out", "n", "done")}}


def _row_axis(a) -> int:
    """The batch axis of a decode state's array: a cache's keys and values end in [B, three axes of a row]
    (model.py's one stacked [L, B, S, G, K], fast.py's one per layer [B, G, K, S]); anything else starts with B."""
    return max(a.ndim - 4, 0)


@partial(jax.jit, static_argnames=("config", "slots", "impl"))
def _grow(state, *, config, slots, impl):
    """The state with its cache grown to `slots` slots, the new ones empty. Written without naming the slot
    axis (the one whose length differs), so it serves model.py's and fast.py's cache layouts alike."""
    like = jax.eval_shape(lambda: fast.implementation(impl).init_cache(config, state["n"].shape[0], slots))
    grow = lambda a, b: jnp.pad(a, [(0, n - m) for m, n in zip(a.shape, b.shape)])  # noqa: E731
    return {**state, "cache": jax.tree.map(grow, state["cache"], like)}


def _slots(cache, config) -> int:
    """How many slots a cache has, from its keys' size: the same in either cache layout."""
    keys = sum(a.size for a in jax.tree.leaves(cache["k"]))
    return keys // (config.n_layers * cache["index"].shape[0] * config.n_kv_heads * config.head_dim)


def _decode(params, state, n_end, until_one_ends, *, config, sampling, impl):
    """Decode every running row, one token per step, until all are done, `n_end` steps have run, a row has
    no free slot left, or (with `until_one_ends`) a row ends: its slot can then take a waiting prompt.
    n_end and until_one_ends are traced: chunking never recompiles."""
    net = fast.implementation(impl)
    B, M = state["out"].shape
    slots = _slots(state["cache"], config)

    def cond(s):
        running_B = ~s["done"]
        full = jnp.any(running_B & (s["cache"]["index"] >= slots))
        return jnp.any(running_B) & (s["steps"] < n_end) & ~full & ~(until_one_ends & jnp.any(s["done"]))

    def step(s):
        running_B = ~s["done"]
        logits_B1V, cache = net.forward(params, s["tok"][:, None], config, s["cache"])
        # A finished row computes on (its slot awaits a prompt) but moves no further and picks nothing.
        cache["index"] = jnp.where(running_B, cache["index"], s["cache"]["index"])
        tok_B = pick(logits_B1V[:, 0], jax.vmap(jax.random.fold_in)(s["key"], s["n"]), *sampling, net.argmax)
        tok_B = jnp.where(running_B, tok_B, s["eos"])
        out_BM = s["out"].at[jnp.arange(B), jnp.where(running_B, s["n"], M)].set(tok_B, mode="drop")
        n_B = s["n"] + running_B
        return {**s, "cache": cache, "tok": tok_B, "out": out_BM, "n": n_B, "steps": s["steps"] + 1,
                "done": s["done"] | (tok_B == s["eos"]) | (n_B >= M)}

    return jax.lax.while_loop(cond, step, state)


@cache
def _decode_jit(impl: str):
    """`_decode`, jitted, its state donated, with the implementation's compiler options."""
    return jax.jit(partial(_decode, impl=impl), static_argnames=("config", "sampling"), donate_argnames=("state",),
                   compiler_options=fast.implementation(impl).decode_compiler_options())


def _check_sampling(temperature, top_k, top_p):
    if not temperature >= 0.0 or math.isinf(temperature):
        raise ValueError(f"temperature must be >= 0 and finite, not {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), not {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], not {top_p}")
    return (float(temperature), int(top_k), float(top_p))


# ----------------------------------------------------------------------------- continuous batching

def _decode_rows(params, config, prompt_ids, eos, max_new, sampling, seed, batch_size, impl, on_row,
                 chunk=None, stats=None):
    """Decode every prompt of `prompt_ids` (already `_fit`) in `batch_size` rows, continuously: when a row ends,
    the next waiting prompt is prefilled into it (waiting prompts go shortest first, so prompts admitted
    together are padded little). Prompt i samples with its own key, fold_in(key(seed mod 2³²), i), and its n-th
    token with fold_in(that, n): the tokens of a prompt depend on neither its row nor its neighbours.

    `on_row(i, ids, ended)` runs on the host for each row that ended (`ended`, ids: its tokens, EOS included if
    it came) and, after each `chunk` steps, each still running (`chunk` None: never); it returns True to end
    the row there (a stop string). `stats`, a dict, receives the rows, steps and prompts prefilled.
    """
    B = min(batch_size, len(prompt_ids))
    waiting = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))[::-1]  # pop() takes the shortest
    row_prompt = [None] * B  # the prompt index each row decodes, None while free
    state, n_admitted, steps = None, 0, 0
    while True:
        out_BM, n_B, done_B, index_B = jax.device_get((state["out"], state["n"], state["done"],
                                                       state["cache"]["index"])) if state else (None,) * 4
        stop_B = np.zeros(B, bool)
        for b, i in enumerate(row_prompt):
            if i is not None and (done_B[b] or chunk is not None):
                stop_B[b] = on_row(i, out_BM[b, :n_B[b]].tolist(), bool(done_B[b])) and not done_B[b]
                if done_B[b] or stop_B[b]:
                    row_prompt[b] = None
        if stop_B.any():
            state["done"] = state["done"] | stop_B
        free = [b for b, i in enumerate(row_prompt) if i is None]
        if waiting and free:  # admit: one prefill for every free row (P rounded up to a power of two)
            idx = [waiting.pop() for _ in free[:len(waiting)]]
            P = min(1 << (len(idx) - 1).bit_length(), B)
            rows_P = np.full(P, B, np.int32)  # B: a padding prompt's row, dropped
            rows_P[:len(idx)] = free[:len(idx)]
            T = bucket(max(len(prompt_ids[i]) for i in idx))
            tokens_PT, start_P = np.full((P, T), eos, np.int32), np.full(P, T - 1, np.int32)
            for p, i in enumerate(idx):
                tokens_PT[p, T - len(prompt_ids[i]):], start_P[p] = prompt_ids[i], T - len(prompt_ids[i])
                row_prompt[free[p]] = i
            if state is not None and T + 1 > _slots(state["cache"], config):
                state = _grow(state, config=config, slots=cache_bucket(T + 1), impl=impl)
            slots = _slots(state["cache"], config) if state else cache_bucket(T + 1)
            state = _admit(params, state, tokens_PT, start_P, np.array(idx + [0] * (P - len(idx)), np.int32), rows_P,
                           np.uint32(seed % 2**32), np.int32(eos), config=config, slots=slots, max_new=max_new,
                           sampling=sampling, impl=impl)
            n_admitted += len(idx)
            continue  # a prompt may end at its first token
        if all(i is None for i in row_prompt):
            break
        slots = _slots(state["cache"], config)
        if any(index_B[b] >= slots for b, i in enumerate(row_prompt) if i is not None):
            state = _grow(state, config=config, slots=cache_bucket(slots + 1), impl=impl)
        state = _decode_jit(impl)(params, state, jnp.int32(steps + (chunk or max_new)), jnp.bool_(bool(waiting)),
                                  config=config, sampling=sampling)
        steps = int(state["steps"])
    if stats is not None:
        stats.update(rows=B, steps=steps, prompts=n_admitted)


def _fit(prompt_ids, max_new, config, truncate):
    """Check (or left-truncate) prompts so that prompt + max_new_tokens <= max_seq_len."""
    if not 0 < max_new < config.max_seq_len:
        raise ContextError(f"max_new_tokens must be in 1..{config.max_seq_len - 1}, not {max_new}")
    room = config.max_seq_len - max_new
    out = []
    for i, ids in enumerate(prompt_ids):
        if not len(ids):
            raise ValueError(f"prompt {i} has no tokens")
        if len(ids) > room:
            if not truncate:
                raise ContextError(f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new} that is "
                                   f"{len(ids) + max_new} > max_seq_len={config.max_seq_len} (shorten it, lower "
                                   f"max_new_tokens, or truncate the prompt's start)")
            ids = ids[-room:]  # keep the end: it is what the continuation depends on most
        out.append([int(t) for t in ids])
    return out


def _until_eos(row, eos_id):
    return row[:row.index(eos_id)] if eos_id in row else row


@partial(jax.jit, static_argnames=("config", "impl"))
def _prepare(params, config, impl):
    """Weights as the decode loop reads them: in the compute dtype (so forward's cast is a no-op and bf16
    decoding reads half the bytes), in the implementation's decoding layout. Jitted: the fast layout, eagerly,
    dispatched one slice per weight per layer (~24 ms for the tiny model)."""
    return fast.implementation(impl).decoding_layout(jax.tree.map(lambda a: jnp.asarray(a, config.dtype), params))


_PREPARED = {}  # (config, impl, tree) -> (weak references to the params' leaves, their `_prepare`d copy)


def _decoding_params(params, config, impl):
    """`_prepare(params)`, made once per params rather than once per call: a copy of every weight (~3 ms for
    the tiny model, a tenth of a 512-token prefill; ~1 GB for 303M in fp32) is kept while the params it was
    made from live, one copy at a time. Only for jax arrays, which cannot change in place (numpy ones can)."""
    leaves = jax.tree.leaves(params)
    key = (config, impl, jax.tree.structure(params))
    refs, prepared = _PREPARED.get(key, ((), None))
    if len(refs) == len(leaves) and all(r() is a and not a.is_deleted() for r, a in zip(refs, leaves)):
        return prepared
    _PREPARED.clear()  # before preparing: never two copies held
    prepared = _prepare(params, config=config, impl=impl)
    if leaves and all(isinstance(a, jax.Array) for a in leaves):
        refs = [weakref.ref(a) for a in leaves]
        _PREPARED[key] = (refs, prepared)  # the params gone, their copy goes (unless another's replaced it):
        weakref.finalize(leaves[0], lambda: _PREPARED.get(key, (None,))[0] is refs and _PREPARED.pop(key))
    return prepared


def generate_ids(params, config, prompt_ids, eos_id, *, max_new_tokens=512, temperature=0.0, top_k=0,
                 top_p=1.0, seed=0, batch_size=16, truncate=False, impl="fast", stats=None) -> list[list[int]]:
    """Generated ids per prompt (EOS excluded; a row shorter than max_new_tokens ended with EOS).
    `impl`: "fast" or "reference" (see fast.py); both give the same tokens. `stats`: see `_decode_rows`."""
    sampling = _check_sampling(temperature, top_k, top_p)
    prompt_ids = _fit(prompt_ids, max_new_tokens, config, truncate)
    results = [None] * len(prompt_ids)

    def on_row(i, ids, ended):
        results[i] = _until_eos(ids, eos_id)
    _decode_rows(_decoding_params(params, config=config, impl=impl), config, prompt_ids, eos_id, max_new_tokens,
                 sampling, seed, batch_size, impl, on_row, stats=stats)
    return results


def generate(params, config, tokenizer, prompts, *, max_new_tokens=512, temperature=0.0, top_k=0, top_p=1.0,
             seed=0, stop=(), batch_size=16, on_token=None, on_done=None, truncate=False, impl="fast") -> list[Sample]:
    """Complete each prompt (a str), `batch_size` rows decoding at once (see `_decode_rows`).

    `stop`: strings that end a completion (matched on the decoded text, never inside the prompt).
    `on_token(i, text)`: called as text for prompt i arrives (each call gives new text only; text that could
    still become a stop string is held back). `on_done(i, sample)`: called once prompt i's Sample is final.
    `truncate`: drop a too-long prompt's start instead of raising.
    """
    eos = eos_id(tokenizer)
    sampling = _check_sampling(temperature, top_k, top_p)
    stop = [s for s in ([stop] if isinstance(stop, str) else stop) if s]
    # An empty prompt starts from EOS, which also serves as StarCoder's BOS.
    ids = [tokenizer.encode(p).ids or [eos] for p in prompts]
    ids = _fit(ids, max_new_tokens, config, truncate)
    decode = partial(tokenizer.decode, skip_special_tokens=False)
    hold = max((len(s) for s in stop), default=1) - 1
    finished, shown = {}, {}  # prompt index -> its Sample once final; characters already passed to on_token

    def on_row(i, ids, ended):
        """Row i's tokens so far: finish it if it ended or holds a stop string, stream its new text."""
        row = _until_eos(ids, eos)
        text = decode(row)
        cut = min((k for k in (text.find(s) for s in stop) if k >= 0), default=-1)
        if cut >= 0:  # the shortest prefix of ids whose text holds a stop string
            m = next(m for m in range(1, len(row) + 1) if any(s in decode(row[:m]) for s in stop))
            finished[i] = Sample(row[:m], text[:cut], "stop")
        elif ended:
            finished[i] = Sample(row, text, "eos" if len(row) < len(ids) else "length")
        if on_token is not None:
            # Final text is shown whole; until then hold back a possible stop-string start and an
            # incomplete UTF-8 character (decoded as U+FFFD).
            end = len(finished[i].text) if i in finished else len(text.rstrip("\ufffd")) - hold
            if end > shown.get(i, 0):
                on_token(i, (finished[i].text if i in finished else text)[shown.get(i, 0):end])
                shown[i] = end
        if i in finished and on_done is not None:
            on_done(i, finished[i])
        return i in finished

    chunk = (8 if on_token is not None else 32) if stop or on_token is not None else None
    _decode_rows(_decoding_params(params, config=config, impl=impl), config, ids, eos, max_new_tokens, sampling,
                 seed, batch_size, impl, on_row, chunk)
    return [finished[i] for i in range(len(prompts))]


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(description="Generate text from a SmallCoder checkpoint.")
    p.add_argument("--ckpt", required=True, help="our checkpoint dir, a Hugging Face Llama dir, or a hub id")
    p.add_argument("--prompt", help="the prompt (else --prompt-file, else stdin)")
    p.add_argument("--prompt-file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as 'User: {prompt}\\nAssistant:'")
    p.add_argument("--max-new-tokens", type=int,
                   help="default: 512, or what the model's context leaves after the prompt if that is less")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-samples", "--n-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample per line")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=cli.DTYPES, default="auto",
                   help="compute dtype (auto: the checkpoint's; float32 matches transformers exactly)")
    p.add_argument("--impl", choices=fast.IMPLEMENTATIONS, default="fast",
                   help="fast.py's rewrites (default) or model.py's reference math: the same tokens")
    p.add_argument("--truncate-prompt", action="store_true",
                   help="drop the start of a prompt that does not fit with --max-new-tokens, instead of failing")
    args = cli.parse_args(p, argv)
    if args.impl == "fast":
        fast.reuse_host_memory()  # before jax starts its threads (see there)
    try:
        if args.prompt is not None:
            prompt = args.prompt
        elif args.prompt_file is not None:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        else:
            if sys.stdin.isatty():  # else a pipe or a file feeds it: nothing to say
                print("reading the prompt from stdin (end it with Ctrl-D; or pass --prompt)", file=sys.stderr)
            prompt = sys.stdin.read()
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, not {args.num_samples}")
        _check_sampling(args.temperature, args.top_k, args.top_p)
        params, config, tokenizer = load(args.ckpt)
        if args.dtype != "auto":
            config = replace(config, dtype=args.dtype)
        if args.chat:
            prompt = CHAT_FORMAT.format(prompt=prompt)
        max_new = args.max_new_tokens
        if max_new is None:  # the tiny demo model has a 512-token context: the prompt takes part of it
            max_new = min(512, config.max_seq_len - max(len(tokenizer.encode(prompt).ids), 1))
        stream = sys.stdout.isatty() and not args.json and args.num_samples == 1
        on_token = (lambda i, text: print(text, end="", flush=True)) if stream else None
        samples = generate(params, config, tokenizer, [prompt] * args.num_samples,
                           max_new_tokens=max_new, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, stop=args.stop, batch_size=args.batch_size,
                           on_token=on_token, truncate=args.truncate_prompt, impl=args.impl)
    except (ValueError, OSError) as e:  # ContextError, CheckpointError, TokenizerError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for k, s in enumerate(samples):
        if args.json:
            print(json.dumps({"ids": s.ids, "text": s.text, "finish_reason": s.finish_reason}))
        elif stream:
            print(f"\n[{s.finish_reason}]", file=sys.stderr)
        else:
            if args.num_samples > 1:
                print(f"--- sample {k} [{s.finish_reason}]")
            print(s.text)


if __name__ == "__main__":
    main()
