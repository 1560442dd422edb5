"""The model card of a Hugging Face export (its README.md): the hub's YAML metadata, then what the model is.

The metadata is what the hub indexes and filters on (https://huggingface.co/docs/hub/model-cards): license,
language, the hub datasets in the mixtures of the train.py runs behind the checkpoint (checkpoints.history),
base_model (the hub model an import came from), pipeline and library, tags, and a model-index of the
eval_code.py results files given with `convert.py --eval`. The prose says the rest: config, training stages,
chat format, usage, the tokenizer, limitations.
"""
import dataclasses
import json
import os
import re

import yaml  # PyYAML: a dependency of datasets and huggingface_hub

import checkpoints
import model
import storage
from benchmarks import summarize
from cli import UsageError
from sources import is_local  # the one rule for "a hub dataset or local files" (sources.py reads them by it)

DEFAULT_LICENSE = "apache-2.0"  # SmallCoder-303M's card
IMPORT_FILE = "imported_from.json"  # in a model directory convert.py --from-hf wrote: {"from_hf", "hub_id"}
# eval_code.py's tasks: the name on the card, the hub dataset, its config and split, the split's size, the shots.
EVAL_SETS = {"humaneval": ("HumanEval", "openai/openai_humaneval", None, "test", 164, 0),
             "mbpp": ("MBPP", "google-research-datasets/mbpp", "full", "test", 500, 3)}
TASK_IDS = {"HumanEval": "humaneval", "Mbpp": "mbpp"}  # a result's task_id "HumanEval/0" -> its task


# ----------------------------------------------------------------------------- evaluation results

def check_license(value: str) -> str:
    """A hub license id (apache-2.0, mit, cc-by-4.0, other, ...): lowercase letters, digits, '.', '+' and '-'."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value):
        raise UsageError(f"--license {value!r} is not a Hugging Face license id (lowercase, e.g. apache-2.0, mit, "
                         f"other)")
    return value


def read_eval(path: str) -> dict:
    """An `eval_code.py --out` file as {"path", "task", "settings", "summary", "rows", "scores"}, or a UsageError.
    Its first line may be a header ({"header": {"settings": {...}}}: the task and how it was run) and its last a
    summary; older files have neither, and their task is read off the task ids."""
    try:
        lines = storage.read_bytes(path).decode("utf-8").splitlines()
    except (OSError, ValueError) as e:  # missing, unreadable, not UTF-8 (StorageError is a ValueError)
        raise UsageError(f"--eval {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    settings, summary, rows = {}, {}, []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = ""  # not JSON: refused below
        if record is None:
            continue
        if n == 1 and isinstance(record, dict) and isinstance(record.get("header"), dict):
            settings = record["header"].get("settings", record["header"])
        elif n == len(lines) and isinstance(record, dict) and isinstance(record.get("summary"), dict):
            summary = record["summary"]
        elif isinstance(record, dict) and isinstance(record.get("task_id"), str) and type(record.get("passed")) is bool:
            rows.append(record)
        else:
            raise UsageError(f"--eval {path} line {n} is not an eval_code.py result (a JSON object with task_id and "
                             f"passed)")
    if not rows:
        raise UsageError(f"--eval {path} holds no eval_code.py results")
    if settings.get("completions") == "canonical":
        raise UsageError(f"--eval {path} grades the benchmark's reference solutions (--canonical), not a model's")
    tasks = {TASK_IDS.get(r["task_id"].partition("/")[0]) for r in rows}
    task = str(settings.get("task") or "").lower() or (tasks.pop() if len(tasks) == 1 and None not in tasks else None)
    if not task:
        raise UsageError(f"--eval {path}: its task ids are neither all HumanEval's nor all MBPP's, and it has no "
                         f"header naming its task")
    scores = {k: mean for k, (mean, _) in summarize(rows).items()}
    return dict(path=path, task=task, settings=settings, summary=summary, rows=rows, scores=scores)


def check_graded(evals: list[dict], weights: dict) -> None:
    """UsageError unless every result file that recorded the weights it graded (eval_code.py's header: the sha256
    of each .safetensors) graded one of `weights` ({sha256: what it is}: the checkpoint exported, the export):
    a model-index must not publish another model's scores. Files without a header are not checked."""
    for e in evals:
        files = e["settings"].get("checkpoint") or {}
        graded = {sha for name, sha in files.items() if name.endswith(".safetensors")}
        if graded and not graded & weights.keys():
            raise UsageError(f"--eval {e['path']} graded other weights (sha256 {sorted(graded)[0][:12]}…) than "
                             f"{' or '.join(weights.values())}: evaluate this model, or leave that file out")


def _eval_row(e: dict) -> tuple[dict, str]:
    """(one model-index result, its rows of the prose table) for one read_eval result."""
    title, hub_id, config, split, size, shots = EVAL_SETS.get(e["task"], (e["task"], e["task"], None, None, 0, None))
    s, n_tasks = e["settings"], len({r["task_id"] for r in e["rows"]})
    name = title + " (chat prompt)" * bool(s.get("chat")) + (f", {n_tasks} of {size} tasks" if n_tasks < size else "")
    args = {"shots": s.get("shots", shots), **{k: s.get(k) for k in ("n_samples", "temperature", "top_p",
                                                                     "max_new_tokens", "dtype")}}
    args = {k: v for k, v in args.items() if v is not None}
    dataset = {"type": hub_id, "name": name, "config": config, "split": split}
    metrics = [{"type": f"pass@{k}", "name": f"pass@{k}", "value": round(100 * v, 2), "verified": False,
                "args": dict(args)} for k, v in e["scores"].items()]  # a copy each: YAML would alias one dict
    result = {"task": {"type": "text-generation"}, "dataset": {k: v for k, v in dataset.items() if v is not None},
              "metrics": metrics}
    how = ", ".join(f"{k} {v}" for k, v in args.items()) + ("" if s else "; the rest not recorded (no header)")
    stderr = {k: e["summary"].get(f"pass@{k} stderr") for k in e["scores"]}  # eval_code's, where it wrote one
    rows = "\n".join(f"| {name} | {n_tasks} | pass@{k} | {100 * v:.2f}%"
                     + (f" ± {100 * stderr[k]:.2f}" if isinstance(stderr[k], float) else "") + f" | {how} |"
                     for k, v in e["scores"].items())
    return result, rows


# ----------------------------------------------------------------------------- where the model came from

def imported_from(path: str) -> dict:
    """What convert.py --from-hf recorded in the model directory `path` ({} if it is not an import)."""
    try:
        found = json.loads(storage.read_bytes(storage.join(path, IMPORT_FILE)))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def origin(ckpt: str | None, stages: list[dict]) -> dict:
    """The import at the start of the checkpoint's history: the checkpoint itself, or its first run's init_from
    (found as checkpoints.history finds it: as written, else beside that run's directory)."""
    if not stages:
        return imported_from(ckpt) if ckpt else {}
    init = (stages[0]["config"].get("init_from") or "").rstrip("/")
    first = stages[0]["dir"].rstrip("/")
    parent = first.rpartition("/")[0] if storage.is_url(first) else os.path.dirname(os.path.abspath(first))
    return next((found for d in (init, storage.join(parent, init.rpartition("/")[2])) if init
                 for found in [imported_from(d)] if found), {})


def mixture_sources(stages: list[dict]) -> tuple[list[str], list[str]]:
    """(hub dataset ids, local or offline sources) of every stage's mixture, each once, in order."""
    paths = [s.get("path") for st in stages for s in st["config"].get("mixture", [])
             if isinstance(s, dict) and isinstance(s.get("path"), str)]
    hub = [p for p in dict.fromkeys(paths) if not is_local(p)]
    return hub, [p for p in dict.fromkeys(paths) if p not in hub]


def decontamination(stages: list[dict]) -> str | None:
    """The documents each stage dropped from each source for overlapping HumanEval or MBPP, with the tasks they
    matched most often: the last "decontaminated" record of its metrics (train.py logs Batches.decontamination)."""
    said = []
    for st in stages:
        for src, d in next((r["decontaminated"] for r in reversed(st["metrics"]) if "decontaminated" in r), {}).items():
            tasks = sorted(d.get("matched", {}), key=d["matched"].get, reverse=True)
            said.append(f"{os.path.basename(os.path.normpath(st['dir']))} `{src}` {d['docs']:,}" + (
                f" ({', '.join(tasks[:10])}{', ...' if len(tasks) > 10 else ''})" if tasks else ""))
    return ("Documents dropped for sharing a 13-gram with HumanEval or MBPP (GPT-3's rule, smallcoder's "
            "decontam.py), per stage and source: " + "; ".join(said) + ".") if said else None


def tokenizer_text(tokenizer, spec: str | None) -> str:
    """What the tokenizer is, from its vocabulary and the run's `tokenizer` setting."""
    n, eos = tokenizer.get_vocab_size(), tokenizer.token_to_id("<|endoftext|>")
    common = (f"`<|endoftext|>` (id {eos}) is BOS, EOS, UNK and the padding token; no BOS is added (as trained) "
              f"and batches pad on the left.")
    if n == 49152 and tokenizer.token_to_id("<fim_prefix>") == 1:
        return (f"StarCoder's (`bigcode/starcoder`; the same files, ungated, in `bigcode/tiny_starcoder_py`): "
                f"byte-level BPE, 49,152 tokens, digits split one by one. {common} Its fill-in-the-middle tokens "
                f"exist, but smallcoder's training does not use them.")
    if spec == "stdlib":
        return (f"smallcoder's offline demo tokenizer: byte-level BPE, {n:,} tokens, trained on the Python standard "
                f"library with StarCoder's splitting rules. {common} It is not a published vocabulary, so llama.cpp's "
                f"converter does not recognise it without a local edit.")
    return f"byte-level BPE, {n:,} tokens (`tokenizer.json`{f', from `{spec}`' if spec else ''}). {common}"


# ----------------------------------------------------------------------------- the card

def _stage_row(stage: dict) -> str:
    """One stage as a row of the card's training table."""
    cfg, m = stage["config"], stage["metrics"]
    sources = [s for s in cfg.get("mixture", []) if isinstance(s, dict)]
    total = sum(s.get("weight", 0) for s in sources) or 1
    mixture = ", ".join(f"{s.get('path')}{'[%s]' % s['name'] if s.get('name') else ''}"
                        f"{'/' + s['data_dir'] if s.get('data_dir') else ''} {s.get('weight', 0) / total:.0%}"
                        for s in sources)
    cells = [os.path.basename(os.path.normpath(stage["dir"])), cfg.get("init_from") or "(random init)", mixture,
             stage["step"], f"{m[-1].get('tokens_seen', 0):,}" if m else "-",
             f"{m[0]['loss']:.2f} -> {m[-1]['loss']:.2f}" if m else "-",
             next((f"{r['val_loss']:.2f}" for r in reversed(m) if "val_loss" in r), "-")]
    return "| " + " | ".join(map(str, cells)) + " |"


def model_card(config: model.Config, dtype: str, out_dir: str, *, tokenizer, ckpt: str | None = None,
               chat: str | None = "card", license: str = DEFAULT_LICENSE, evals: tuple = ()) -> str:
    """README.md of an export. `chat`: "card" (the card's chat template), "imported" (an imported checkpoint's)
    or None; `ckpt`: the checkpoint it came from, for its history; `evals`: read_eval results, for the scores."""
    name = os.path.basename(os.path.normpath(out_dir))
    stages = checkpoints.history(ckpt) if ckpt else []
    hub, local = mixture_sources(stages)
    source = origin(ckpt, stages)
    scored = [_eval_row(e) for e in evals]
    meta = {"license": license, "language": ["en", "code"], **({"datasets": hub} if hub else {}),
            **({"base_model": source["hub_id"]} if source.get("hub_id") else {}),
            "pipeline_tag": "text-generation", "library_name": "transformers",
            "tags": ["code", "llama", "smallcoder", "jax"],
            **({"model-index": [{"name": name, "results": [r for r, _ in scored]}]} if scored else {})}
    header = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---"

    history = ("| stage | initialised from | mixture | steps | tokens | loss (first -> last logged) | val loss |\n"
               "|---|---|---|---|---|---|---|\n" + "\n".join(map(_stage_row, stages))) if stages else (
        "No training record (metrics.jsonl and checkpoints/step_*/state.json, as train.py writes them) was found "
        "next to the exported checkpoint.")
    if source:
        history += (f"\n\nThe weights {'the first stage started from were' if stages else 'were'} imported from "
                    f"`{source.get('hub_id') or source.get('from_hf')}` with `convert.py --from-hf`.")
    data = [f"{what} {', '.join(f'`{d}`' for d in ds)}{after}" for what, ds, after in
            [("hub datasets", hub, ""), ("local or offline sources", local, " (not on the hub)")] if ds]
    if data:
        history += "\n\nData: " + "; ".join(data) + "."
    if dropped := decontamination(stages):
        history += "\n\n" + dropped
    chat_text = {"card": "`User: {prompt}\\nAssistant:`, then the reply after a space, ended by `<|endoftext|>`; "
                         "turns are concatenated (`User: a\\nAssistant: b<|endoftext|>User: c\\nAssistant:`), with no "
                         "BOS, as in training. `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` "
                         "renders it.",
                 "imported": "tokenizer_config.json's chat template, kept from the imported checkpoint."
                 }.get(chat, "None: plain completion only.")
    evaluation = ("## Evaluation\nScored with smallcoder's `eval_code.py` (its prompts, stop strings and sandbox; "
                  "percent, ± the standard error over tasks where recorded). Not verified by the hub, and not "
                  "comparable with other harnesses' numbers without the same prompts.\n\n"
                  "| benchmark | tasks | metric | score | settings |\n|---|---|---|---|---|\n"
                  + "\n".join(rows for _, rows in scored)) if scored else None
    repo = f"YOUR_NAME/{name}"
    return "\n\n".join(part for part in [
        header,
        f"# {name}\n\nA {model.param_count(config) / 1e6:.1f}M-parameter Llama-architecture (`LlamaForCausalLM`) "
        f"code model, trained with smallcoder (a pure-JAX training codebase) and exported by its `convert.py` from "
        f"`{ckpt or '(in memory)'}` ({dtype} weights). License: {license}.",
        "## Config\n| field | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {v} |" for k, v in dataclasses.asdict(config).items() if k not in ("dtype", "remat")),
        "## Training\n" + history, evaluation, "## Chat format\n" + chat_text,
        "## Tokenizer\n" + tokenizer_text(tokenizer, stages[-1]["config"].get("tokenizer") if stages else None),
        f"""## Usage\nReplace `{repo}` with the hub repo this directory is uploaded to (or with its local path).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

chat = pipeline("text-generation", model="{repo}")
messages = [{{"role": "user", "content": "Write a Python function that reverses a string."}}]
print(chat(messages, max_new_tokens=128, do_sample=False)[0]["generated_text"][-1]["content"])
print(chat("def fibonacci(n):", max_new_tokens=64, do_sample=False)[0]["generated_text"])  # plain completion

tok, lm = AutoTokenizer.from_pretrained("{repo}"), AutoModelForCausalLM.from_pretrained("{repo}")
batch = tok(["def is_prime(n):", "def mean(xs):"], padding=True, return_tensors="pt")  # pads on the left
out = lm.generate(**batch, max_new_tokens=64, do_sample=False)
print(tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
```""",
        f"""## Limitations
- **Context: {config.max_seq_len:,} tokens**, prompt and reply together (the length it was trained on); longer
  inputs must be cut by the caller.
- **Python-centric and small.** Trained and evaluated for Python code; other languages and general knowledge are
  weak. Code it writes is often wrong, and greedy decoding can repeat itself: test what it writes, and run
  untrusted code in a sandbox.
- **No safety tuning**: no preference tuning or content filtering; it can write insecure code or false text.
- **English prompts only**; the chat format above is the only one it was trained on."""] if part)
