"""Checkpoints: the files of a model directory, and of a training run's out_dir, all through storage.py.

A **model directory** is what every tool reads (sample.py, eval_code.py, convert.py --ckpt, init_from):
config.json (model.Config), model.safetensors (fp32, layer weights stacked on a leading L axis),
tokenizer.json, and an imported checkpoint's chat_template.jinja. `save_model` writes one, config.json last;
`load_model` reads one, locally or at a URL.

**Every file a reader trusts is listed in the record written after it** (config.json, a step's state.json) under
"files", with its size and sha256 (storage.fingerprint), and checked before it is parsed: a flipped bit is a
CorruptFile naming the file, never a model that is silently wrong. Records written before they listed files
are read unchecked.

A **run's out_dir** (local or a bucket) is a model directory (its latest step's weights) plus:
  checkpoints/step_N/   params.safetensors, opt.safetensors, tokenizer.json, data_<host>.json, then state.json
  LOCK                  the live run that owns out_dir
  metrics.jsonl         one record per log line (`MetricsLog`)
Object stores have no atomic rename, so a step's state.json is its commit: written last, after every other
file is whole; a step without it does not exist (levanter's protocol: metadata last). `save_step` writes one
(and prunes old ones), `resume_point` reads back the newest readable one, falling back past a damaged one.
`Stop` turns a preemption notice (SIGTERM) or Ctrl-C into one more checkpoint, agreed on by every host.
`history` follows init_from back through the stages behind a model directory, for the exported model card.
"""
import contextlib
import dataclasses
import functools
import json
import os
import re
import secrets
import signal
import socket
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import safetensors
import safetensors.numpy
from jax.experimental import multihost_utils

import model
import storage
from tokenizer import tokenizer_from_text  # (a `tokenizer` argument would hide the module)

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' own name for it; in our directories, an import's template
# Keys older checkpoints' config.json may hold that no longer describe the model: read and ignored.
RETIRED_KEYS = {"attention"}  # the training attention kernel; now fast.py's per-platform choice
COMMIT, LOCK, METRICS = "state.json", "LOCK", "metrics.jsonl"
FILES = "files"  # a record's key: {name: storage.fingerprint} of each file written before it


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint, or a run directory that cannot be used as asked; one line."""


# ----------------------------------------------------------------------------- the model directory

def flatten(params: dict) -> dict:
    """{"layers": {"wq": a}} -> {"layers.wq": a}."""
    return {".".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(params)}


def unflatten(flat: dict) -> dict:
    """{"layers.wq": a} -> {"layers": {"wq": a}}."""
    out: dict = {}
    for name, v in flat.items():
        *parents, leaf = name.split(".")
        functools.reduce(lambda d, p: d.setdefault(p, {}), parents, out)[leaf] = v
    return out


def weights_bytes(params: dict) -> bytes:
    """params as fp32 safetensors."""
    return safetensors.numpy.save({k: np.asarray(jax.device_get(v), np.float32) for k, v in flatten(params).items()})


def _write(directory: str, name: str, payload: bytes, fingerprint: dict | None = None) -> dict:
    """Write file `name` of `directory`; {name: its fingerprint} (given, or computed), for the record written after."""
    storage.write_bytes(storage.join(directory, name), payload)
    return {name: fingerprint or storage.fingerprint(payload)}


def _read(directory: str, name: str, files: dict | None) -> bytes:
    """File `name` of `directory`, checked against its fingerprint in `files` (its record's list) if listed there."""
    file = storage.join(directory, name)
    payload = storage.read_bytes(file)
    return storage.verified(file, payload, files[name]) if files and name in files else payload


def save_model(path: str, params: dict, config: model.Config, tokenizer, chat_template: str | None = None,
               weights: tuple | None = None) -> None:
    """Write model directory `path` (created or updated in place), each file atomically and config.json last: a
    reader that finds it finds the rest, and their fingerprints. The config is stored as the architecture, with
    no compute knobs. `weights`: (weights_bytes(params), its fingerprint), when the caller has them already."""
    config = dataclasses.replace(config, dtype="float32", remat="none")
    files = _write(path, WEIGHTS_FILE, *(weights or (weights_bytes(params),)))
    files |= _write(path, TOKENIZER_FILE, tokenizer.to_str(pretty=True).encode())
    if chat_template:
        files |= _write(path, CHAT_TEMPLATE_FILE, chat_template.encode())
    record = {**dataclasses.asdict(config), FILES: files}
    storage.write_bytes(storage.join(path, CONFIG_FILE), json.dumps(record, indent=2).encode())


def read_config(path: str) -> dict | None:
    """A directory's config.json as a dict (ours or Hugging Face's), or None if it has none."""
    file = storage.join(path, CONFIG_FILE)
    if not storage.exists(file):
        return None
    try:
        return json.loads(storage.read_bytes(file))
    except ValueError as e:
        raise CheckpointError(f"{file} is not JSON ({e})") from None


def _listed(path: str) -> dict | None:
    """The files model directory `path`'s config.json lists with their fingerprints (None: it lists none)."""
    d = read_config(path)
    return d.get(FILES) if isinstance(d, dict) and isinstance(d.get(FILES), dict) else None


def load_config(path: str) -> model.Config:
    d = read_config(path)
    if d is None:
        raise CheckpointError(f"{path} is not a smallcoder checkpoint directory (no {CONFIG_FILE})")
    if "model_type" in d or "architectures" in d:
        raise CheckpointError(f"{path} is a Hugging Face checkpoint: import it with "
                              f"`python convert.py --from-hf {path} --out DIR`")
    unknown = set(d) - {f.name for f in dataclasses.fields(model.Config)} - RETIRED_KEYS - {FILES}
    if unknown:
        raise CheckpointError(f"{storage.join(path, CONFIG_FILE)} has unknown keys: {sorted(unknown)}")
    return model.Config(**{k: v for k, v in d.items() if k not in RETIRED_KEYS | {FILES}})


def load_weights(path: str, config: model.Config) -> dict:
    """fp32 params (numpy) from `path`/model.safetensors, checked against `config`'s shapes."""
    file = storage.join(path, WEIGHTS_FILE)
    if not storage.exists(file):
        raise CheckpointError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    params = unflatten(safetensors.numpy.load(_read(path, WEIGHTS_FILE, _listed(path))))
    got = jax.tree.map(lambda a: a.shape, params)
    want = jax.tree.map(lambda w: w.shape, model.weights(config), is_leaf=lambda x: isinstance(x, model.Weight))
    if got != want:
        raise CheckpointError(f"{file} does not match {CONFIG_FILE}: shapes {got} != {want}")
    return params


def read_chat_template(path: str) -> str | None:
    """The chat template a directory holds (ours or HF's), or None: chat_template.jinja (as transformers >= 4.5x
    saves it, and as our imports keep it), else tokenizer_config.json's chat_template (its default, if named)."""
    if storage.exists(storage.join(path, CHAT_TEMPLATE_FILE)):
        return _read(path, CHAT_TEMPLATE_FILE, _listed(path)).decode()
    try:
        template = json.loads(storage.read_bytes(storage.join(path, "tokenizer_config.json"))).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def load_model(path: str):
    """(fp32 params as numpy, config, tokenizer) of model directory `path`, a local path or a URL."""
    config = load_config(path)
    params = load_weights(path, config)
    if not storage.exists(storage.join(path, TOKENIZER_FILE)):
        raise CheckpointError(f"{path} has no {TOKENIZER_FILE}")
    return params, config, _read_tokenizer(path, _listed(path))


def _read_tokenizer(directory: str, files: dict | None):
    """The tokenizer of a model or step directory, parsed from the bytes its fingerprint was checked on."""
    text = _read(directory, TOKENIZER_FILE, files).decode("utf-8", "replace")
    return tokenizer_from_text(storage.join(directory, TOKENIZER_FILE), text)


# ----------------------------------------------------------------------------- a run's checkpoints

def step_dir(out_dir: str, step: int) -> str:
    return storage.join(out_dir, "checkpoints", f"step_{step:08d}")


def steps(out_dir: str, committed: bool = True) -> list[int]:
    """The steps of out_dir's step directories, newest first: those committed, or all of them."""
    names = storage.listdir(storage.join(out_dir, "checkpoints"))
    found = sorted((int(m[1]) for name in names if (m := re.fullmatch(r"step_(\d+)", name))), reverse=True)
    return [s for s in found if not committed or storage.exists(storage.join(step_dir(out_dir, s), COMMIT))]


def checkpoints(out_dir: str) -> list[str]:
    """out_dir's committed checkpoints, newest first."""
    return [step_dir(out_dir, step) for step in steps(out_dir)]


def latest_checkpoint(out_dir: str) -> str | None:
    return next(iter(checkpoints(out_dir)), None)


def remove_uncommitted(out_dir: str) -> None:
    """Delete the partial files of saves cut off before their commit."""
    for cut in set(steps(out_dir, committed=False)) - set(steps(out_dir)):
        storage.remove(step_dir(out_dir, cut))


def diverged(last: str | None, what: str):
    """Stop a run that diverged, naming `last`, the checkpoint a rerun resumes from (every host reaches this
    together)."""
    sys.exit(f"error: {what}: stopping, nothing saved. " + (
        f"The last good checkpoint is {last}: lower lr or raise warmup_steps, then rerun to resume from it."
        if last else "No checkpoint was saved: lower lr or raise warmup_steps, then rerun."))


def every_host(value) -> list:
    """Every host's `value` (JSON), host 0's first. An all-gather moves arrays of one shape: the lengths, then
    each host's JSON padded to the longest. Every host must call it, at the same point of the run."""
    text = json.dumps(value).encode()
    width = int(multihost_utils.process_allgather(np.int32(len(text))).max())
    return [json.loads(bytes(r)) for r in multihost_utils.process_allgather(np.frombuffer(text.ljust(width), np.uint8))]


def save_step(out_dir: str, step: int, steps: int, state: dict, data_state: dict, tokenizer, mcfg: model.Config,
              run_config: dict, keep: int, last: str | None) -> str:
    """Write checkpoints/step_N of a run of `steps` (every file whole, then state.json listing them), keep the
    last `keep`, refresh out_dir's model; return the step's path, the next save's `last`.

    Full host arrays in safetensors: any device count restores them, any tool reads them. Orbax would write
    shards in parallel without the gather; at 300M (3.6 GB with Adam) one host's write is fine. Every host calls
    this; each writes its own data position, host 0 the rest. `last` is the checkpoint a rerun resumes from if
    this save fails: the one the run saved last or resumed from, known without asking the store that failed."""
    params, opt = multihost_utils.process_allgather((state["params"], state["opt"]), tiled=True)
    # The loss checked before a save is the one *before* this step's update: check what is saved itself.
    if not all(np.isfinite(x).all() for x in jax.tree.leaves((params, opt)) if np.asarray(x).dtype.kind == "f"):
        diverged(last, f"weights or AdamW state not finite after step {step}")
    me, path = jax.process_index(), step_dir(out_dir, step)
    data = json.dumps(data_state).encode()
    hosts = every_host(storage.fingerprint(data))  # host 0's record lists every host's data file
    try:
        if me == 0:  # a step saved before (one a resume found unreadable) is uncommitted before it is rewritten
            storage.remove(path)
        multihost_utils.sync_global_devices("ckpt-clear")
        storage.write_bytes(storage.join(path, f"data_{me}.json"), data)
        multihost_utils.sync_global_devices("ckpt-data")
        if me == 0:
            files = {f"data_{host}.json": fingerprint for host, fingerprint in enumerate(hosts)}
            weights = weights_bytes(params)
            files |= _write(path, "params.safetensors", weights)
            opt_flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(opt)}
            files |= _write(path, "opt.safetensors", safetensors.numpy.save(opt_flat))
            files |= _write(path, TOKENIZER_FILE, tokenizer.to_str().encode())
            # The RNG state is the seed: init is its only random draw (no dropout); data order is in data_*.json.
            meta = {"step": step, "steps": steps, "finished": step == steps, "seed": run_config["seed"],
                    "processes": jax.process_count(), "config": run_config, "model": dataclasses.asdict(mcfg),
                    FILES: files}
            storage.write_bytes(storage.join(path, COMMIT), json.dumps(meta, indent=1).encode())  # the commit
            last = path
            for old in checkpoints(out_dir)[keep:]:
                storage.remove(storage.join(old, COMMIT))  # uncommit first: a delete cut short leaves no half one
                storage.remove(old)
            # out_dir itself is a model directory: the same weights, serialised and hashed once
            save_model(out_dir, params, mcfg, tokenizer, weights=(weights, files["params.safetensors"]))
    except (OSError, storage.StoreUnavailable) as e:  # a full disk; a store still down after storage.py's retries
        # Said at once, asking the store nothing more (it could fail, or keep us waiting, again): the run knows
        # its last checkpoint, and a rerun removes this step's partial files. (The LOCK's release, on the way
        # out, tries a store that gave up once more, without retries; it never raises.)
        print(f"error: saving {path} failed ({e}). Free space or wait for the store, then rerun the same command: "
              f"it resumes from {last or 'the start (no checkpoint yet)'}", file=sys.stderr, flush=True)
        sys.exit(1)
    multihost_utils.sync_global_devices("ckpt-done")
    return path


class Checkpoint(NamedTuple):
    """A checkpoint read back whole, as host arrays."""
    path: str
    meta: dict        # state.json: the step, the run's config, its model's config, its files' fingerprints
    params: dict
    opt_flat: dict    # the optimizer state's leaves by key path
    data_state: dict  # this host's position in its data
    tokenizer: object


def read_step(path: str) -> Checkpoint:
    """Read a step directory whole, each file checked against state.json's list before it is parsed. Raises
    OSError, ValueError (storage.CorruptFile: a file that does not match) or SafetensorError if it cannot be."""
    meta = json.loads(storage.read_bytes(storage.join(path, COMMIT)))
    needed = {"step", "processes", "config", "model"}
    if not isinstance(meta, dict) or not needed <= meta.keys() or not isinstance(meta.get(FILES, {}), dict):
        raise ValueError(f"its {COMMIT} is not the record save_step writes")
    if meta["processes"] != jax.process_count():
        raise CheckpointError(f"{path} was written by {meta['processes']} hosts; each host's data position is "
                              f"saved, so resume with {meta['processes']} hosts")
    files = meta.get(FILES)
    params = unflatten(safetensors.numpy.load(_read(path, "params.safetensors", files)))
    opt_flat = safetensors.numpy.load(_read(path, "opt.safetensors", files))
    data_state = json.loads(_read(path, f"data_{jax.process_index()}.json", files))
    return Checkpoint(path, meta, params, opt_flat, data_state, _read_tokenizer(path, files))


def resume_point(out_dir: str) -> Checkpoint | None:
    """out_dir's newest readable checkpoint, or None. One cut short or corrupted (a disk that lost it, a copy
    that stopped, a flipped bit) is skipped with a warning: the one before it is complete. A store that is down
    (StoreUnavailable) is no damage: it stops the run, which never falls back past a good checkpoint."""
    paths = checkpoints(out_dir)
    for path in paths:
        try:
            return read_step(path)
        except (CheckpointError, storage.StoreUnavailable):
            raise
        except (OSError, ValueError, safetensors.SafetensorError) as e:
            print(f"warning: {path} is unreadable ({type(e).__name__}: {e}); trying the checkpoint before it",
                  file=sys.stderr)
    if paths:  # never start over on top of a run's checkpoints
        raise CheckpointError(f"no checkpoint in {out_dir} is readable; move them away to start a new run there")
    return None


def check_finished(out_dir: str) -> None:
    """CheckpointError if out_dir holds a run that stopped before its last step (a preemption, a Ctrl-C, a
    crash): its model is half-trained, no stage's start unless the user says so. A directory without
    checkpoints (an import, an export) is no run; a record older than this mark is not checked."""
    last = latest_checkpoint(out_dir)
    if last is None:
        return
    file = storage.join(last, COMMIT)
    text = storage.read_bytes(file)  # (a store that is down stops the run: StoreUnavailable, not damage)
    try:
        record = json.loads(text)
        if record.get("finished") is not False:  # True, or None: a record from before runs were marked
            return
        why = f"its run stopped at step {record['step']} of {record['steps']}: its model is half-trained"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"{file} is damaged ({type(e).__name__}: {e}): how far its run got is unknown"
    raise CheckpointError(f"init_from {out_dir}: {why}. Finish that run (rerun its command), or pass "
                          f"--init_from_unfinished to start from it as it is")


# ----------------------------------------------------------------------------- the run directory's other files

def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, OverflowError):  # another user's process; a lock file without a pid
        return True
    return True


def take_lock(out_dir: str, break_lock: bool = False):
    """Refuse a second live run on out_dir. out_dir/LOCK names its holder; one left by a run that died on this
    host is broken automatically, one from another host with `break_lock`. Returns the release function."""
    path = storage.join(out_dir, LOCK)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    if storage.exists(path):
        try:
            held = json.loads(storage.read_bytes(path))
        except (OSError, ValueError):
            held = {}
        if not break_lock and (held.get("host") != mine["host"] or _alive(held.get("pid"))):
            raise CheckpointError(f"{out_dir} is in use by pid {held.get('pid')} on {held.get('host')} since "
                                  f"{held.get('since')} (its {LOCK} file); if that run is dead, rerun with "
                                  f"--break_lock")
        print(f"note: breaking the lock of pid {held.get('pid')} on {held.get('host')} (not running)")
        storage.remove(path)
    try:
        storage.write_bytes(path, json.dumps(mine).encode(), exclusive=True)
    except FileExistsError:
        raise CheckpointError(f"another run took {path} just now") from None

    def release():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(storage.read_bytes(path)) == mine:
                storage.remove(path)
    return release


class Stop:
    """SIGTERM (a VM's preemption notice) and Ctrl-C ask the run to finish its step, save and exit 0; a second
    Ctrl-C stops at once, without a checkpoint. On a pod, JAX's preemption service catches SIGTERM itself and
    names one step at which every host saves; a Ctrl-C on one host is agreed on at the next log line."""

    def __init__(self):
        self.signal, self.pod = None, jax.process_count() > 1
        self.service = self.pod and jax.config.jax_enable_preemption_service
        # (the service's own SIGTERM handler must stay: replacing it would break its protocol)
        self.caught = [signal.SIGINT] + ([] if self.service else [signal.SIGTERM])

    def __enter__(self):
        self.previous = [signal.signal(s, self._handle) for s in self.caught]
        return self

    def __exit__(self, *exc):
        for s, handler in zip(self.caught, self.previous):
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"\n{self.signal}: stopping after this step, with a checkpoint (Ctrl-C again: at once, without one)",
              file=sys.stderr, flush=True)

    def requested(self, step, at_log) -> bool:
        """Does every host stop after `step`? `at_log`: this step syncs with the device anyway."""
        if not self.pod:
            return self.signal is not None
        stop = self.service and multihost_utils.reached_preemption_sync_point(step)
        if at_log:  # one all-gather per log line, not per step
            stop |= bool(multihost_utils.process_allgather(np.int32(self.signal is not None)).max())
        return bool(stop)


def _logged_until(text, step, path):
    """metrics.jsonl's lines up to `step`. A line that is not a record (cut off by a full disk or a kill in the
    middle of a write) is dropped with a warning, not left to break every later rerun."""
    kept = []
    for i, line in enumerate(text.splitlines(), start=1):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            print(f"warning: {path} line {i} is not a whole record (cut off?): dropped", file=sys.stderr)
    return kept


class MetricsLog:
    """out_dir/metrics.jsonl, one JSON record per log line, cut back to the step a run resumes from. Appended line
    by line locally (tail -f works); at a URL (an object store cannot append) rewritten whole at each checkpoint.
    The same records go to TensorBoard and W&B when asked for: a resumed run purges TensorBoard's events after its
    checkpoint and continues the same W&B run (its id is kept in out_dir/wandb_run_id; W&B keeps the first value
    it got for a step, so steps logged after the last checkpoint of a killed attempt keep that attempt's values)."""

    def __init__(self, out_dir: str, step: int, tensorboard: str = "", wandb_project: str = "", config=None):
        self.path, self.url = storage.join(out_dir, METRICS), storage.is_url(out_dir)
        text = storage.read_bytes(self.path).decode("utf-8", "replace") if storage.exists(self.path) else ""
        self.lines = _logged_until(text, step, self.path)
        self.save()  # whole, in one write: a crash here must not lose the log
        self.sinks = []  # (log(step, scalars), close())
        if tensorboard:
            from tensorboardX import SummaryWriter
            if not storage.is_url(tensorboard):  # (a path under /proc: one line, not tensorboardX's traceback)
                storage.makedirs(tensorboard)
            writer = SummaryWriter(tensorboard, purge_step=step + 1)
            self.sinks.append((lambda i, r: [writer.add_scalar(k, v, i) for k, v in r.items()], writer.close))
        if wandb_project:
            import wandb
            id_file = storage.join(out_dir, "wandb_run_id")
            run_id = storage.read_bytes(id_file).decode() if storage.exists(id_file) else secrets.token_hex(4)
            storage.write_bytes(id_file, run_id.encode())
            run = wandb.init(project=wandb_project, id=run_id, resume="allow", config=config,
                             name=os.path.basename(out_dir.rstrip("/")))
            self.sinks.append((lambda i, r: run.log(r, step=i), run.finish))

    def add(self, record):
        self.lines.append(json.dumps(record) + "\n")
        if not self.url:
            with open(self.path, "a") as f:
                f.write(self.lines[-1])
        for log, _ in self.sinks:
            # numbers only: TensorBoard takes scalars (train.py's per-source "decontaminated" stays in metrics.jsonl)
            log(record["step"], {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))})

    def close(self):
        for _, close in self.sinks:
            close()

    def save(self):
        storage.write_bytes(self.path, "".join(self.lines).encode())


def history(ckpt: str) -> list[dict]:
    """The train.py runs behind a model directory (local or a URL), first stage first: each out_dir's newest run
    config (its latest committed state.json), the step, and its logged losses (metrics.jsonl), following
    init_from back."""
    stages, seen = [], set()
    while ckpt and (key := ckpt if storage.is_url(ckpt) else os.path.realpath(ckpt)) not in seen:
        seen.add(key)
        try:
            last = latest_checkpoint(ckpt)
            if last is None:  # not written by train.py: the history ends here
                break
            state = json.loads(storage.read_bytes(storage.join(last, COMMIT)))
            text = storage.read_bytes(storage.join(ckpt, METRICS)).decode("utf-8", "replace")
            metrics = [r for r in map(json.loads, filter(str.strip, text.splitlines())) if "loss" in r]
        except (OSError, ValueError):  # moved, or damaged: the history ends here (StorageError is a ValueError)
            break
        stages.append({"dir": ckpt, "config": state.get("config", {}), "step": state.get("step"), "metrics": metrics})
        # init_from is relative to where that run started: try it as written, then as a sibling of this directory
        init = (stages[-1]["config"].get("init_from") or "").rstrip("/")
        parent = ckpt.rstrip("/").rpartition("/")[0] if storage.is_url(ckpt) else os.path.dirname(os.path.abspath(ckpt))
        ckpt = next((d for d in (init, storage.join(parent, init.rpartition("/")[2])) if init and _exists(d)), None)
    return stages[::-1]


def _exists(path: str) -> bool:
    try:
        return storage.exists(path)
    except (OSError, ValueError):
        return False
