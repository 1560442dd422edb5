"""The EOS fix, measured: how often a checkpoint ends a chat reply with EOS before max_new_tokens.

    python docs/eos_rate.py                                  # out/tiny and out/tiny_sft, 50 prompts, 128 tokens
    python docs/eos_rate.py --ckpt out/tiny_sft --n 100 --max-new-tokens 256 --seeds 5

The prompts are held-out docstring -> function requests: the stdlib_sft corpus's val split (corpus.stdlib_corpus,
files the SFT run never trains on), formatted with `--chat` as sample.py does (tokenizer.CHAT_FORMAT).
Only requests a well-behaved model can finish are used: the reference function plus EOS fits in
max_new_tokens, and the whole example fits one training row (tiny_sft.py's seq_len + 1 tokens; data.py drops
longer ones). N of them are taken evenly spaced through the split, the same N for every checkpoint.

Three measurements per checkpoint:
  greedy        replies that stop on EOS, greedy decoding (the card's usage);
  sampled       the same at temperature 0.8, top-p 0.95, over --seeds seeds (mean and range);
  p(EOS | end)  the model's probability of EOS right after the reference reply (teacher-forced, no decoding).
A base model trained on raw files has no reason to stop after one function; the SFT model was taught to (its
loss covers the EOS): the model card's S4.1 "EOS fix". Greedy decoding of a weak model can fall into a
repetition loop that never reaches the end, so the greedy rate of the tiny demo swings between runs; the
sampled rate and p(EOS | end) measure what was learnt.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

SFT_ROW = 257  # stages/tiny_sft.py: seq_len 256, rows of seq_len + 1 tokens
SAMPLED = dict(temperature=0.8, top_p=0.95)


def held_out_requests(tokenizer, n: int, max_new_tokens: int) -> list[tuple[list, list]]:
    """`n` held-out (prompt ids, reference reply ids + EOS) whose reply fits max_new_tokens."""
    import corpus
    from tokenizer import CHAT_FORMAT, eos_id
    (path,) = corpus.stdlib_corpus("stdlib_sft")["val"]
    with open(path, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    eos, fits = eos_id(tokenizer), []
    for p in pairs:
        # tokenised as data.py does for training: the prompt, then " " + response, then EOS
        prompt = tokenizer.encode(CHAT_FORMAT.format(prompt=p["prompt"])).ids
        reply = tokenizer.encode(" " + p["response"]).ids + [eos]
        if len(reply) <= max_new_tokens and len(prompt) + len(reply) <= SFT_ROW:
            fits.append((prompt, reply))
    if len(fits) < n:
        raise SystemExit(f"error: only {len(fits)} held-out requests fit {max_new_tokens} new tokens; lower --n")
    return [fits[i * len(fits) // n] for i in range(n)]


def eos_probability(params, config, requests, eos: int) -> np.ndarray:
    """p(EOS) at the position after each reference reply, one right-padded batch (causal: padding after a
    position cannot change its logits)."""
    import jax
    import model
    rows = [prompt + reply[:-1] for prompt, reply in requests]
    tokens_BT = np.full((len(rows), max(map(len, rows))), eos, np.int32)
    for b, r in enumerate(rows):
        tokens_BT[b, :len(r)] = r
    logits_BTV = model.forward(params, tokens_BT, config)
    last_BV = logits_BTV[np.arange(len(rows)), [len(r) - 1 for r in rows]]
    return np.asarray(jax.nn.softmax(last_BV, axis=-1)[:, eos])


def measure(ckpt: str, n: int, max_new_tokens: int, seeds: int) -> dict:
    """{"greedy": stops, "sampled": [stops per seed], "sampled_len", "reference_len": median reply lengths,
    "p_eos": median p(EOS | end), "samples": greedy replies}."""
    import sample
    from tokenizer import eos_id
    params, config, tokenizer = sample.load(ckpt)
    eos = eos_id(tokenizer)
    requests = held_out_requests(tokenizer, n, max_new_tokens)
    prompt_ids = [prompt for prompt, _ in requests]

    def stops(**rule):
        ids = sample.generate_ids(params, config, prompt_ids, eos, max_new_tokens=max_new_tokens, **rule)
        return sum(len(r) < max_new_tokens for r in ids), ids  # a row shorter than the budget ended on EOS

    greedy, greedy_ids = stops()
    sampled = [stops(**SAMPLED, seed=s) for s in range(seeds)]
    return {"greedy": greedy, "sampled": [k for k, _ in sampled],
            "sampled_len": float(np.median([len(r) for _, ids in sampled for r in ids])) if seeds else None,
            "reference_len": float(np.median([len(reply) - 1 for _, reply in requests])),
            "p_eos": float(np.median(eos_probability(params, config, requests, eos))),
            "samples": [tokenizer.decode(r, skip_special_tokens=False) for r in greedy_ids]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--ckpt", action="append", help="checkpoint dir (repeatable; default out/tiny and out/tiny_sft)")
    p.add_argument("--n", type=int, default=50, help="held-out prompts per checkpoint")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seeds", type=int, default=3, help="sampled runs per checkpoint")
    p.add_argument("--show", type=int, default=0, help="also print the first SHOW greedy replies of each checkpoint")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1 or args.seeds < 0:
        p.error("--n and --max-new-tokens must be >= 1, --seeds >= 0")
    n = args.n
    print(f"stopped on EOS within {args.max_new_tokens} new tokens, of {n} held-out chat prompts")
    for ckpt in args.ckpt or ["out/tiny", "out/tiny_sft"]:
        r = measure(ckpt, n, args.max_new_tokens, args.seeds)
        sampled = (f"sampled {np.mean(r['sampled']) / n:.0%} ({min(r['sampled'])}-{max(r['sampled'])}/{n} over "
                   f"{args.seeds} seeds, median {r['sampled_len']:.0f} tokens; reference {r['reference_len']:.0f})"
                   if args.seeds else "")
        print(f"{ckpt}: greedy {r['greedy']}/{n} ({r['greedy'] / n:.0%}) | {sampled} | "
              f"median p(EOS | end of reference reply) {r['p_eos']:.2g}", flush=True)
        for text in r["samples"][:args.show]:
            print(f"--- \n{text}")


if __name__ == "__main__":
    main()
