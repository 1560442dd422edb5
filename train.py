"""Train SmallCoder: `python train.py STAGE.py [--key=value ...]`.

A stage file is plain Python assignments overriding `RunConfig` below; `--key=value` overrides both.
Rerunning the same command resumes from the latest checkpoint in out_dir. `--dry_run` prints the plan.
Multi-host: the same command on every host, with --coordinator=auto (a TPU pod slice) or
--coordinator=HOST0:PORT --num_processes=N --process_id=I. Each host saves its own data position, so
out_dir must be storage every host sees (NFS, a GCS FUSE mount).

Parallelism: one mesh ("data", "fsdp"); batch rows are split over both, each weight along `embed` over
`fsdp` (the table RULES). Gradients come from a `jax.shard_map` that writes each collective itself.
Memory per chip, and what remat buys: docs/PERFORMANCE.md.

In reading order: RunConfig and its checks; the mesh and RULES; AdamW and `make_train_step`; the plan (`dry_run`);
the run, `_train`: resume, data, the loop of steps, log lines, held-out loss, checkpoints (checkpoints.py's files).
"""
import contextlib
import dataclasses
import importlib.util
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import checkpoints
import cli
import data
import fast
import model
import storage
import tokenizer


@dataclasses.dataclass
class RunConfig:
    """Every knob of a run; `model_config` builds the model's own (model.Config) from `model`,
    `model_overrides`, `dtype` and `remat`. Defaults give a small offline run on the stdlib corpus."""
    # what to train
    model: str = "tiny"                 # a model.CONFIGS name
    model_overrides: dict = dataclasses.field(default_factory=dict)  # e.g. {"n_layers": 2}
    tokenizer: str = "stdlib"           # tokenizer.load_tokenizer spec: tokenizer.json, "stdlib" or a hub id
    mixture: list = dataclasses.field(default_factory=lambda: [{"path": "stdlib", "weight": 1.0}])
    token_cache: str = ""               # read the mixture from `python data.py STAGE --prepare DIR`'s DIR (or URL)
    tokens: int = 0                     # the stage's token budget; sets max_steps when that is 0
    max_steps: int = 0
    init_from: str = ""                 # a checkpoint dir: its weights, a fresh optimizer
    out_dir: str = "out/run"
    # batch: batch_size is global sequences per optimizer step, split into grad_accum micro-batches
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    # optimiser: AdamW, linear warmup then cosine to lr * min_lr_ratio
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1           # on every matrix (embeddings included); never on norm gains
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0                   # global gradient-norm clip
    # logging, evaluation, checkpoints
    log_interval: int = 10
    eval_interval: int = 200
    eval_batches: int = 10
    ckpt_interval: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    # compute
    dtype: str = "auto"                 # matmul dtype: auto = bfloat16 on TPU/GPU, float32 on CPU
    remat: str = "none"                 # none | dots | full (see model.py)
    impl: str = "fast"                  # fast | reference: the model's code, fast.py's or model.py's (equal)
    fsdp: int = 1                       # devices that split each weight; -1 = all; data = the rest
    # multi-host: coordinator "auto" (TPU pod, Slurm) or "host:port" with num_processes/process_id
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    dry_run: bool = False
    # tracking, besides stdout and out_dir/metrics.jsonl
    wandb_project: str = ""             # also log to Weights & Biases (pip install wandb); a resume continues the run
    tensorboard: str = ""               # also write TensorBoard event files here (pip install tensorboardX)
    break_lock: bool = False            # take out_dir from a run that left its LOCK on another host and died
    init_from_unfinished: bool = False  # start from init_from although its run stopped before its last step


class ConfigError(cli.UsageError):
    """A run config that cannot train as asked; one line."""


# What each number of a run must be: (keys, test, the rule as the error states it).
_BOUNDS = [
    (("batch_size", "seq_len", "grad_accum", "log_interval", "eval_interval", "eval_batches", "ckpt_interval",
      "keep_checkpoints", "num_processes"), lambda v: v >= 1, ">= 1"),
    (("tokens", "max_steps", "warmup_steps", "seed", "process_id"), lambda v: v >= 0, ">= 0"),
    (("lr", "eps", "clip"), lambda v: 0 < v < math.inf, "positive and finite"),
    (("weight_decay",), lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    (("min_lr_ratio",), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (("beta1", "beta2"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("fsdp",), lambda v: v >= 1 or v == -1, ">= 1 or -1 (all devices)"),
]


def load_run_config(argv) -> RunConfig:
    """RunConfig from [STAGE.py] [--key=value ...] (cli.parse_config), checked before anything runs."""
    cfg = cli.parse_config(RunConfig, argv)
    for keys, ok, what in _BOUNDS:  # before anything divides by them or trains with them
        for key in keys:
            if not ok(getattr(cfg, key)):
                raise ConfigError(f"{key} must be {what}, not {getattr(cfg, key)!r}")
    for key in ("out_dir", "init_from"):  # a URL's scheme must be one fsspec can open (gs:// needs gcsfs)
        if storage.is_url(getattr(cfg, key)):
            try:
                storage.filesystem(getattr(cfg, key))
            except storage.StorageError as e:
                raise ConfigError(f"{key}: {e}") from None
    for key, package in (("wandb_project", "wandb"), ("tensorboard", "tensorboardX")):
        if getattr(cfg, key) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{key} needs the {package} package: pip install {package}")
    for key, choices in (("dtype", cli.DTYPES), ("impl", fast.IMPLEMENTATIONS), ("model", sorted(model.CONFIGS))):
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {getattr(cfg, key)!r}")
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}")
    if not (cfg.max_steps or cfg.tokens):
        raise ConfigError("set tokens (the stage budget) or max_steps")
    return cfg


def max_steps(cfg: RunConfig) -> int:
    return cfg.max_steps or math.ceil(cfg.tokens / (cfg.batch_size * cfg.seq_len))


def model_config(cfg: RunConfig, base: model.Config | None = None) -> model.Config:
    auto = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    fields = {**dataclasses.asdict(base or model.CONFIGS[cfg.model]), **cfg.model_overrides}
    try:
        mcfg = model.Config(**{**fields, "dtype": auto if cfg.dtype == "auto" else cfg.dtype, "remat": cfg.remat})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model config: {e}") from None
    if cfg.seq_len > mcfg.max_seq_len:  # positions past the context were never trained, nor exported as usable
        raise ConfigError(f"seq_len {cfg.seq_len} is longer than the model's context, max_seq_len {mcfg.max_seq_len}")
    return mcfg


# ----------------------------------------------------------------------------- mesh and sharding

# The one table mapping logical axes (each weight's are declared in model.weights) and the batch to mesh axes.
RULES = {"batch": ("data", "fsdp"), "embed": "fsdp"}  # every other logical axis: replicated
BATCH = P(None, RULES["batch"])  # batches are [micro-batch, rows, T]: rows over every device


def param_specs(tree):
    """PartitionSpec of each weight (also works on the optimizer state, whose leaves mirror the weights)."""
    def spec(path, x):
        names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
        axes = logical.get(names[-1]) if names else None
        if axes is None or x.ndim != len(axes):
            return P()  # scalars such as Adam's step count
        return P(*(RULES.get(a) for a in axes))
    logical = model.logical_axes()
    return jax.tree_util.tree_map_with_path(spec, tree)


def shardings(tree, mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(tree))


def make_mesh(cfg: RunConfig) -> jax.sharding.Mesh:
    n = jax.device_count()
    fsdp = n if cfg.fsdp == -1 else cfg.fsdp
    if n % fsdp:
        raise ConfigError(f"fsdp={fsdp} does not divide the {n} devices")
    micro = cfg.batch_size // cfg.grad_accum
    if micro % n:
        raise ConfigError(f"a micro-batch of {micro} rows (batch_size / grad_accum) does not split over {n} devices")
    # jax.devices() lists each host's devices together, so each host's rows land on its own devices.
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(n // fsdp, fsdp), ("data", "fsdp"))


def shard(tree, mesh):
    """Host numpy arrays (the full values, on every host) -> global arrays laid out by the table."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree, shardings(tree, mesh))


# ----------------------------------------------------------------------------- optimiser and train step

def lr_schedule(cfg: RunConfig, steps: int):
    """lr * (s + 1) / warmup for the first warmup steps, then cosine from lr down to lr * min_lr_ratio."""
    def lr_at(s):
        warm = cfg.lr * (s + 1) / max(cfg.warmup_steps, 1)
        t = jnp.clip((s - cfg.warmup_steps) / max(steps - cfg.warmup_steps, 1), 0.0, 1.0)
        cos = cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * t)))
        return jnp.where(s < cfg.warmup_steps, warm, cos)
    return lr_at


def make_optimizer(cfg: RunConfig, steps: int):
    """Global-norm clipping, then AdamW; weight decay on matrices (embeddings too, as in Llama), not norm gains."""
    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: "norm" not in path[-1].key, params)
    adamw = optax.adamw(lr_schedule(cfg, steps), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(clip_by_global_norm(cfg.clip), adamw)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm (the same empty state; the same result up to rounding) as one scalar factor,
    g · min(1, max_norm / ‖g‖). optax's per-element select(‖g‖ < max_norm, g, g / ‖g‖ · max_norm) made XLA
    write a clipped copy of every gradient, which Adam's two moments then read; a scalar product fuses into them."""
    def update(grads, state, params=None):
        factor = jnp.minimum(1.0, max_norm / optax.tree.norm(grads))  # a zero norm: max_norm / 0 = inf
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _gather(w):
    """FSDP: all-gather each weight just before it is used, moving (fsdp - 1) / fsdp of it into each device
    (in the compute dtype). Autodiff transposes this to psum_scatter: each device's gradient for the full
    weight is summed over the fsdp group, and each device keeps only its own shard's slice."""
    if jax.lax.axis_size("fsdp") == 1:  # nothing to gather; XLA:CPU would still copy every weight
        return w
    out, logical = {}, model.logical_axes()
    for name, x in w.items():
        axes = logical[name][len(logical[name]) - x.ndim:]  # inside the layer scan there is no layers axis
        dims = [i for i, a in enumerate(axes) if RULES.get(a) == "fsdp"]
        out[name] = jax.lax.all_gather(x, "fsdp", axis=dims[0], tiled=True) if dims else x
    return out


def _psum(x, axes):
    """psum over those of `axes` with several devices: over one, XLA:CPU would still copy x (~1% of a step)."""
    axes = tuple(a for a in axes if jax.lax.axis_size(a) > 1)
    return jax.lax.psum(x, axes) if axes else x


def make_train_step(mcfg: model.Config, mesh, optimizer, impl: str = "fast"):
    """jitted (state, batch) -> (state, metrics) and (params, batch) -> (loss sum, tokens); batch is [A, B, T].
    `impl` names the model's code (fast.implementation): "fast" or "reference".

    Gradients come from a shard_map, which sees one device's rows and weight shards. The AdamW update runs
    outside it, elementwise on each shard; its one all-reduce is the scalar global norm XLA inserts to clip."""
    net = fast.implementation(impl)

    def loss_sum(params, mb):
        return jnp.sum(net.loss(params, mb["inputs"], mb["targets"], mcfg, gather=_gather) * mb["mask"])

    def local_grads(params, batch):
        # The token-mean of the whole step, whatever the micro-batching: each micro-batch's masked token losses
        # are summed and divided by the global token count, known up front from the masks. Dividing the summed
        # gradients afterwards instead was one more read and write of every weight's gradient.
        ntok = jnp.maximum(_psum(jnp.sum(batch["mask"]), ("data", "fsdp")), 1.0)

        def micro(acc, mb):
            loss, grads = jax.value_and_grad(lambda p: loss_sum(p, mb) / ntok)(params)
            return jax.tree.map(jnp.add, acc, (grads, loss)), None
        (grads, loss), _ = jax.lax.scan(micro, (jax.tree.map(jnp.zeros_like, params), jnp.float32(0)), batch)
        # psum over "data" adds other rows' gradients, moving each device's shard (params / fsdp) round the
        # data ring. _gather's backward already summed sharded weights over "fsdp"; norm gains need both axes.
        grads = jax.tree.map(lambda g, spec: _psum(g, ("data",) if "fsdp" in spec else ("data", "fsdp")),
                             grads, param_specs(grads))
        return grads, _psum(loss, ("data", "fsdp"))

    def local_eval(params, batch):
        loss = jnp.sum(jax.vmap(lambda mb: loss_sum(params, mb))(batch))
        return jax.lax.psum((loss, jnp.sum(batch["mask"])), ("data", "fsdp"))

    def on_mesh(f, params, out_specs):
        # check_vma=False: this function writes every collective itself. With the check on, JAX types each
        # weight replicated over "data" as invariant there and its autodiff inserts the psum of that weight's
        # gradient itself (the transpose of the implicit pvary), which the explicit psum above would double;
        # it also rejects the micro-batch scan's zero carry (not typed varying) and fast.dense's custom_vjp,
        # whose weight gradient varies over "data" where the weight does not (both seen with jax 0.10.2).
        return jax.shard_map(f, mesh=mesh, in_specs=(param_specs(params), BATCH), out_specs=out_specs, check_vma=False)

    def train_step(state, batch):
        params = state["params"]
        grads, loss = on_mesh(local_grads, params, (param_specs(params), P()))(params, batch)
        updates, opt = optimizer.update(grads, state["opt"], params)
        return ({"params": optax.apply_updates(params, updates), "opt": opt},
                {"loss": loss, "grad_norm": optax.tree.norm(grads)})

    def eval_step(params, batch):
        return on_mesh(local_eval, params, P())(params, batch)
    return jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


def global_batch(local, mesh, grad_accum):
    """This host's rows [b, T] -> one global [A, B / A, T] array per key, rows split over the devices."""
    def put(x):
        x = x.reshape(grad_accum, -1, x.shape[-1])
        shape = (grad_accum, x.shape[1] * jax.process_count(), x.shape[2])
        return jax.make_array_from_process_local_data(NamedSharding(mesh, BATCH), x, shape)
    return {k: put(local[k]) for k in ("inputs", "targets", "mask")}


# ----------------------------------------------------------------------------- logging

PEAK_TFLOPS = [("v5 lite", 197), ("v5e", 197), ("v5p", 459), ("v6", 918), ("v4", 275), ("v5", 459),
               ("a100", 312), ("h100", 989), ("h200", 989)]  # dense bf16 per chip


def peak_flops():
    return next((t * 1e12 for k, t in PEAK_TFLOPS if k in jax.devices()[0].device_kind.lower()), None)


def dry_run(cfg, mcfg, steps):
    """Print the plan: the config, the model, the tokens and FLOPs, and a time estimate."""
    print("\n".join(f"{key:>16} = {value!r}" for key, value in dataclasses.asdict(cfg).items() if key != "mixture"))
    print("mixture:\n" + "\n".join(f"  {src.get('weight', 0):6.1%}  {src}" for src in cfg.mixture))
    print("\n".join(data.decontamination_plan(cfg.mixture, cfg.token_cache)))  # (reads no data but a cache's counts)
    tokens_per_step, fpt = cfg.batch_size * cfg.seq_len, model.flops_per_token(mcfg, cfg.seq_len)
    total = fpt * tokens_per_step * steps
    print(f"model: {model.param_count(mcfg):,} parameters, {mcfg}")
    print(f"tokens: {steps:,} steps x {tokens_per_step:,} tokens = {steps * tokens_per_step:,} (budget {cfg.tokens:,})")
    print(f"FLOPs: {fpt:,} per token (6 N_matmul + 12 L T D), {total:.3e} in all")
    n, peak, kind = jax.device_count(), peak_flops(), jax.devices()[0].device_kind
    # without a peak entry, the rates measured on the project's 2-core CPU (303M model, tiny model)
    rate = n * peak * 0.4 if peak else (1.3e11 if model.param_count(mcfg) > 5e7 else 4.5e10)
    where = f"{n} x {kind} at 40% MFU" if peak else f"this {kind} host at ~{rate / 1e9:.0f} GFLOP/s (no peak entry)"
    print(f"estimate: {cli.hms(total / rate)} on {where}")


# ----------------------------------------------------------------------------- the run

ARCHITECTURE = [f.name for f in dataclasses.fields(model.Config) if f.name not in ("dtype", "remat")]


def _differences(have: model.Config, want: model.Config) -> str:
    return ", ".join(f"{k} {getattr(have, k)!r} -> {getattr(want, k)!r}" for k in ARCHITECTURE
                     if getattr(have, k) != getattr(want, k))


def _shapes(mcfg):
    return jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda: model.init(mcfg, jax.random.key(0))))


def resolve_model(cfg, resume) -> model.Config:
    """The run's model. A checkpoint's saved model is the truth, and init_from's weights fix their shapes: a run
    that asks for another (model, model_overrides) is refused, naming the fields, never half-applied."""
    source = None  # init_from's model; a resumed run no longer needs init_from to exist
    if cfg.init_from and not resume and not cfg.init_from_unfinished:
        checkpoints.check_finished(cfg.init_from)  # a half-trained model is no stage's start, unless asked
    if cfg.init_from and (not resume or checkpoints.read_config(cfg.init_from) is not None):
        source = checkpoints.load_config(cfg.init_from)
    asked = model_config(cfg, source)
    if resume:
        saved = model_config(dataclasses.replace(cfg, model_overrides={}), model.Config(**resume.meta["model"]))
        if diff := _differences(saved, asked):
            raise ConfigError(f"{resume.path} holds another model than this run asks for ({diff}): restore the "
                              f"settings to resume it, or use a new out_dir for a new run")
        return saved
    if source and _shapes(source) != _shapes(asked):
        raise ConfigError(f"model_overrides change the shapes of init_from's weights ({_differences(source, asked)})")
    return asked


def init_state(cfg, mcfg, mesh, optimizer, resume):
    """The train state on the mesh: from a checkpoint, else init_from's weights (fresh optimizer), else random."""
    shapes = jax.eval_shape(lambda: model.init(mcfg, jax.random.key(0)))
    opt_like = jax.eval_shape(optimizer.init, shapes)
    if resume:
        print(f"resuming from {resume.path}")
        opt = jax.tree_util.tree_map_with_path(lambda p, _: resume.opt_flat[jax.tree_util.keystr(p)], opt_like)
        return shard({"params": resume.params, "opt": opt}, mesh)
    if cfg.init_from:
        params = shard(checkpoints.load_weights(cfg.init_from, checkpoints.load_config(cfg.init_from)), mesh)
        print(f"initialised from {cfg.init_from} (fresh optimizer)")
    else:  # born sharded; jax's partitionable RNG gives the same values on any device count
        params = jax.jit(lambda k: model.init(mcfg, k), out_shardings=shardings(shapes, mesh))(jax.random.key(cfg.seed))
    opt = jax.jit(optimizer.init, out_shardings=shardings(opt_like, mesh))(params)
    return {"params": params, "opt": opt}


def run(cfg: RunConfig):
    steps = max_steps(cfg)
    if cfg.dry_run:  # touches neither data nor init_from (which may not exist yet)
        return dry_run(cfg, model_config(cfg), steps)
    with contextlib.ExitStack() as on_exit:  # whatever ends the run (an error too) releases these
        if jax.process_index() == 0:
            on_exit.callback(checkpoints.take_lock(cfg.out_dir, cfg.break_lock))
        stopped = _train(cfg, steps, on_exit.enter_context(checkpoints.Stop()), on_exit)  # True: a stop ended it early
    if not stopped and jax.process_index() == 0:  # the last line: where the model is and what to run next
        chat = any(data.parse_source(s).sft for s in cfg.mixture)  # an SFT model answers in the chat format
        prompt = '--chat --prompt "Return the n-th Fibonacci number."' if chat else '--prompt "def fibonacci(n):"'
        print(f"done: model in {cfg.out_dir}; next: python sample.py --ckpt {cfg.out_dir} {prompt}, or python "
              f"convert.py --ckpt {cfg.out_dir} --out hf/{cfg.out_dir.rstrip('/').rpartition('/')[2]}")


def _train(cfg, steps, stop, on_exit):
    me, hosts = jax.process_index(), jax.process_count()
    resume = checkpoints.resume_point(cfg.out_dir)
    mcfg = resolve_model(cfg, resume)
    tok = resume.tokenizer if resume else tokenizer.load_tokenizer(cfg.tokenizer)
    if tok.get_vocab_size() > mcfg.vocab_size:
        raise ConfigError(f"tokenizer has {tok.get_vocab_size()} tokens; the model's vocab is {mcfg.vocab_size}")
    start, last = (resume.meta["step"], resume.path) if resume else (0, None)  # (last: what a rerun resumes from)
    if me == 0:
        checkpoints.remove_uncommitted(cfg.out_dir)
    if start >= steps:  # killed after the last checkpoint, before (or while) out_dir was written: finish that
        if me == 0:
            checkpoints.save_model(cfg.out_dir, resume.params, mcfg, tok)
            print(f"{resume.path} is the last step ({steps}); {cfg.out_dir} holds its model")
        return
    mesh, optimizer = make_mesh(cfg), make_optimizer(cfg, steps)
    train_step, eval_step = make_train_step(mcfg, mesh, optimizer, cfg.impl)
    reading = dict(seed=cfg.seed, process_index=me, process_count=hosts, cache=cfg.token_cache or None)  # (val's too)
    batches = data.Batches(cfg.mixture, tok, cfg.seq_len, cfg.batch_size // hosts, **reading)
    if resume:
        batches.load_state_dict(resume.data_state)
    state = init_state(cfg, mcfg, mesh, optimizer, resume)
    resume = None  # the host copy of the weights is not needed any more

    if me == 0:
        metrics = checkpoints.MetricsLog(cfg.out_dir, start, cfg.tensorboard, cfg.wandb_project, vars(cfg))
        on_exit.callback(metrics.close)
        print(f"{model.param_count(mcfg):,} parameters, {steps} steps of {cfg.batch_size} x {cfg.seq_len} tokens, "
              f"mesh {dict(mesh.shape)}, {mcfg.dtype}, {jax.devices()[0].device_kind}")

    val = data.held_out(cfg.mixture, tok, cfg.seq_len, cfg.batch_size // hosts, **reading)  # None: there is none

    fpt, peak, tokens_per_step = model.flops_per_token(mcfg, cfg.seq_len), peak_flops(), cfg.batch_size * cfg.seq_len
    pending, held_out, t_last = [], [], time.time()
    for step in range(start + 1, steps + 1):
        state, step_metrics = train_step(state, global_batch(next(batches), mesh, cfg.grad_accum))
        pending.append(step_metrics)
        is_log = step % cfg.log_interval == 0
        is_eval = val is not None and (step % cfg.eval_interval == 0 or step == steps)
        stopping = stop.requested(step, is_log)
        is_ckpt = step % cfg.ckpt_interval == 0 or step == steps or stopping
        if not (is_log or is_eval or is_ckpt):
            continue
        # fetch the losses since the last fetch (this syncs with the device) and check them before any save
        losses = [float(m["loss"]) for m in pending]
        norms = [float(m["grad_norm"]) for m in pending]  # a NaN gradient would poison the next checkpoint
        for i, (loss, norm) in enumerate(zip(losses, norms), start=step - len(pending) + 1):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                checkpoints.diverged(last, f"loss {loss}, gradient norm {norm} at step {i}")
        dt, n = time.time() - t_last, len(losses)
        tps = n * tokens_per_step / dt
        mfu = tps * fpt / (jax.device_count() * peak) if peak else None
        # loss: the mean over the steps since the last line (one step's loss is noisy)
        record = {"step": step, "loss": sum(losses) / n, "lr": float(lr_schedule(cfg, steps)(step - 1)),
                  "grad_norm": norms[-1], "tokens_per_sec": tps, "mfu": mfu, "tokens_seen": step * tokens_per_step,
                  "decontaminated": batches.decontamination(tasks=is_ckpt)}  # (the tasks too at checkpoints)
        if hosts > 1:  # each host counted the documents it read: the run's counts are their sums
            record["decontaminated"] = data.summed_decontamination(checkpoints.every_host(record["decontaminated"]))
        if is_eval:  # the same eval_batches batches every time, read once: reaching a stream's held-out documents
            # means reading ~50x as many (corpus.HELD_OUT); kept on the host, they take eval_batches x rows x T x 12 B
            held_out = held_out or [next(val) for _ in range(cfg.eval_batches)]
            sums = [eval_step(state["params"], global_batch(b, mesh, 1)) for b in held_out]
            record["val_loss"] = sum(float(loss) for loss, _ in sums) / max(sum(float(t) for _, t in sums), 1.0)
        if me == 0:
            print(f"step {step:>6}/{steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | grad-norm "
                  f"{record['grad_norm']:.3f} | {tps:,.0f} tok/s | MFU {f'{mfu:.1%}' if mfu else 'n/a'} | ETA "
                  f"{cli.hms((steps - step) * dt / n)}" + (f" | val {record['val_loss']:.4f}" if is_eval else ""),
                  flush=True)
            metrics.add(record)
        if is_ckpt:
            last = checkpoints.save_step(cfg.out_dir, step, steps, state, batches.state_dict(), tok, mcfg,
                                         dataclasses.asdict(cfg), cfg.keep_checkpoints, last)
            if me == 0:
                metrics.save()
        if stopping:
            if me == 0:
                print(f"{stop.signal or 'preempted'}: saved step {step} of {steps}; rerun the same command to resume")
            return True
        pending, t_last = [], time.time()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or {"-h", "--help"} & set(argv):
        print(__doc__ + "\nkeys (default):\n" + "\n".join(f"  --{k}={v!r}" for k, v in vars(RunConfig()).items()))
        return
    try:
        with cli.one_line_errors(data.DataError, tokenizer.TokenizerError, checkpoints.CheckpointError,
                                 storage.StorageError):
            cfg = load_run_config(argv)
            if cfg.impl == "fast":
                fast.reuse_host_memory()  # before jax starts its threads (see there)
            if cfg.coordinator == "auto":  # before anything touches a device
                jax.distributed.initialize()
            elif cfg.coordinator:
                jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
            run(cfg)
    except KeyboardInterrupt:  # a second Ctrl-C (see Stop)
        print("\ninterrupted: stopped without a checkpoint; a rerun resumes from the last one", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
