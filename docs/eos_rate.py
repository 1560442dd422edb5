"""The EOS fix, measured: how often a checkpoint ends a chat reply with EOS before max_new_tokens.

    python docs/eos_rate.py                                  # out/tiny and out/tiny_sft, 50 prompts, 128 tokens
    python docs/eos_rate.py --ckpt out/tiny_sft --n 100 --max-new-tokens 256

The prompts are held-out docstring -> function requests: the stdlib_sft corpus's val split (data.stdlib_corpus,
files the SFT run never trains on), formatted with `--chat` as sample.py does ("User: {prompt}\\nAssistant:").
Only requests a well-behaved model can finish are used: the reference function plus EOS fits in
max_new_tokens, and the whole example fits one training row (tiny_sft.py's seq_len + 1 tokens; data.py drops
longer ones). N of them are taken evenly spaced through the split, the same N for every checkpoint.
Decoding is greedy. A base model trained on raw files has no reason to stop after one function; the SFT
model was taught to (its loss covers the EOS), which is the model card's S4.1 "EOS fix".
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

SFT_ROW = 257  # stages/tiny_sft.py: seq_len 256, rows of seq_len + 1 tokens


def held_out_requests(tokenizer, n: int, max_new_tokens: int) -> list[str]:
    """`n` chat prompts from the held-out SFT pairs whose reference reply (+ EOS) fits max_new_tokens."""
    import data
    from sample import CHAT_FORMAT
    (path,) = data.stdlib_corpus("stdlib_sft")["val"]
    with open(path, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    fits = []
    for p in pairs:
        prompt = CHAT_FORMAT.format(prompt=p["prompt"])
        # tokenised as data.py does for training: the prompt, then " " + response, then EOS
        n_prompt, n_reply = len(tokenizer.encode(prompt).ids), len(tokenizer.encode(" " + p["response"]).ids) + 1
        if n_reply <= max_new_tokens and n_prompt + n_reply <= SFT_ROW:
            fits.append(prompt)
    if len(fits) < n:
        raise SystemExit(f"error: only {len(fits)} held-out requests fit {max_new_tokens} new tokens; lower --n")
    return [fits[i * len(fits) // n] for i in range(n)]


def eos_rate(ckpt: str, n: int, max_new_tokens: int) -> tuple[int, list]:
    """(how many of the n replies ended with EOS, the samples), greedy, for one checkpoint."""
    import sample
    params, config, tokenizer = sample.load(ckpt)
    prompts = held_out_requests(tokenizer, n, max_new_tokens)
    samples = sample.generate(params, config, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return sum(s.finish_reason == "eos" for s in samples), samples


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--ckpt", action="append", help="checkpoint dir (repeatable; default out/tiny and out/tiny_sft)")
    p.add_argument("--n", type=int, default=50, help="held-out prompts per checkpoint")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--show", type=int, default=0, help="also print the first SHOW replies of each checkpoint")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1:
        p.error("--n and --max-new-tokens must be >= 1")
    for ckpt in args.ckpt or ["out/tiny", "out/tiny_sft"]:
        stopped, samples = eos_rate(ckpt, args.n, args.max_new_tokens)
        print(f"{ckpt}: {stopped}/{args.n} replies stopped on EOS within {args.max_new_tokens} new tokens "
              f"({stopped / args.n:.0%})", flush=True)
        for s in samples[:args.show]:
            print(f"--- [{s.finish_reason}, {len(s.ids)} tokens]\n{s.text}")


if __name__ == "__main__":
    main()
