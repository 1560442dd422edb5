"""Sampling from SmallCoder: prompts in, completions out, stopping on EOS.

    python sample.py --ckpt out/tiny_sft --chat --prompt "Write a function that reverses a string."

How a batch is decoded:
  1. Prompts are tokenised, left-padded to a bucketed length and prefilled in one forward pass that writes
     the KV cache (`init_cache(start_B=pad counts)`: pad slots are never attended to and positions
     count from each row's first real token, as in Hugging Face with an attention mask).
  2. Then one token per step from the cache inside a jitted `lax.while_loop` that exits as soon as every row
     has produced EOS. The loop runs in chunks of a few steps when the host has work to do between them
     (stop strings are matched on decoded text; streaming prints text as it arrives); otherwise in one go.
     The decode state (cache included) is donated, so each chunk updates it in place.
Shapes are bucketed (prompt width, cache length), so new prompt lengths reuse compiled code. The model runs
through fast.py's rewrites (`--impl fast`, the default) or model.py as written (`--impl reference`): the same
tokens. Shape suffixes are model.py's, plus M = max_new_tokens.

Finish reasons: "eos" (the model ended the text; EOS is never part of ids or text), "length" (max_new_tokens
reached) or "stop" (a stop string appeared; text ends just before it, ids keep every token up to and including
the one that completed it, so decode(ids) may run a few characters past text).
"""
import argparse
import json
import math
import os
import sys
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


def pick(logits_BV, key, temperature: float, top_k: int, top_p: float, argmax=partial(jnp.argmax, axis=-1)):
    """Next token per row: argmax when temperature == 0, else a draw from softmax(filtered logits / T)
    (the Gumbel-max trick, as jax.random.categorical draws it: the same tokens for the same key)."""
    if temperature == 0.0:
        return argmax(logits_BV)
    logits_BV = filter_logits(logits_BV.astype(jnp.float32) / temperature, top_k, top_p)
    return argmax(logits_BV + jax.random.gumbel(key, logits_BV.shape, logits_BV.dtype))


# ----------------------------------------------------------------------------- the jitted decode loop

def bucket(n: int) -> int:
    """Shape bucket: powers of two up to 64, then multiples of 64. Bounds how often prefill recompiles."""
    return 1 << max(n - 1, 0).bit_length() if n <= 64 else -(-n // 64) * 64


# `sampling` = (temperature, top_k, top_p) is static: it picks which code runs (argmax, top_k's k); so is
# `impl`, the name of the implementation (fast.implementation) that runs the model.
@partial(jax.jit, static_argnames=("config", "cache_len", "max_new", "sampling", "impl"))
def _prefill(params, tokens_BT, start_B, eos, key, *, config, cache_len, max_new, sampling, impl):
    """Prompt forward into a fresh cache; returns the decode state holding the first generated token."""
    B, T = tokens_BT.shape
    net = fast.implementation(impl)
    cache = net.init_cache(config, B, cache_len, start_B)
    logits_BTV, cache = net.forward(params, tokens_BT, config, cache)
    tok_B = pick(logits_BTV[:, -1], jax.random.fold_in(key, 0), *sampling, net.argmax)
    out_BM = jnp.full((B, max_new), eos, jnp.int32).at[:, 0].set(tok_B)
    return {"cache": cache, "tok": tok_B, "out": out_BM, "n": jnp.array(1, jnp.int32),
            "done": tok_B == eos, "eos": eos, "key": key}


def _decode(params, state, n_end, *, config, sampling, impl):
    """Generate until every row is done or n_end tokens exist (n_end is traced: chunking never recompiles)."""
    net = fast.implementation(impl)

    def cond(s):
        return (s["n"] < n_end) & ~jnp.all(s["done"])

    def step(s):
        logits_B1V, cache = net.forward(params, s["tok"][:, None], config, s["cache"])
        tok_B = pick(logits_B1V[:, 0], jax.random.fold_in(s["key"], s["n"]), *sampling, net.argmax)
        tok_B = jnp.where(s["done"], s["eos"], tok_B)  # finished rows only ever add EOS
        out_BM = jax.lax.dynamic_update_slice(s["out"], tok_B[:, None], (0, s["n"]))
        return {**s, "cache": cache, "tok": tok_B, "out": out_BM, "n": s["n"] + 1,
                "done": s["done"] | (tok_B == s["eos"])}

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


def _decode_batch(params, config, rows_ids, eos_id, max_new, sampling, key, chunk, after_chunk, impl):
    """Decode one batch; returns the [B, max_new] token buffer (EOS-filled after a row ends) as numpy.

    `after_chunk(out_BM, n)` runs on the host after each chunk of `chunk` steps and returns the rows to stop.
    """
    B = len(rows_ids)
    width = bucket(max(map(len, rows_ids)))
    # Slots: padded prompt + one per generated token that is fed back (the last one never is).
    cache_len = -(-(width + max_new - 1) // 64) * 64
    tokens_BT = np.full((B, width), eos_id, np.int32)
    start_B = np.zeros(B, np.int32)
    for b, ids in enumerate(rows_ids):
        tokens_BT[b, width - len(ids):] = ids
        start_B[b] = width - len(ids)
    state = _prefill(params, tokens_BT, start_B, jnp.int32(eos_id), key,
                     config=config, cache_len=cache_len, max_new=max_new, sampling=sampling, impl=impl)
    n = 1
    while True:
        if after_chunk is not None:
            out_BM, done_B = jax.device_get((state["out"], state["done"]))
            stop_rows = after_chunk(out_BM, n)
            if stop_rows:
                state["done"] = state["done"].at[np.array(stop_rows)].set(True)
                done_B = done_B.copy()
                done_B[stop_rows] = True
            if done_B.all() or n >= max_new:
                return out_BM
        elif n >= max_new or bool(state["done"].all()):
            return np.asarray(state["out"])
        state = _decode_jit(impl)(params, state, jnp.int32(min(n + chunk, max_new)), config=config,
                                  sampling=sampling)
        n = int(state["n"])


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


def _batches(prompt_ids, batch_size):
    """Batches of prompt indices, similar lengths together (less padding); results go back in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _until_eos(row_M, eos_id):
    row = row_M.tolist()
    return row[:row.index(eos_id)] if eos_id in row else row


@partial(jax.jit, static_argnames=("config", "impl"))
def _decoding_params(params, config, impl):
    """Weights as the decode loop reads them, prepared once per call rather than once per token: in the
    compute dtype (so forward's cast is a no-op and bf16 decoding reads half the bytes), in the
    implementation's decoding layout. Jitted: the fast layout, eagerly, dispatched one slice per weight per
    layer (~24 ms for the tiny model)."""
    return fast.implementation(impl).decoding_layout(jax.tree.map(lambda a: jnp.asarray(a, config.dtype), params))


def _decode_all(params, config, prompt_ids, eos_id, max_new, sampling, seed, batch_size, impl, watch=None):
    """Decode `prompt_ids` (already `_fit`) in batches; yield each batch's prompt indices and its [B, max_new]
    token buffer. `watch(indices)` returns that batch's (after_chunk, chunk) or None (decode it in one go)."""
    params = _decoding_params(params, config=config, impl=impl)
    for j, idx in enumerate(_batches(prompt_ids, batch_size)):
        after_chunk, chunk = (watch and watch(idx)) or (None, max_new)
        yield idx, _decode_batch(params, config, [prompt_ids[i] for i in idx], eos_id, max_new, sampling,
                                 jax.random.fold_in(jax.random.key(seed), j), chunk, after_chunk, impl)


def generate_ids(params, config, prompt_ids, eos_id, *, max_new_tokens=512, temperature=0.0, top_k=0,
                 top_p=1.0, seed=0, batch_size=16, truncate=False, impl="fast") -> list[list[int]]:
    """Generated ids per prompt (EOS excluded; a row shorter than max_new_tokens ended with EOS).
    `impl`: "fast" or "reference" (see fast.py); both give the same tokens."""
    sampling = _check_sampling(temperature, top_k, top_p)
    prompt_ids = _fit(prompt_ids, max_new_tokens, config, truncate)
    results = [None] * len(prompt_ids)
    for idx, out_BM in _decode_all(params, config, prompt_ids, eos_id, max_new_tokens, sampling, seed, batch_size,
                                   impl):
        for b, i in enumerate(idx):
            results[i] = _until_eos(out_BM[b], eos_id)
    return results


def generate(params, config, tokenizer, prompts, *, max_new_tokens=512, temperature=0.0, top_k=0, top_p=1.0,
             seed=0, stop=(), batch_size=16, on_token=None, truncate=False, impl="fast") -> list[Sample]:
    """Complete each prompt (a str); batches of `batch_size` rows are decoded together.

    `stop`: strings that end a completion (matched on the decoded text, never inside the prompt).
    `on_token(i, text)`: called as text for prompt i arrives (each call gives new text only; text that could
    still become a stop string is held back). `truncate`: drop a too-long prompt's start instead of raising.
    """
    eos = eos_id(tokenizer)
    sampling = _check_sampling(temperature, top_k, top_p)
    stop = [s for s in ([stop] if isinstance(stop, str) else stop) if s]
    # An empty prompt starts from EOS, which also serves as StarCoder's BOS.
    ids = [tokenizer.encode(p).ids or [eos] for p in prompts]
    ids = _fit(ids, max_new_tokens, config, truncate)
    decode = partial(tokenizer.decode, skip_special_tokens=False)
    hold = max((len(s) for s in stop), default=1) - 1
    finished = {}  # prompt index -> Sample, once its text is final

    def watch(idx):
        """The batch's after_chunk: decode the rows, finish those that ended, stream the new text."""
        shown = {i: 0 for i in idx}  # characters already passed to on_token

        def after_chunk(out_BM, n):
            stop_rows = []
            for b, i in enumerate(idx):
                if i in finished:
                    continue
                row = _until_eos(out_BM[b, :n], eos)
                text = decode(row)
                cut = min((k for k in (text.find(s) for s in stop) if k >= 0), default=-1)
                if cut >= 0:  # the shortest prefix of ids whose text holds a stop string
                    m = next(m for m in range(1, len(row) + 1) if any(s in decode(row[:m]) for s in stop))
                    finished[i] = Sample(row[:m], text[:cut], "stop")
                    stop_rows.append(b)
                elif len(row) < n or n == max_new_tokens:
                    finished[i] = Sample(row, text, "eos" if len(row) < n else "length")
                if on_token is not None:
                    # Final text is shown whole; until then hold back a possible stop-string start and an
                    # incomplete UTF-8 character (decoded as U+FFFD).
                    end = len(finished[i].text) if i in finished else len(text.rstrip("\ufffd")) - hold
                    if end > shown[i]:
                        on_token(i, (finished[i].text if i in finished else text)[shown[i]:end])
                        shown[i] = end
            return stop_rows
        return after_chunk, (8 if on_token is not None else 32)

    streaming = bool(stop) or on_token is not None
    for idx, out_BM in _decode_all(params, config, ids, eos, max_new_tokens, sampling, seed, batch_size, impl,
                                   watch if streaming else None):
        if not streaming:
            watch(idx)[0](out_BM, max_new_tokens)
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
