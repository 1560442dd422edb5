"""The offline corpus: the standard library's .py files as pretraining documents ("stdlib") and as docstring ->
function SFT pairs ("stdlib_sft"), built once into the user's cache, and the held-out rule every source uses.

The held-out rule lives here, the lowest of the data rooms (README: Data), because the corpus is split by it when
it is built; sources.py applies the same rule to every other source that has no val_split of its own.
"""
import ast
import json
import os
import sys
import sysconfig
import textwrap
import zlib
from pathlib import Path

import numpy as np

import storage

HELD_OUT = 50  # a source without a val_split holds out 1 in 50 of its documents (is_held_out) for split="val"
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"  # the stdlib corpus differs between versions


def cache_dir() -> Path:
    return Path(os.environ.get("SMALLCODER_CACHE") or Path.home() / ".cache" / "smallcoder")


def is_held_out(text: str) -> bool:
    """The fixed held-out rule: 1 in HELD_OUT documents (of stdlib files: of paths), chosen by a CRC-32 of the text,
    so every host, resume, run and shuffle agrees. Duplicate documents fall on the same side."""
    crc, piece = 0, 1 << 20  # in pieces of 1M characters: a huge document is not copied whole
    for i in range(0, len(text), piece):
        crc = zlib.crc32(text[i:i + piece].encode("utf-8", "surrogatepass"), crc)
    return crc % HELD_OUT == 0


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative path, path) of the stdlib's .py files, sorted; tests and third-party packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out += [(str(Path(dirpath, f).relative_to(root)), Path(dirpath, f)) for f in filenames if f.endswith(".py")]
    return sorted(out)


def stdlib_train_files() -> list[Path]:
    """The stdlib files on the train side of the held-out rule, sorted: what the stdlib tokenizer may learn from."""
    return [path for rel, path in stdlib_files() if not is_held_out(rel)]


def _function_defs(body_of_statements):
    """Every (async) def in source order; only statements are visited, which is much faster than ast.walk."""
    for node in body_of_statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _function_defs(getattr(node, field, None) or [])


def stdlib_sft_pairs(code: str) -> list[dict]:
    """Docstring -> function pairs from one module: prompt asks for the function, response is its code."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    lines, pairs = code.splitlines(), []
    for node in _function_defs(tree.body):
        doc, first = ast.get_docstring(node), node.body[0]
        # Only docstrings on their own lines with code after them, so they can be cut out of the response cleanly.
        if not doc or len(node.body) < 2 or first.lineno <= node.lineno or node.body[1].lineno <= first.end_lineno:
            continue
        paragraph = " ".join(doc.strip().split("\n\n")[0].split())
        src = lines[node.lineno - 1:first.lineno - 1] + lines[first.end_lineno:node.end_lineno]
        signature = f"{node.name}({ast.unparse(node.args)})"
        pairs.append({"prompt": f"Write a Python function `{signature}` that: {paragraph}",
                      "response": textwrap.dedent("\n".join(src))})
    return pairs


def stdlib_corpus(kind: str) -> dict[str, list[str]]:
    """{"train": files, "val": files} of the cached jsonl corpus ("stdlib" docs or "stdlib_sft" pairs)."""
    root = cache_dir() / f"{kind}-shuffled-{PY_TAG}"
    n_shards = {"train": 4, "val": 1}  # several train files so hosts can split the corpus by file
    names = {s: [str(root / f"{s}-{i}.jsonl") for i in range(n)] for s, n in n_shards.items()}
    if (root / "DONE").exists():
        return names
    rows = {"train": [], "val": []}
    for rel, path in stdlib_files():
        code = path.read_text(encoding="utf-8", errors="replace")
        examples = [{"text": code}] if kind == "stdlib" else stdlib_sft_pairs(code)
        rows["val" if is_held_out(rel) else "train"] += [dict(x, path=rel) for x in examples]
    for split, files in names.items():
        # Shuffled once, into the files (a resume stays exact): in path order a short run sees only asyncio/.
        np.random.default_rng(0).shuffle(rows[split])
        for i, f in enumerate(files):  # round-robin, so every shard sees the whole library's variety
            storage.write_bytes(f, "".join(json.dumps(r) + "\n" for r in rows[split][i::len(files)]).encode())
    storage.write_bytes(str(root / "DONE"), b"")
    return names
