"""What a run trains on: `Batches`, the mixture of its sources packed into rows, resumable (README: Data).

A batch is a dict of numpy arrays, rows packed from documents with no padding (documents span rows):
  inputs  int32   [B, T]   row[:, :-1] of rows holding T+1 tokens
  targets int32   [B, T]   row[:, 1:]
  mask    float32 [B, T]   1 where targets[b, t] counts in the loss: an SFT response and its EOS; all of pretraining

The data rooms, lowest first; each imports names from the rooms listed before it (`from sources import Reader`:
`tokenizer` and `sources` also name the objects passed around, which would hide the modules):
  corpus.py       the offline stdlib corpus, the cache directory, the 1-in-50 held-out rule every source uses
  tokenizer.py    EOS, the chat format of SFT examples, loading (or training) the tokenizer
  decontam.py     the benchmarks' 13-grams, and which tasks a document overlaps (it is then dropped and counted)
  sources.py      one source: parse its stage-file dict, stream its split, decontaminate and tokenise it (Reader)
  token_cache.py  every source tokenised once into memory-mapped shards, read back as a Reader would give them
  data.py         Batches, which draws documents from the sources by weight and packs them; the preview CLI

Run `python data.py STAGE_FILE` to preview a stage's data; with `--prepare DIR`, to tokenise it once into a token cache.
"""
import argparse
import time
from collections import Counter

import numpy as np

import cli
import storage
from decontam import benchmark_index
from sources import DataError, Reader, Source, parse_source
from token_cache import CacheDamaged, CachedReader, prepare, read_manifest
from tokenizer import TokenizerError, eos_id, literal_tokenizer, load_tokenizer

RNG_BLOCK = 4096  # mixture draws come from numpy in blocks; the state is just the number of draws
MATCHES_SHOWN = 10  # benchmark tasks named per source in decontamination_lines


class Batches:
    """Packed, mixed, sharded, resumable batches of batch_size rows per process (see the module docstring).

    They never run out (finite sources restart), so an eval calls reset() and takes a fixed number. split="val"
    reads each source's `val_split`, or for a source without one the 1 in 50 documents of its split that
    corpus.is_held_out picks, which split="train" leaves out. With `cache` (a directory or URL that
    token_cache.prepare wrote) they are read from its tokens, not tokenised: the same batches while no source is
    shuffled."""

    def __init__(self, sources, tokenizer, seq_len: int, batch_size: int, *, seed: int = 0, split: str = "train",
                 process_index: int = 0, process_count: int = 1, cache: str | None = None):
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        self.sources = [parse_source(s) for s in sources]
        if not self.sources:
            raise DataError("the mixture has no sources")
        self.seq_len, self.batch_size, self.seed, self.split = seq_len, batch_size, seed, split
        self.process_index, self.process_count, self.cache = process_index, process_count, cache
        if cache:
            self.readers = [CachedReader(cache, i, s, split, tokenizer, seq_len + 1, seed, process_index, process_count)
                            for i, s in enumerate(self.sources)]
        else:
            tok, eos = literal_tokenizer(tokenizer), eos_id(tokenizer)
            self.readers = [Reader(s, s.val_split if split == "val" and s.val_split else s.split,
                                   None if s.val_split else split == "val", tok, eos, seq_len + 1, seed,
                                   process_index, process_count) for s in self.sources]
        weights = np.array([s.weight for s in self.sources])
        self.cum_weights = np.cumsum(weights / weights.sum())
        self._block, self.draws, self.head, self.head_off = (None, None), 0, None, 0
        self._start = self.state_dict()
        if split == "val":  # find a source without held-out documents now, not at the first evaluation
            for r in self.readers:
                r.next_doc()
            self.reset()

    def __iter__(self):
        return self

    def reset(self):
        """Back to the first batch (e.g. before each evaluation)."""
        self.load_state_dict(self._start)

    def _draw(self) -> int:
        """Source index of the next document: draw k uses uniform k of a seeded counter-based stream."""
        block, i = divmod(self.draws, RNG_BLOCK)
        if self._block[0] != block:
            self._block = (block, np.random.default_rng([self.seed, self.process_index, block]).random(RNG_BLOCK))
        self.draws += 1
        return min(int(np.searchsorted(self.cum_weights, self._block[1][i], side="right")), len(self.readers) - 1)

    def __next__(self) -> dict:
        B, T = self.batch_size, self.seq_len
        need, tokens, masks = B * (T + 1), [], []
        while need:
            if self.head is None:
                self._next_head(0)
            ids, m = self.head
            end = min(len(ids), self.head_off + need)
            tokens.append(ids[self.head_off:end])
            masks.append(m[self.head_off:end])
            need -= end - self.head_off
            self.head_off = end
            if end == len(ids):
                self.head = None
        rows_BT1 = np.concatenate(tokens).reshape(B, T + 1)
        mask_BT = np.concatenate(masks).reshape(B, T + 1)[:, 1:].astype(np.float32)  # the predicted token's mask
        return {"inputs": rows_BT1[:, :-1], "targets": rows_BT1[:, 1:], "mask": mask_BT}

    def _state(self) -> dict:
        return {"draws": self.draws, "head_off": 0, "readers": [r.cursor() for r in self.readers]}

    def _next_head(self, head_off: int):
        """Draw the next document, remembering the state before it so a checkpoint can resume inside it."""
        self.head_state = self._state()
        self.head, self.head_off = self.readers[self._draw()].next_doc(), head_off

    def state_dict(self) -> dict:
        """Small JSON-serialisable position of this process's stream (save one per process)."""
        d = self._state() if self.head is None else dict(self.head_state, head_off=self.head_off)
        return dict(d, seq_len=self.seq_len, sources=[s.label for s in self.sources], split=self.split,
                    process=[self.process_index, self.process_count], token_cache=bool(self.cache))

    def load_state_dict(self, d: dict):
        """Continue exactly where state_dict() was taken."""
        mine, d = self.state_dict(), {"token_cache": False, **d}  # (states from before the cache read the stream)
        for key in ("seq_len", "sources", "split", "process", "token_cache"):
            if d.get(key) != mine[key]:
                raise DataError(f"data state does not match this run: {key} was {d.get(key)!r}, now {mine[key]!r}")
        self.draws, self.head = d["draws"], None
        for r, c in zip(self.readers, d["readers"]):
            r.load(c)
        if d["head_off"]:  # redraw the document the state was taken inside, and skip its used part
            self._next_head(d["head_off"])

    def stats(self) -> list[dict]:
        """Per source: documents and tokens handed out, examples dropped (too long or empty; overlapping the
        benchmarks: decontaminated, and matched: task id -> documents), epochs started."""
        return [{"source": s.label, "docs": r.docs, "tokens": r.tokens, "dropped": r.dropped,
                 "decontaminated": r.decontaminated, "matched": r.matched, "epoch": r.epoch}
                for s, r in zip(self.sources, self.readers)]

    def decontamination(self, tasks: bool = True) -> dict:
        """What train.py logs: per source that is decontaminated, the documents it dropped for overlapping the
        benchmarks and, with `tasks`, the tasks they matched (counted by this process, of the documents it read)."""
        return {s["source"]: {"docs": s["decontaminated"], **({"matched": s["matched"]} if tasks else {})}
                for s, src in zip(self.stats(), self.sources) if src.decontaminate}


def summed_decontamination(per_host: list[dict]) -> dict:
    """`Batches.decontamination` of every host as the run's: each host reads its own documents, so the documents
    dropped, and each task's matches, add up."""
    run = {}
    for counts in per_host:
        for source, d in counts.items():
            into = run.setdefault(source, {"docs": 0, **({"matched": {}} if "matched" in d else {})})
            into["docs"] += d["docs"]
            for task, n in d.get("matched", {}).items():
                into["matched"][task] = into["matched"].get(task, 0) + n
    return run


def held_out(*args, **kwargs) -> Batches | None:
    """Batches(*args, split="val", **kwargs), or None, said in one line, where a source has no held-out documents:
    a run then goes on without held-out loss. A damaged token cache is not that: it raises."""
    try:
        return Batches(*args, split="val", **kwargs)
    except CacheDamaged:
        raise
    except DataError as e:
        print(f"no held-out loss: {e}")
        return None


def decontamination_lines(sources: list[Source], stats: list[dict | None]) -> list[str]:
    """The rule and each source's count of documents dropped for overlapping the benchmarks, with the tasks they
    matched (the most often matched first), as the preview, --prepare and train.py --dry_run print them."""
    lines = [f"decontamination: {benchmark_index().summary()}" if any(s.decontaminate for s in sources) else
             "decontamination: off for every source"]
    for src, st in zip(sources, stats):
        if not src.decontaminate:
            lines.append(f"  {src.label}: off (decontaminate=False)")
        elif st is None:
            lines.append(f"  {src.label}: on (counted as it is read)")
        else:
            tasks = sorted(st["matched"].items(), key=lambda kv: -kv[1])
            lines.append(f"  {src.label}: {st['decontaminated']:,} documents dropped" + (": " + ", ".join(
                f"{t} ({n})" for t, n in tasks[:MATCHES_SHOWN]) + (f" and {len(tasks) - MATCHES_SHOWN} more tasks"
                                                                   if len(tasks) > MATCHES_SHOWN else "") if tasks else ""))
    return lines


def decontamination_plan(mixture: list, cache: str = "") -> list[str]:
    """decontamination_lines before a run (train.py --dry_run): the train split's counts where a token cache has
    them (its documents are decontaminated at --prepare), else what will be counted."""
    sources = [parse_source(s) for s in mixture]
    return decontamination_lines(sources, [(read_manifest(cache, i) or {}).get("train") if cache else None
                                           for i in range(len(sources))])


# ----------------------------------------------------------------------------- preview: python data.py STAGE_FILE

def render_row(tok, row_T1, mask_T) -> str:
    """Decode one packed row; tokens that count in the loss are shown [[like this]] when the row has a mask."""
    if mask_T.all():
        return tok.decode(row_T1.tolist(), skip_special_tokens=False)
    in_loss = np.concatenate([[False], mask_T > 0])  # row token j is the target of position j - 1
    starts = np.flatnonzero(np.diff(in_loss.astype(np.int8))) + 1  # where a run of in/out-of-loss tokens begins
    texts = [tok.decode(run.tolist(), skip_special_tokens=False) for run in np.split(row_T1, starts)]
    return "".join(f"[[{t}]]" if in_loss[i] else t for t, i in zip(texts, [0, *starts]))


def main(argv=None):
    p = argparse.ArgumentParser(description="Preview a stage's training data: decoded rows, mixture, throughput.")
    p.add_argument("stage", help="stage file (plain Python assignments: mixture, tokenizer, seq_len, batch_size)")
    p.add_argument("--batches", type=int, default=300, help="batches to time (default 300)")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--rows", type=int, default=2, help="rows to print decoded (default 2)")
    p.add_argument("--prepare", metavar="DIR", help="instead, tokenise every source once (both splits) into a token "
                                                    "cache in DIR, a directory or URL, for train.py's token_cache")
    p.add_argument("--cache", metavar="DIR", help="read the batches from this token cache too, and time both")
    args = cli.parse_args(p, argv)
    with cli.one_line_errors(DataError, TokenizerError, storage.StorageError):
        stage = cli.read_stage(args.stage)
        missing = [k for k in ("mixture", "tokenizer", "seq_len", "batch_size") if k not in stage]
        if missing:
            raise DataError(f"stage file {args.stage!r} does not set {missing}")
        tok = load_tokenizer(stage["tokenizer"])
        if args.prepare:
            t0, manifests = time.perf_counter(), prepare(stage["mixture"], tok, args.prepare)
            seconds, tokens = time.perf_counter() - t0, sum(m[s]["tokens"] for m in manifests for s in ("train", "val"))
            for m in manifests:
                print(f"{Source(**m['source']).label}: " + ", ".join(
                    f"{s} {m[s]['docs']:,} documents, {m[s]['tokens']:,} tokens" for s in ("train", "val")))
            print("\n".join(decontamination_lines([Source(**m["source"]) for m in manifests], [{
                "decontaminated": m["train"]["decontaminated"] + m["val"]["decontaminated"],  # both splits
                "matched": dict(Counter(m["train"]["matched"]) + Counter(m["val"]["matched"]))} for m in manifests])))
            print(f"token cache {args.prepare} written in {seconds:.1f} s ({tokens / seconds:,.0f} tokens/s)")
            return
        n, stage_args = max(args.batches, 1), (stage["mixture"], tok, stage["seq_len"], stage["batch_size"])
        batches = Batches(*stage_args, split=args.split)
        first, seconds = _timed(batches, n)
        if args.cache:  # rows and counts below are then the cache's
            batches = Batches(*stage_args, split=args.split, cache=args.cache)
            first, cache_seconds = _timed(batches, n)
    B, T = first["inputs"].shape
    print(f"stage {args.stage}: tokenizer {stage['tokenizer']} (vocab {tok.get_vocab_size()}, eos {eos_id(tok)}), "
          f"{B} rows x {T} tokens per batch, split {args.split}")
    for b in range(min(args.rows, B)):
        row_T1 = np.concatenate([first["inputs"][b], first["targets"][b, -1:]])
        print(f"\n--- row {b} ({int(first['mask'][b].sum())}/{T} targets in the loss) ---")
        print(render_row(tok, row_T1, first["mask"][b]))
    stats, weights = batches.stats(), sum(s.weight for s in batches.sources)
    docs, tokens = sum(s["docs"] for s in stats) or 1, sum(s["tokens"] for s in stats) or 1
    print(f"\n{'source':40s} {'weight':>7s} {'docs':>7s} {'tokens':>7s} {'tok/doc':>8s} {'dropped':>8s} epoch")
    for s, src in zip(stats, batches.sources):
        print(f"{s['source'][:40]:40s} {src.weight / weights:7.1%} {s['docs'] / docs:7.1%} {s['tokens'] / tokens:7.1%} "
              f"{s['tokens'] / max(s['docs'], 1):8.0f} {s['dropped']:8d} {s['epoch']}")
    print("\n" + "\n".join(decontamination_lines(batches.sources, stats)))
    print(f"\ntokenise+pack: {n * B * (T + 1) / seconds:,.0f} tokens/s ({n} batches in {seconds:.2f} s, "
          f"after a first batch)")
    if args.cache:
        print(f"token cache+pack: {n * B * (T + 1) / cache_seconds:,.0f} tokens/s ({n} batches in {cache_seconds:.2f} "
              f"s, {seconds / cache_seconds:.0f}x faster)")


def _timed(batches, n: int):
    """The first batch, and the seconds the next n take."""
    first, t0 = next(batches), time.perf_counter()
    for _ in range(n):
        next(batches)
    return first, time.perf_counter() - t0


if __name__ == "__main__":
    main()
