"""Reading one source of a mixture: a hub dataset or local files, streamed through one code path, tokenised.

`parse_source` checks a stage file's source dict; `open_stream` and `shard_stream` give this process's part of
one split as a datasets stream; a `Reader` hands out its documents as (tokens, loss mask), SFT examples in
CHAT_FORMAT with the prompt masked out, leaves out those that overlap the benchmarks (decontam.py) and keeps a
cursor that resumes exactly. data.py mixes the readers.
"""
import glob
import json
import logging
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from corpus import HELD_OUT, is_held_out, stdlib_corpus
from decontam import benchmark_index
from tokenizer import CHAT_FORMAT

CHUNK_CHARS = 1 << 20  # tokenise ~1 MB of text per encode_batch call: enough work for every core
CHUNK_DOCS = 1024
PIECE_CHARS = 1 << 16  # a longer text is tokenised in pieces (_pieces), so one huge document cannot exhaust memory
READ_BATCH = 64  # examples per datasets batch: reading them one by one costs ~100 us each
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}  # suffix -> datasets builder
STDLIB_SOURCES = {"stdlib": {"val_split": "val"},  # the embedded corpora's defaults: held-out split, SFT fields
                  "stdlib_sft": {"val_split": "val", "prompt": "prompt", "response": "response"}}
RETRIES = 8  # a transient read error is retried after 1, 2, 4, ... 60 s (~3 minutes in all), then it is fatal


class DataError(ValueError):
    """Bad user input or unusable data, from any data room (this is the lowest that raises it; callers catch it as
    data.DataError); the message is meant to be shown as one line."""


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
    prompt: str | None = None      # SFT: prompt and response fields -> CHAT_FORMAT
    response: str | None = None
    chat_text: bool = False        # SFT whose `text` field is already the whole exchange
    shuffle: bool = False          # seeded: the order of its files each epoch, and of the examples in each chunk
    decontaminate: bool = True     # drop the documents that overlap HumanEval or MBPP (decontam.py)

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
    if not isinstance(d.get("decontaminate", True), bool):
        raise DataError(f"source {d['path']!r}: decontaminate must be True or False, got {d['decontaminate']!r}")
    return Source(**d)


def is_local(path: str) -> bool:
    """Local files (a path or glob) or the embedded corpus; anything else is a hub dataset id."""
    return (path in STDLIB_SOURCES or path.startswith(("/", ".", "~")) or any(c in path for c in "*?[{")
            or path.endswith(tuple(BUILDERS)) or os.path.exists(path))


def local_files(src: Source, split: str) -> list[str] | None:
    """The files of a local source's split, sorted (None for a hub dataset)."""
    if not is_local(src.path):
        return None
    pattern = os.path.expanduser(src.path.replace("{split}", split))
    files = (stdlib_corpus(src.path).get(split, []) if src.path in STDLIB_SOURCES
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
    if is_local(src.path):
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

class Cursor:
    """A reader's position and statistics: its attributes named in CURSOR, saved as a JSON-serialisable dict.
    Both readers count the documents dropped for overlapping the benchmarks: `decontaminated`, and `matched`, each
    benchmark task id -> the documents that matched it."""
    CURSOR: tuple = ()

    def cursor(self) -> dict:
        return {k: getattr(self, k) for k in self.CURSOR}

    def load(self, c: dict):
        for k in self.CURSOR:  # (states saved before a key existed lack it: it was 0, or no task matched)
            setattr(self, k, c.get(k, {} if k == "matched" else 0))

    def contaminated(self, tasks: frozenset):
        """Count a document dropped for overlapping `tasks`. `matched` is replaced, never changed in place: a cursor
        taken before (Batches keeps one from before each document) holds the old one."""
        self.decontaminated += 1
        self.matched = {**self.matched, **{t: self.matched.get(t, 0) + 1 for t in sorted(tasks)}}


class Reader(Cursor):
    """Reads one source's shard in chunks, tokenises each chunk with one encode_batch call, hands out documents.

    Its cursor is (epoch, chunk number, datasets state at the chunk's start, examples consumed since): a restore
    re-reads at most one chunk. A finite source restarts in the same order, unless shuffled: then each epoch reads
    the files in a new seeded order, and each chunk (the shuffle buffer: up to CHUNK_DOCS examples) in an order
    seeded by (seed, epoch, chunk), so the cursor stays exact (datasets' own shuffle buffer cannot be restored)."""
    CURSOR = ("epoch", "chunk", "state", "consumed", "epoch_docs",  # position
              "docs", "tokens", "dropped", "decontaminated", "matched")  # statistics

    def __init__(self, src: Source, split: str, held_out: bool | None, tok, eos: int, max_len: int, seed: int,
                 process_index: int, process_count: int):
        # held_out: None reads every example; True only, or False all but, those is_held_out picks
        self.src, self.split, self.held_out, self.tok, self.eos, self.max_len = src, split, held_out, tok, eos, max_len
        self.seed, self.process, self.whole = seed, (process_index, process_count), open_stream(src, split)
        self.index = benchmark_index() if src.decontaminate else None  # decontam.Index: what to drop
        self._open(0)
        self.where = f"source {src.label} split {split!r} (process {process_index} of {process_count})"
        self.load({"state": None})

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
            if isinstance(doc, frozenset):  # the benchmark tasks it overlaps
                self.contaminated(doc)
            elif doc:
                self.docs += 1
                self.epoch_docs += 1
                self.tokens += len(doc[0])
                return doc
            else:  # too long for a row, or empty (False: on the other side of the held-out rule)
                self.dropped += doc is None

    def _fill(self):
        columns, n = self._next_chunk()
        if n:  # skip the examples of this chunk used before the checkpoint (none unless just restored)
            self.queue.extend(self.tokenize({k: v[self.consumed:] for k, v in columns.items()}, self.held_out))
        elif self.epoch_docs:  # end of an epoch: next_doc calls again, which restarts the stream
            self.epoch, self.chunk, self.state, self.consumed, self.it = self.epoch + 1, 0, None, 0, None
            self.epoch_docs = 0
        elif self.state is None:
            raise DataError(f"{self.where} is empty")
        elif self.held_out and not self.dropped:
            raise DataError(f"{self.where}: none of its examples is held out (1 in {HELD_OUT} are, chosen by a "
                            f"hash of the text); give the source a val_split")
        else:
            raise DataError(f"{self.where}: every example was dropped (empty, an SFT example longer than seq_len + 1 "
                            f"= {self.max_len} tokens, held out: 1 in {HELD_OUT} are, by a hash of the text, or sharing "
                            f"a 13-gram with the benchmarks: {self.decontaminated} did, decontam.py)")

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

    def chunks_by_file(self):
        """(file number, columns, count) of every chunk of an unshuffled source's split, once, file by file in stream
        order: what a token cache records (token_cache.prepare), so processes share it as they share the stream."""
        files = self.whole.n_shards
        for f in range(files):
            self.process = (f, files)  # file f alone (shard_stream)
            self._open(0)
            self.load({})
            while (chunk := self._next_chunk())[1]:
                yield f, *chunk

    def _column(self, columns: dict, key: str) -> list[str]:
        if key not in columns:
            raise DataError(f"{self.where} has no field {key!r}; its fields are {sorted(columns)}")
        bad = next((x for x in columns[key] if x is not None and not isinstance(x, str)), None)
        if bad is not None:
            raise DataError(f"{self.where}: " + (first_bad_line(self.src, self.split) or
                                                 f"field {key!r} is {type(bad).__name__}, not a string"))
        return [x or "" for x in columns[key]]

    def tokenize(self, columns: dict, held_out: bool | None) -> list:
        """One (tokens, mask) per example; None for one that is dropped, False for one on the other side of the
        held-out rule, the (non-empty) frozenset of the benchmark tasks it overlaps for one that decontam.py drops
        (neither of these two is tokenised; held_out as in __init__)."""
        columns = {k: self._column(columns, k) for k in self.src.fields}
        texts = ["\0".join(x) for x in zip(*columns.values())]
        verdicts = [False if held_out is not None and is_held_out(t) != held_out
                    else self.index.tasks(t) if self.index else frozenset() for t in texts]
        clean = [v == frozenset() for v in verdicts]  # (False is no set)
        docs = iter(self._encode({k: [x for x, c in zip(v, clean) if c] for k, v in columns.items()}))
        return [next(docs) if c else v for c, v in zip(clean, verdicts)]

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


