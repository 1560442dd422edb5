"""The token cache: every source of a mixture tokenised once (`python data.py STAGE --prepare DIR`), read back
memory-mapped (train.py's token_cache), the same documents in the same order as reading the sources would give.

Its layout: DIR/i/ for source i holds {split}-{k}.bin token shards, a {split}.npy index per split and, written
last, manifest.json (the source, the tokenizer's identity, the benchmarks it was decontaminated against, counts,
and each file's size and sha256). `prepare` prints a line every PROGRESS_SECONDS while it tokenises: a hub source
can take hours. A reader checks every file against the manifest before it uses it (_open_split): a damaged cache
is one line naming the file, never a traceback, nor training on what is left of it.
"""
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, replace

import numpy as np

import storage
from cli import hms
from decontam import benchmark_index
from sources import Cursor, DataError, Reader, Source, parse_source
from tokenizer import eos_id, literal_tokenizer

SHARD_TOKENS = 1 << 26  # a token cache's files hold about 64M tokens (128 MB as uint16) each
CHECK_TOKENS = 1 << 22  # a shard is checked (sha256, token ids) this many tokens at a time
PROGRESS_SECONDS = 5.0
TOKEN_DTYPES = ("uint16", "uint32")


def tokenizer_id(tok) -> str:
    """What a token cache records of the tokenizer it was built with: a SHA-256 of its JSON."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


class _CacheWriter(Cursor):
    """One split of one source into a token cache: token shards {split}-{k}.bin of about SHARD_TOKENS each (so
    neither writing nor downloading one holds more in memory), then {split}.npy, int64 [documents, 5]: each
    document's end in the split's tokens, prompt tokens (not in the loss), example number and file number in the
    stream (processes share the cache as they share the stream: shard_stream), and for a document that overlaps
    the benchmarks the number of its set of tasks in the manifest's "match_sets" (else -1)."""

    def __init__(self, path: str, split: str, dtype):
        self.path, self.split, self.dtype = path, split, dtype
        self.rows, self.pending, self.shards, self.start, self.end = [np.zeros((0, 5), np.int64)], [], [], 0, 0
        self.match_sets: dict[frozenset, int] = {}  # each set of tasks a document matched -> its number
        self.decontaminated, self.matched = 0, {}  # (Cursor.contaminated): what a reader of the whole split counts
        self.fingerprints = {}  # each file written -> storage.fingerprint, for the manifest

    def add(self, docs: list, example: int, file: int):
        """A chunk's examples, numbered from `example`, as Reader.tokenize returns them. An empty one (None) and one
        that overlaps the benchmarks (its tasks) are kept, with no tokens, to be dropped and counted when read, as in
        the stream."""
        rows = []
        for j, doc in enumerate(docs):
            if isinstance(doc, frozenset):
                self.contaminated(doc)
                rows.append((self.end, 0, example + j, file, self.match_sets.setdefault(doc, len(self.match_sets))))
            elif doc is not False:
                ids, mask = doc or (np.zeros(0, np.int32), np.zeros(0, bool))
                self.pending.append(ids.astype(self.dtype))
                self.end += len(ids)
                rows.append((self.end, len(mask) - int(mask.sum()), example + j, file, -1))
        self.rows.append(np.array(rows, np.int64).reshape(-1, 5))
        if self.end - self.start >= SHARD_TOKENS:
            self._flush()

    def _write(self, name: str, payload: bytes):
        storage.write_bytes(storage.join(self.path, name), payload)
        self.fingerprints[name] = storage.fingerprint(payload)

    def _flush(self):
        if self.end > self.start:
            self._write(f"{self.split}-{len(self.shards)}.bin", np.concatenate(self.pending).tobytes())
            self.shards.append(self.start)
        self.pending, self.start = [], self.end

    def close(self, files: int) -> dict:
        self._flush()
        index = io.BytesIO()
        np.save(index, np.concatenate(self.rows))
        self._write(f"{self.split}.npy", index.getvalue())
        return {"docs": sum(map(len, self.rows)), "tokens": self.end, "files": files, "shards": self.shards,
                "decontaminated": self.decontaminated, "matched": self.matched,
                "match_sets": [sorted(tasks) for tasks in self.match_sets], "fingerprints": self.fingerprints}


def prepare(sources, tokenizer, out: str) -> list[dict]:
    """Tokenise each source of a mixture once, both splits, into the token cache `out` (a directory or URL):
    source i in out/i/ (_CacheWriter), with manifest.json (source, tokenizer_id, counts) written last."""
    tok, eos, manifests = literal_tokenizer(tokenizer), eos_id(tokenizer), []
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
    for i, src in enumerate(map(parse_source, sources)):
        sub = storage.join(out, str(i))
        storage.remove(storage.join(sub, "manifest.json"))  # a cache prepared again is unusable until it is whole again
        m = {"source": asdict(src), "tokenizer": tokenizer_id(tokenizer), "dtype": np.dtype(dtype).name,
             "decontamination": benchmark_index().summary() if src.decontaminate else "off"}
        # one pass per stream: the val_split's, or the split's documents on both sides of corpus.is_held_out
        passes = ([(src.split, {"train": None}), (src.val_split, {"val": None})] if src.val_split
                  else [(src.split, {"train": False, "val": True})])
        for split, outputs in passes:
            r = Reader(replace(src, shuffle=False), split, None, tok, eos, sys.maxsize, 0, 0, 1)
            files, example, writers = r.whole.n_shards, 0, {name: _CacheWriter(sub, name, dtype) for name in outputs}
            progress = _Progress(f"{src.label} split {split!r}", files, r.whole)
            for f, columns, n in r.chunks_by_file():
                for name, held_out in outputs.items():
                    writers[name].add(r.tokenize(columns, held_out), example, f)
                example += n
                progress.update(f, example, sum(w.end for w in writers.values()))
            m |= {name: w.close(files) for name, w in writers.items()}
        # last: a reader that finds it finds the rest
        storage.write_bytes(storage.join(sub, "manifest.json"), json.dumps(m).encode())
        manifests.append(m)
    return manifests


class _Progress:
    """A line on stdout every PROGRESS_SECONDS while one split of a source is tokenised (lines, not a bar, so a log
    file shows them too): examples and tokens so far, the rate, and an ETA from the examples the dataset's metadata
    announce, else from the share of its files done (a stream knows no more)."""

    def __init__(self, what: str, files: int, ds):
        self.what, self.files, self.t0 = what, files, time.perf_counter()
        self.last = self.t0
        split = (getattr(ds.info, "splits", None) or {}).get(str(ds.split))
        self.total = getattr(split, "num_examples", None) or None

    def update(self, file: int, examples: int, tokens: int):
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last, seconds = now, now - self.t0
        done = examples / self.total if self.total else file / self.files  # (files before this one are done)
        eta = f"ETA {hms(seconds * (1 - done) / done)}" if 0 < done < 1 else "ETA unknown (in the first file)"
        print(f"{self.what}: {examples:,} examples, {tokens:,} tokens in {hms(seconds)} ({tokens / seconds:,.0f} "
              f"tokens/s), file {file + 1} of {self.files}, {eta}", flush=True)


AGAIN = "prepare the cache again (python data.py STAGE --prepare DIR)"


class CacheDamaged(DataError):
    """A cache file that is not what its manifest says (damaged, cut short, missing), or a manifest that is not one:
    never a reason to go on without the cache (train.py goes on without held-out loss only when there is none)."""

MANIFEST = {"source": dict, "tokenizer": str, "dtype": str}  # what a reader uses of a manifest, and its type
MANIFEST_SPLIT = {"docs": int, "tokens": int, "files": int, "shards": list, "match_sets": list, "fingerprints": dict}


def read_manifest(cache: str, i: int) -> dict | None:
    """Source i's manifest.json in the token cache `cache` (None if it has none: not prepared, or not finished)."""
    path = storage.join(cache, str(i), "manifest.json")
    try:
        m = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        return None
    except ValueError as e:  # (not UTF-8, or not JSON)
        raise CacheDamaged(f"{path} is not a token cache's manifest ({e}): {AGAIN}") from None
    if not isinstance(m, dict):
        raise CacheDamaged(f"{path} is not a token cache's manifest ({json.dumps(m)[:20]} is not a JSON object): "
                           f"{AGAIN}")
    return m


def _malformed(m: dict, split: str) -> str:
    """What keeps manifest `m` from describing `split`'s files, or "": each field a reader uses has its type, the
    fingerprints name the index and each shard, and the shards' sizes add up to their offsets and the token count."""
    s = m.get(split)
    if isinstance(s, dict) and "docs" in s and "fingerprints" not in s:
        return "it was prepared before the cache's files carried checksums"
    for d, fields, where in ((m, MANIFEST, ""), (s, MANIFEST_SPLIT, f"{split}.")):
        if not isinstance(d, dict):
            return f"{where.rstrip('.') or 'the manifest'} is not a JSON object"
        bad = next((k for k, kind in fields.items() if not isinstance(d.get(k), kind)), None)
        if bad:
            return f"{where}{bad} is " + (f"{d[bad]!r}, not a JSON {fields[bad].__name__}" if bad in d else "missing")
    if m["dtype"] not in TOKEN_DTYPES:
        return f"dtype is {m['dtype']!r}, not one of {TOKEN_DTYPES}"
    fps, names = s["fingerprints"], _files(split, s)
    if sorted(fps) != sorted(names):
        return f"{split} has {len(s['shards'])} shards, its fingerprints are of {sorted(fps)}"
    if not all(isinstance(fp, dict) and isinstance(fp.get("bytes"), int) and fp["bytes"] > 0
               and isinstance(fp.get("sha256"), str) for fp in fps.values()):
        return f"{split}.fingerprints are not all {{'bytes': a positive size, 'sha256': hex}}"
    itemsize, starts = np.dtype(m["dtype"]).itemsize, [0]
    for name in names[1:]:
        if fps[name]["bytes"] % itemsize:
            return f"{name} has {fps[name]['bytes']:,} bytes, not a whole number of {m['dtype']} tokens"
        starts.append(starts[-1] + fps[name]["bytes"] // itemsize)
    if s["shards"] != starts[:-1] or s["tokens"] != starts[-1]:
        return (f"{split} has {s['tokens']:,} tokens in shards starting at {s['shards'][:4]}, its shards' sizes "
                f"add up to {starts[-1]:,} tokens starting at {starts[:-1][:4]}")
    return ""


def _files(split: str, s: dict) -> list[str]:
    """The names of a split's files: its index, then its shards."""
    return [f"{split}.npy", *(f"{split}-{k}.bin" for k in range(len(s["shards"])))]


def _open_split(sub: str, m: dict, split: str, vocab: int) -> tuple:
    """(index int64 [docs, 5], token shards memory-mapped) of one split of source directory `sub`, each file checked
    against manifest `m` (in which `_malformed` found nothing) before it is used, a damaged file being one line
    naming it: first every file's size, before anything is read, allocated or mapped (so a shard cut short, empty
    or gone is found, and an index header never claims more than its file holds), then each file's sha256 and, in
    the same pass over a shard, that its token ids are below the tokenizer's `vocab`. A URL's files are downloaded
    first (storage.download)."""
    fps, names = m[split]["fingerprints"], _files(split, m[split])
    local = storage.download(sub, names)
    for name in names:
        path = os.path.join(local, name)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size != fps[name]["bytes"]:
            what = "missing" if size is None else f"damaged ({size:,} bytes, its manifest says {fps[name]['bytes']:,})"
            raise CacheDamaged(f"{storage.join(sub, name)} is {what}: {AGAIN}")
    index_N5 = _read_index(storage.join(sub, names[0]), os.path.join(local, names[0]), m[split])
    return index_N5, [_checked_shard(storage.join(sub, name), os.path.join(local, name), np.dtype(m["dtype"]),
                                     fps[name], vocab) for name in names[1:]]


def _read_index(name: str, path: str, s: dict) -> np.ndarray:
    """Index `name` int64 [docs, 5] from local file `path`, of the size s["fingerprints"] says: if its sha256 is the
    manifest's, its .npy header the one np.save writes for s["docs"] documents and its last document ends at
    s["tokens"]. (Its array is read from the checked bytes: np.load would allocate whatever the header says.)"""
    with open(path, "rb") as f:
        payload = f.read()
    _check(name, storage.fingerprint(payload), s["fingerprints"][os.path.basename(path)])
    f = io.BytesIO(payload)
    try:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
        header = read_header(f)
    except (ValueError, KeyError) as e:  # (a bad magic string, version or header)
        raise CacheDamaged(f"{name} is not an index as prepare writes one ({e}): {AGAIN}") from None
    expected = ((s["docs"], 5), False, np.dtype("<i8"))  # (shape, Fortran order, dtype)
    if header != expected or len(payload) - f.tell() != s["docs"] * 5 * 8:
        raise CacheDamaged(f"{name} holds an array {header[0]} of {header[2]}, its manifest says {s['docs']:,} "
                           f"documents: {AGAIN}")
    index_N5 = np.frombuffer(payload, np.int64, offset=f.tell()).reshape(s["docs"], 5)
    ends = index_N5[:, 0]
    if len(ends) and (ends[-1] != s["tokens"] or ends[0] < 0 or np.any(ends[1:] < ends[:-1])):
        raise CacheDamaged(f"{name}'s documents end at token {ends[-1]:,}, its manifest says the split has "
                           f"{s['tokens']:,} (or they are out of order): {AGAIN}")
    if len(ends) and index_N5[:, 4].max() >= len(s["match_sets"]):
        raise CacheDamaged(f"{name} refers to benchmark match set {index_N5[:, 4].max()}, its manifest lists "
                           f"{len(s['match_sets'])}: {AGAIN}")
    return index_N5


def _check(name: str, got: dict, expected: dict) -> None:
    """storage.check, its CorruptFile a CacheDamaged that says what to do."""
    try:
        storage.check(name, got, expected)
    except storage.CorruptFile as e:
        raise CacheDamaged(f"{e}: {AGAIN}") from None


def _checked_shard(name: str, path: str, dtype, expected: dict, vocab: int) -> np.memmap:
    """Shard `name` memory-mapped from local file `path` (of the size `expected` says), once its sha256 is
    `expected`'s and its token ids are below `vocab`: one pass, CHECK_TOKENS at a time, which is all that checking
    holds in memory. (The same sha256 as storage.fingerprint of the whole file.)"""
    tokens, sha, top = np.memmap(path, dtype, "r"), hashlib.sha256(), 0
    for start in range(0, len(tokens), CHECK_TOKENS):
        chunk = tokens[start:start + CHECK_TOKENS]
        sha.update(chunk)
        top = max(top, int(chunk.max()))
    _check(name, {"bytes": tokens.nbytes, "sha256": sha.hexdigest()}, expected)
    if top >= vocab:
        raise CacheDamaged(f"{name} holds token id {top:,}, this tokenizer has {vocab:,}: {AGAIN}")
    return tokens


class CachedReader(Cursor):
    """One source's share of a token cache (prepare): the documents its Reader would hand out, memory-mapped.

    Its cursor is (epoch, position in this process's documents): in stream order, or with shuffle=True in a
    permutation seeded by (seed, epoch). Processes share documents as shard_stream does."""
    CURSOR = ("epoch", "pos", "docs", "tokens", "dropped", "decontaminated", "matched")

    def __init__(self, cache: str, i: int, src: Source, split: str, tokenizer, max_len: int, seed: int,
                 process_index: int, process_count: int):
        sub, self.src, self.max_len, self.seed = storage.join(cache, str(i)), src, max_len, seed
        self.order = (None, None)
        m = read_manifest(cache, i)
        if m is None:
            raise DataError(f"token cache {cache} has no source {i} ({src.label}): run `python data.py STAGE "
                            f"--prepare {cache}`")
        if wrong := _malformed(m, split):
            raise CacheDamaged(f"{storage.join(sub, 'manifest.json')} is malformed ({wrong}): {AGAIN}")
        built, now = ({k: v for k, v in d.items() if k not in ("weight", "shuffle")}  # (choices at read time)
                      for d in (m["source"], asdict(src)))
        diff = next((k for k in now if built.get(k) != now[k]), None)
        if diff:
            raise DataError(f"token cache {sub} was built for another source: {diff} {built.get(diff)!r}, this "
                            f"stage's is {now[diff]!r}; prepare the cache again")
        tok_id = tokenizer_id(tokenizer)
        if m["tokenizer"] != tok_id:
            raise DataError(f"token cache {sub} was built with another tokenizer (sha256 {m['tokenizer'][:12]}, this "
                            f"one's is {tok_id[:12]}); prepare the cache again with this one")
        index_N5, self.shards = _open_split(sub, m, split, tokenizer.get_vocab_size())
        self.ends, self.prompts, example, file, self.match = index_N5.T
        self.match_sets = [frozenset(tasks) for tasks in m[split]["match_sets"]]
        self.starts, self.shard_starts = np.concatenate([[0], self.ends[:-1]]), np.array(m[split]["shards"])
        self.mine = np.flatnonzero((file if m[split]["files"] % process_count == 0 else example)
                                   % process_count == process_index)
        lengths = (self.ends - self.starts)[self.mine]
        if not np.any((lengths > 0) & ((lengths <= max_len) | (not src.sft))):
            raise DataError(f"source {src.label} split {split!r} in token cache {sub} (process {process_index} of "
                            f"{process_count}): none of its documents is usable (empty, an SFT example longer than "
                            f"seq_len + 1 = {max_len} tokens, or none held out: give the source a val_split)")
        self.load({})

    def next_doc(self):
        """(tokens int32 [n], loss mask bool [n]) of the next usable document."""
        while True:
            if self.pos == len(self.mine):
                self.epoch, self.pos = self.epoch + 1, 0
            if self.order[0] != self.epoch:
                self.order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(self.mine)
                              if self.src.shuffle else self.mine)
            d = self.order[1][self.pos]
            self.pos += 1
            start, end = self.starts[d], self.ends[d]
            if end > start and (end - start <= self.max_len or not self.src.sft):
                self.docs, self.tokens = self.docs + 1, self.tokens + int(end - start)
                k = np.searchsorted(self.shard_starts, start, "right") - 1
                ids = self.shards[k][start - self.shard_starts[k]:end - self.shard_starts[k]].astype(np.int32)
                return ids, np.arange(end - start) >= self.prompts[d]
            if self.match[d] >= 0:  # it overlaps these benchmark tasks: left out at --prepare, counted as Reader does
                self.contaminated(self.match_sets[self.match[d]])
            else:
                self.dropped += 1  # empty, or an SFT example too long for a row


