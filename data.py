"""Data for smallcoder: tokenizer, sources, mixtures, packing, SFT loss masks, resumable iteration (README: Data).

A batch is a dict of numpy arrays, rows packed from documents with no padding (documents span rows):
  inputs  int32   [B, T]   row[:, :-1] of rows holding T+1 tokens
  targets int32   [B, T]   row[:, 1:]
  mask    float32 [B, T]   1 where targets[b, t] counts in the loss: an SFT response and its EOS; all of pretraining

Run `python data.py STAGE_FILE` to preview a stage's data; with `--prepare DIR`, to tokenise it once into a token cache.
"""
import argparse
import glob
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

import cli
import corpus
import storage
from tokenizer import CHAT_FORMAT, TokenizerError, eos_id, literal_tokenizer, load_tokenizer

CHUNK_CHARS = 1 << 20  # tokenise ~1 MB of text per encode_batch call: enough work for every core
CHUNK_DOCS = 1024
PIECE_CHARS = 1 << 16  # a longer text is tokenised in pieces (_pieces), so one huge document cannot exhaust memory
SHARD_TOKENS = 1 << 26  # a token cache's files hold about 64M tokens (128 MB as uint16) each
READ_BATCH = 64  # examples per datasets batch: reading them one by one costs ~100 us each
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}  # suffix -> datasets builder
STDLIB_SOURCES = {"stdlib": {"val_split": "val"},  # the embedded corpora's defaults: held-out split, SFT fields
                  "stdlib_sft": {"val_split": "val", "prompt": "prompt", "response": "response"}}
RETRIES = 8  # a transient read error is retried after 1, 2, 4, ... 60 s (~3 minutes in all), then it is fatal
RNG_BLOCK = 4096  # mixture draws come from numpy in blocks; the state is just the number of draws


class DataError(ValueError):
    """Bad user input or unusable data; the message is meant to be shown as one line."""


# ----------------------------------------------------------------------------- sources (plain dicts in stage files)

@dataclass(frozen=True)
class Source:
    """One dataset in a mixture. `path`: hub id, local glob ("{split}" is replaced by the split), or stdlib."""
    path: str
    weight: float
    name: str | None = None        # hub config
    data_dir: str | None = None
    split: str = "train"
    val_split: str | None = None   # held-out split for Batches(split="val"); else 1 in HELD_OUT documents
    text: str = "text"             # pretraining text field
    prompt: str | None = None      # SFT: prompt and response fields -> User/Assistant chat format
    response: str | None = None
    chat_text: bool = False        # SFT whose `text` field is already the whole exchange
    shuffle: bool = False          # seeded: the order of its files each epoch, and of the examples in each chunk

    @property
    def sft(self) -> bool:
        return self.prompt is not None or self.chat_text

    @property
    def fields(self) -> tuple[str, ...]:
        """The text fields read from each example."""
        return (self.prompt, self.response) if self.prompt is not None else (self.text,)

    @property
    def label(self) -> str:
        return self.path + (f"[{self.name}]" if self.name else "") + (f"/{self.data_dir}" if self.data_dir else "")


def parse_source(d: dict) -> Source:
    """Check one source dict from a stage file and turn it into a Source."""
    if not isinstance(d, dict):
        raise DataError(f"a mixture entry must be a dict, got {d!r}")
    known = [f.name for f in fields(Source)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise DataError(f"source {d.get('path', d)!r}: unknown key(s) {unknown}; known keys are {known}")
    if "path" not in d or "weight" not in d:
        raise DataError(f"source {d!r} needs both 'path' and 'weight'")
    w = d["weight"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise DataError(f"source {d['path']!r}: weight must be a positive number, got {w!r}")
    d = {**STDLIB_SOURCES.get(d["path"], {}), **d, "weight": float(w)}
    if (d.get("prompt") is None) != (d.get("response") is None):
        raise DataError(f"source {d['path']!r}: 'prompt' and 'response' go together")
    if d.get("chat_text") and d.get("prompt") is not None:
        raise DataError(f"source {d['path']!r}: use either chat_text or prompt/response, not both")
    return Source(**d)


def _is_local(path: str) -> bool:
    """Local files (a path or glob) or the embedded corpus; anything else is a hub dataset id."""
    return (path in STDLIB_SOURCES or path.startswith(("/", ".", "~")) or any(c in path for c in "*?[{")
            or path.endswith(tuple(BUILDERS)) or os.path.exists(path))


def local_files(src: Source, split: str) -> list[str] | None:
    """The files of a local source's split, sorted (None for a hub dataset)."""
    if not _is_local(src.path):
        return None
    pattern = os.path.expanduser(src.path.replace("{split}", split))
    files = (corpus.stdlib_corpus(src.path).get(split, []) if src.path in STDLIB_SOURCES
             else sorted(glob.glob(pattern, recursive=True)))
    if not files:
        raise DataError(f"source {src.label}: no files match {pattern!r}")
    if not any(os.path.getsize(f) for f in files):  # (datasets would stop with a bare StopIteration)
        raise DataError(f"source {src.label}: " + (f"file {files[0]} is empty" if len(files) == 1 else
                                                   f"all {len(files)} files are empty, e.g. {files[0]}"))
    return files


def open_stream(src: Source, split: str):
    """One split of a source, as a streaming datasets.IterableDataset. Local files take the same
    `load_dataset(..., streaming=True)` path as hub datasets, so they exercise the code a TPU run uses."""
    import datasets
    builder, files, kwargs = src.path, local_files(src, split), {}
    if files:
        builders = {BUILDERS.get(Path(f).suffix) for f in files}
        if len(builders) != 1 or None in builders:
            raise DataError(f"source {src.label}: files must be all .jsonl/.json, all .parquet or all .txt")
        builder = builders.pop()
        kwargs = {"sample_by": "document"} if builder == "text" else {}  # a .txt file is one document, not one per line
        # Its "Failed to load JSON from file" log line would precede our one-line error (_open_error), which also
        # names the line.
        logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    try:
        ds = datasets.load_dataset(builder, name=src.name, data_dir=src.data_dir, data_files=files and {split: files},
                                   split=split, streaming=True, **kwargs)
    except Exception as e:
        raise _open_error(src, split, e) from None
    return ds


def shard_stream(ds, process_index: int, process_count: int, order_seed=None):
    """This process's part of a stream: disjoint and complete, by file when the files (datasets' shards) divide
    evenly among processes, else every n-th example. With order_seed the files come in a seeded order (the same on
    every process, so the parts stay disjoint)."""
    import datasets
    from datasets.distributed import split_dataset_by_node
    if order_seed is not None:
        ds = datasets.concatenate_datasets([ds.shard(ds.n_shards, int(k))
                                            for k in np.random.default_rng(order_seed).permutation(ds.n_shards)])
    return split_dataset_by_node(ds, rank=process_index, world_size=process_count)


def _open_error(src: Source, split: str, e: Exception) -> DataError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if _is_local(src.path):
        return DataError(f"source {src.label} split {split!r}: {first_bad_line(src, split) or msg}")
    return DataError(f"could not open hub dataset {src.label} split {split!r} ({type(e).__name__}: {msg[:200]}). "
                     f"The hub may be unreachable, or the dataset gated (accept its terms on huggingface.co and "
                     f"`huggingface-cli login`); to train offline, download its files and set path to a local "
                     f"glob such as 'data/*.jsonl' or 'data/*.parquet'")


def _transient(e: BaseException) -> bool:
    """Whether a read error is worth retrying: HTTP 408/429/5xx (the hub's rate limit, an overloaded server) or a
    dropped or timed-out connection (requests' and httpx's errors by name), anywhere in its chain of causes. Auth,
    gated and not-found errors are not."""
    while e is not None:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (408, 429) or (isinstance(status, int) and status >= 500) or isinstance(
                e, (ConnectionError, TimeoutError)) or re.search("Timeout|Connect|RemoteProtocol", type(e).__name__):
            return True
        e = e.__cause__ or e.__context__
    return False


def first_bad_line(src: Source, split: str) -> str | None:
    """Where a local source's jsonl files first hold a line that is not a JSON object with text in src's fields:
    "file line n: what". Read only after an error, whose own message names neither file nor line."""
    for f in local_files(src, split):
        if not f.endswith(".jsonl"):
            continue
        with open(f, encoding="utf-8", errors="replace") as lines:
            for n, line in enumerate(lines, 1):
                try:
                    row = json.loads(line) if line.strip() else {}
                except ValueError as e:
                    return f"{f} line {n} is not JSON ({e})"
                if not isinstance(row, dict):
                    return f"{f} line {n} is not a JSON object"
                for k in src.fields:
                    if row.get(k) is not None and not isinstance(row[k], str):
                        return f"{f} line {n}: field {k!r} is {type(row[k]).__name__}, not a string"
    return None


# ----------------------------------------------------------------------------- one source's reader

class _Cursor:
    """A reader's position and statistics: its attributes named in CURSOR, saved as a JSON-serialisable dict."""
    CURSOR: tuple = ()

    def cursor(self) -> dict:
        return {k: getattr(self, k) for k in self.CURSOR}

    def load(self, c: dict):
        for k in self.CURSOR:
            setattr(self, k, c.get(k, 0))  # (states saved before a key existed lack it: it was 0)


class _Reader(_Cursor):
    """Reads one source's shard in chunks, tokenises each chunk with one encode_batch call, hands out documents.

    Its cursor is (epoch, chunk number, datasets state at the chunk's start, examples consumed since): a restore
    re-reads at most one chunk. A finite source restarts in the same order, unless shuffled: then each epoch reads
    the files in a new seeded order, and each chunk (the shuffle buffer: up to CHUNK_DOCS examples) in an order
    seeded by (seed, epoch, chunk), so the cursor stays exact (datasets' own shuffle buffer cannot be restored)."""
    CURSOR = ("epoch", "chunk", "state", "consumed", "epoch_docs", "docs", "tokens", "dropped")  # position, stats

    def __init__(self, src: Source, split: str, held_out: bool | None, tok, eos: int, max_len: int, seed: int,
                 process_index: int, process_count: int):
        # held_out: None reads every example; True only, or False all but, those is_held_out picks
        self.src, self.split, self.held_out, self.tok, self.eos, self.max_len = src, split, held_out, tok, eos, max_len
        self.seed, self.process, self.whole = seed, (process_index, process_count), open_stream(src, split)
        self._open(0)
        self.where = f"source {src.label} split {split!r} (process {process_index} of {process_count})"
        self.load(dict.fromkeys(self.CURSOR, 0) | {"state": None})

    def _open(self, epoch: int):
        """This process's stream in `epoch` (the same in every epoch unless the source is shuffled)."""
        self.ds = shard_stream(self.whole, *self.process, [self.seed, epoch] if self.src.shuffle else None)
        self.initial, self.ds_epoch = self.ds.state_dict(), epoch

    def load(self, c: dict):
        super().load(c)
        self.queue, self.it = deque(), None

    def next_doc(self):
        """(tokens int32 [n], loss mask bool [n]) of the next usable document."""
        while True:
            while not self.queue:  # (a restored chunk may have been used up entirely already)
                self._fill()
            doc = self.queue.popleft()
            self.consumed += 1
            if doc:
                self.docs += 1
                self.epoch_docs += 1
                self.tokens += len(doc[0])
                return doc
            self.dropped += doc is None  # too long for a row, or empty (False: on the other side of the held-out rule)

    def _fill(self):
        columns, n = self._next_chunk()
        if n:  # skip the examples of this chunk used before the checkpoint (none unless just restored)
            self.queue.extend(self._tokenize({k: v[self.consumed:] for k, v in columns.items()}, self.held_out))
        elif self.epoch_docs:  # end of an epoch: next_doc calls again, which restarts the stream
            self.epoch, self.chunk, self.state, self.consumed, self.it = self.epoch + 1, 0, None, 0, None
            self.epoch_docs = 0
        elif self.state is None:
            raise DataError(f"{self.where} is empty")
        elif self.held_out and not self.dropped:
            raise DataError(f"{self.where}: none of its examples is held out (1 in {corpus.HELD_OUT} are, chosen by a "
                            f"hash of the text); give the source a val_split")
        else:
            raise DataError(f"{self.where}: every example was dropped (empty, an SFT example longer than seq_len + 1 "
                            f"= {self.max_len} tokens, or held out: 1 in {corpus.HELD_OUT} are, by a hash of the text)")

    def _next_chunk(self) -> tuple[dict, int]:
        """The columns of the chunk after the last one read (or at the cursor), shuffled if the source is."""
        if self.it is None:  # (re)start at the cursor
            if self.src.shuffle and self.ds_epoch != self.epoch:
                self._open(self.epoch)
            self._rewind()
        else:
            self.state, self.consumed, self.chunk = self.ds.state_dict(), 0, self.chunk + 1
        columns, n = self._read_chunk()
        if n and self.src.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, self.chunk]).permutation(n)
            columns = {k: [v[i] for i in order] for k, v in columns.items()}
        return columns, n

    def _read_chunk(self) -> tuple[dict, int]:
        """Columns of the next CHUNK_DOCS examples, or fewer holding CHUNK_CHARS characters, and their count.
        datasets' state_dict is exact at batch boundaries and a chunk's end depends only on its start state,
        so a restore re-reads the same chunk; so does a transient error (_transient), after a backoff."""
        for attempt in range(RETRIES + 1):
            columns, n, chars = {}, 0, 0
            try:
                for batch in self.it:
                    for k, v in batch.items():
                        columns.setdefault(k, []).extend(v)
                    n += len(next(iter(batch.values())))
                    chars += sum(len(x) for v in batch.values() for x in v if isinstance(x, str))
                    if n >= CHUNK_DOCS or chars >= CHUNK_CHARS:
                        break
                return columns, n
            except Exception as e:
                if attempt == RETRIES or not _transient(e):
                    raise _open_error(self.src, self.split, e) from None
                wait = min(2 ** attempt, 60)
                print(f"{self.where}: {type(e).__name__}: {str(e)[:200]}; reading it again in {wait} s",
                      file=sys.stderr)
                time.sleep(wait)
                self._rewind()

    def _rewind(self):
        """Read again from the start of the current chunk (the stream's state there)."""
        self.ds.load_state_dict(self.state or self.initial)
        self.it = self.ds.iter(batch_size=READ_BATCH)

    def _column(self, columns: dict, key: str) -> list[str]:
        if key not in columns:
            raise DataError(f"{self.where} has no field {key!r}; its fields are {sorted(columns)}")
        bad = next((x for x in columns[key] if x is not None and not isinstance(x, str)), None)
        if bad is not None:
            raise DataError(f"{self.where}: " + (first_bad_line(self.src, self.split) or
                                                 f"field {key!r} is {type(bad).__name__}, not a string"))
        return [x or "" for x in columns[key]]

    def _tokenize(self, columns: dict, held_out: bool | None) -> list:
        """One (tokens, mask) per example; None for one that is dropped, False for one on the other side of the
        held-out rule (never tokenised; held_out as in __init__)."""
        columns = {k: self._column(columns, k) for k in self.src.fields}
        mine = [True] * len(next(iter(columns.values())))
        if held_out is not None:
            mine = [corpus.is_held_out("\0".join(x)) == held_out for x in zip(*columns.values())]
            columns = {k: [x for x, m in zip(v, mine) if m] for k, v in columns.items()}
        docs = iter(self._encode(columns))
        return [next(docs) if m else False for m in mine]

    def _encode(self, columns: dict) -> list:
        """(tokens, mask) or None of each example; ~CHUNK_CHARS per Rust call, long texts in pieces (_pieces): the
        tokenizer's working memory, ~100 bytes per character, stays bounded."""
        def encode(texts):  # each text's tokens as int32 arrays, one per piece
            ids = [[] for _ in texts]
            for group in _groups(texts):
                for (i, _), e in zip(group, getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)(
                        [piece for _, piece in group], add_special_tokens=False)):
                    ids[i].append(np.array(e.ids, np.int32))
            return ids
        if self.src.prompt is None:  # pretraining text, or chat_text SFT (trained on whole, as if with no prompt)
            texts = columns[self.src.text]
            prompts = [[]] * len(texts)
        else:
            # SFT: prompt and response are tokenised apart so the mask boundary is exact. The space after
            # "Assistant:" is the response's (byte-level BPE joins it to the next word): sample.py's prompt omits it.
            prompts = encode([CHAT_FORMAT.format(prompt=p) for p in columns[self.src.prompt]])
            texts = [" " + r for r in columns[self.src.response]]
        docs, eos = [], np.array([self.eos], np.int32)
        for t, p, r in zip(texts, prompts, encode(texts)):
            a = np.concatenate([*p, *r, eos])
            if not t or (self.src.sft and len(a) > self.max_len):  # never cut SFT: it would teach not to stop
                docs.append(None)
                continue
            m = np.ones(len(a), bool)  # the loss mask: response and EOS (all of a document)
            m[:sum(map(len, p))] = False
            docs.append((a, m))
        return docs


def _pieces(text: str):
    """`text` in pieces of at most PIECE_CHARS, each cut just before a line break that follows a non-space: no
    pre-token of a byte-level BPE (GPT-2's split pattern, StarCoder's) spans such a point, so the pieces' tokens are
    the whole text's. A text with no such point in PIECE_CHARS characters is cut there (tokens may differ there)."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind("\n", start + 1, start + PIECE_CHARS)
        while cut > start and text[cut - 1].isspace():
            cut = text.rfind("\n", start + 1, cut)
        cut = cut if cut > start else start + PIECE_CHARS
        yield text[start:cut]
        start = cut
    yield text[start:]


def _groups(texts: list[str]):
    """Lists of (text index, piece) holding about CHUNK_CHARS characters each, in order."""
    group, chars = [], 0
    for i, text in enumerate(texts):
        for piece in _pieces(text):
            if group and chars + len(piece) > CHUNK_CHARS:
                yield group
                group, chars = [], 0
            group.append((i, piece))
            chars += len(piece)
    yield group


# ----------------------------------------------------------------------------- the token cache

def tokenizer_id(tok) -> str:
    """What a token cache records of the tokenizer it was built with: a SHA-256 of its JSON."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


class _CacheWriter:
    """One split of one source into a token cache: token shards {split}-{k}.bin of about SHARD_TOKENS each (so
    neither writing nor downloading one holds more in memory), then {split}.npy, int64 [documents, 4]: each
    document's end in the split's tokens, prompt tokens (not in the loss), example number and file number in the
    stream (processes share the cache as they share the stream: shard_stream)."""

    def __init__(self, path: str, split: str, dtype):
        self.path, self.split, self.dtype = path, split, dtype
        self.rows, self.pending, self.shards, self.start, self.end = [np.zeros((0, 4), np.int64)], [], [], 0, 0

    def add(self, docs: list, example: int, file: int):
        """A chunk's examples, numbered from `example`, as _tokenize returns them; an empty one (None) is kept, with
        no tokens, and drops when read, as in the stream."""
        rows = []
        for j, doc in enumerate(docs):
            if doc is not False:
                ids, mask = doc or (np.zeros(0, np.int32), np.zeros(0, bool))
                self.pending.append(ids.astype(self.dtype))
                self.end += len(ids)
                rows.append((self.end, len(mask) - int(mask.sum()), example + j, file))
        self.rows.append(np.array(rows, np.int64).reshape(-1, 4))
        if self.end - self.start >= SHARD_TOKENS:
            self._flush()

    def _flush(self):
        if self.end > self.start:
            shard = storage.join(self.path, f"{self.split}-{len(self.shards)}.bin")
            storage.write_bytes(shard, np.concatenate(self.pending).tobytes())
            self.shards.append(self.start)
        self.pending, self.start = [], self.end

    def close(self, files: int) -> dict:
        self._flush()
        index = io.BytesIO()
        np.save(index, np.concatenate(self.rows))
        storage.write_bytes(storage.join(self.path, f"{self.split}.npy"), index.getvalue())
        return {"docs": sum(map(len, self.rows)), "tokens": self.end, "files": files, "shards": self.shards}


def prepare(sources, tokenizer, out: str) -> list[dict]:
    """Tokenise each source of a mixture once, both splits, into the token cache `out` (a directory or URL):
    source i in out/i/ (_CacheWriter), with manifest.json (source, tokenizer_id, counts) written last."""
    tok, eos, manifests = literal_tokenizer(tokenizer), eos_id(tokenizer), []
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
    for i, src in enumerate(map(parse_source, sources)):
        sub = storage.join(out, str(i))
        storage.remove(storage.join(sub, "manifest.json"))  # a cache prepared again is unusable until it is whole again
        m = {"source": asdict(src), "tokenizer": tokenizer_id(tokenizer), "dtype": np.dtype(dtype).name}
        # one pass per stream: the val_split's, or the split's documents on both sides of is_held_out
        passes = ([(src.split, {"train": None}), (src.val_split, {"val": None})] if src.val_split
                  else [(src.split, {"train": False, "val": True})])
        for split, outputs in passes:
            r = _Reader(replace(src, shuffle=False), split, None, tok, eos, sys.maxsize, 0, 0, 1)
            files, example, writers = r.whole.n_shards, 0, {name: _CacheWriter(sub, name, dtype) for name in outputs}
            for f in range(files):
                r.process = (f, files)  # file f alone (shard_stream)
                r._open(0)
                r.load({})
                while (chunk := r._next_chunk())[1]:
                    for name, held_out in outputs.items():
                        writers[name].add(r._tokenize(chunk[0], held_out), example, f)
                    example += chunk[1]
            m |= {name: w.close(files) for name, w in writers.items()}
        # last: a reader that finds it finds the rest
        storage.write_bytes(storage.join(sub, "manifest.json"), json.dumps(m).encode())
        manifests.append(m)
    return manifests


class _CachedReader(_Cursor):
    """One source's share of a token cache (prepare): the documents its _Reader would hand out, memory-mapped.

    Its cursor is (epoch, position in this process's documents): in stream order, or with shuffle=True in a
    permutation seeded by (seed, epoch). Processes share documents as shard_stream does."""
    CURSOR = ("epoch", "pos", "docs", "tokens", "dropped")

    def __init__(self, cache: str, i: int, src: Source, split: str, tok_id: str, max_len: int, seed: int,
                 process_index: int, process_count: int):
        sub, self.src, self.max_len, self.seed = storage.join(cache, str(i)), src, max_len, seed
        self.order = (None, None)
        try:
            m = json.loads(storage.read_bytes(storage.join(sub, "manifest.json")))
        except FileNotFoundError:
            raise DataError(f"token cache {cache} has no source {i} ({src.label}): run `python data.py STAGE "
                            f"--prepare {cache}`") from None
        built, now = ({k: v for k, v in d.items() if k not in ("weight", "shuffle")}  # (choices at read time)
                      for d in (m["source"], asdict(src)))
        diff = next((k for k in now if built.get(k) != now[k]), None)
        if diff:
            raise DataError(f"token cache {sub} was built for another source: {diff} {built.get(diff)!r}, this "
                            f"stage's is {now[diff]!r}; prepare the cache again")
        if m["tokenizer"] != tok_id:
            raise DataError(f"token cache {sub} was built with another tokenizer (sha256 {m['tokenizer'][:12]}, this "
                            f"one's is {tok_id[:12]}); prepare the cache again with this one")
        shards, dtype = m[split]["shards"], np.dtype(m["dtype"])
        local = storage.download(sub, (f"{split}.npy", *(f"{split}-{k}.bin" for k in range(len(shards)))))
        self.ends, self.prompts, example, file = np.load(os.path.join(local, f"{split}.npy")).T
        self.starts, self.shard_starts = np.concatenate([[0], self.ends[:-1]]), np.array(shards)
        self.shards = [np.memmap(os.path.join(local, f"{split}-{k}.bin"), dtype, "r") for k in range(len(shards))]
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
            self.dropped += 1  # empty, or an SFT example too long for a row


# ----------------------------------------------------------------------------- the batch iterator

class Batches:
    """Packed, mixed, sharded, resumable batches of batch_size rows per process (see the module docstring).

    They never run out (finite sources restart), so an eval calls reset() and takes a fixed number. split="val"
    reads each source's `val_split`, or for a source without one the 1 in HELD_OUT documents of its split that
    is_held_out picks, which split="train" leaves out. With `cache` (a directory or URL that prepare wrote) they
    are read from its tokens, not tokenised: the same batches while no source is shuffled."""

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
            ident = tokenizer_id(tokenizer)
            self.readers = [_CachedReader(cache, i, s, split, ident, seq_len + 1, seed, process_index, process_count)
                            for i, s in enumerate(self.sources)]
        else:
            tok, eos = literal_tokenizer(tokenizer), eos_id(tokenizer)
            self.readers = [_Reader(s, s.val_split if split == "val" and s.val_split else s.split,
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
        """Per source: documents and tokens handed out, examples dropped, epochs started."""
        return [{"source": s.label, "docs": r.docs, "tokens": r.tokens, "dropped": r.dropped, "epoch": r.epoch}
                for s, r in zip(self.sources, self.readers)]


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
