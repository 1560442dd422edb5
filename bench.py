"""Side-by-side speed: smallcoder (JAX) against Hugging Face transformers (PyTorch eager).

Every workload runs twice, once per implementation, each in a fresh subprocess: both frameworks
start their own thread pools, and sharing a 2-core CPU between them would measure contention, not
code. Both sides get the same config, batch, dtype and initial weights (ours, mapped into
LlamaForCausalLM by convert.py's layout). Warm-up (and, for JAX, compilation) is excluded; the
median of several repetitions is reported, compile time and peak memory separately.

    python bench.py                              # every CPU workload, tiny and 303M
    python bench.py --model tiny --only decode
    python bench.py --device gpu --model smallcoder --json bench.json
    python bench.py --device gpu --model smallcoder --only train --batch 8 16 32 --remat none dots full
    python bench.py --device gpu --model smallcoder --only train --impl fast --profile prof/   # + where time goes

Our side runs twice: `--impl fast` (fast.py, what the tools use) and `--impl reference` (model.py as written),
so a reader sees what the speed tricks buy. ratio = how many times faster smallcoder is (its tokens/s over
transformers'); "ref ratio" is the same for the reference path.
MFU = tokens/s x model.flops_per_token / peak FLOP/s of the chip (PaLM's convention; see README).
`--batch` and `--remat` turn each training workload into one row per (batch, remat policy), the sweep that
picks a chip's batch; "scratch GB" is XLA's compiled temporary memory for our fast step (a property of the
program, the same every run), "peak GB" what the device (or the process, on a CPU) held at most.
`--profile DIR` also traces two of our training steps into DIR (XProf, TensorBoard or Perfetto open it) and
prints the device time per step by kind of op (matmul, attention, collective, copy, fusion) and the longest ops.
"""
import argparse
import collections
import dataclasses
import glob
import json
import os
import statistics
import subprocess
import sys
import time

# (workload name) -> what it runs. seq is the training sequence length; decode prompts are 16 tokens.
CPU_WORKLOADS = {
    "train_tiny": dict(kind="train", config="tiny", batch=8, seq=256),
    "train_303m": dict(kind="train", config="smallcoder", batch=1, seq=1024),
    "decode_tiny_b1": dict(kind="decode", config="tiny", batch=1),
    "decode_tiny_b16": dict(kind="decode", config="tiny", batch=16),
    "decode_303m_b1": dict(kind="decode", config="smallcoder", batch=1),
    "decode_303m_b16": dict(kind="decode", config="smallcoder", batch=16),
}
ACCEL_WORKLOADS = {
    "train_303m_8x1024": dict(kind="train", config="smallcoder", batch=8, seq=1024),
    "train_303m_16x1024": dict(kind="train", config="smallcoder", batch=16, seq=1024),
    "decode_303m_b1": dict(kind="decode", config="smallcoder", batch=1),
    "decode_303m_b32": dict(kind="decode", config="smallcoder", batch=32),
}
PROMPT_LEN, NEW_TOKENS = 16, 128
# Training steps untimed before the timed ones, on both sides: each side's second step is still slow
# (303M on the CPU: ours 11.7 s, then ~6.1; transformers 14.2 s, then ~12.5) while its allocator's heap grows.
TRAIN_WARMUP = 2


# ----------------------------------------------------------------------------- the two sides

def _tokens_per_step(w):
    return w["batch"] * (w["seq"] if w["kind"] == "train" else NEW_TOKENS)


def run_ours(w, dtype, reps, impl, profile_dir=None):
    """Time one workload with smallcoder's `impl` ("fast" or "reference"): {"times": seconds per repetition,
    "compile_s", "scratch_gb" (training), "profile" (training, with profile_dir: see `device_time`)}."""
    import jax
    import numpy as np
    import model
    config = dataclasses.replace(model.CONFIGS[w["config"]], dtype=dtype, remat=w.get("remat", "none"))
    params = model.init(config, jax.random.key(0))
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
            profile = device_time(profile_dir, PROFILE_STEPS)
        return {"times": times, "compile_s": compile_s, "scratch_gb": scratch_gb, "profile": profile}
    import sample
    prompts = rng.integers(1, config.vocab_size, (w["batch"], PROMPT_LEN)).tolist()
    run = lambda: sample.generate_ids(params, config, prompts, eos_id=-1, max_new_tokens=NEW_TOKENS,
                                       batch_size=w["batch"], impl=impl)  # eos -1: never stop early
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        assert all(len(ids) == NEW_TOKENS for ids in out), "every row must generate NEW_TOKENS tokens"
    # The first call compiled and then decoded: count only the compiling as compile time.
    return {"times": times, "compile_s": compile_s - statistics.median(times)}


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
    import model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model.CONFIGS[w["config"]]
    hf = hf_model(jax.device_get(model.init(config, jax.random.key(0))), config).to(device)
    torch_dtype = getattr(torch, dtype)
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if w["kind"] == "train":
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
    else:
        hf = hf.to(torch_dtype)
        prompts = torch.from_numpy(rng.integers(1, config.vocab_size, (w["batch"], PROMPT_LEN))).to(device)
        hf.generation_config.eos_token_id = None  # both sides generate exactly NEW_TOKENS

        @torch.inference_mode()
        def step():
            out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
            assert out.shape[1] == PROMPT_LEN + NEW_TOKENS
    t0 = time.perf_counter()
    step()
    sync()
    compile_s = time.perf_counter() - t0  # the first call: torch's lazy initialisation, not a compile
    for _ in range(TRAIN_WARMUP - 1 if w["kind"] == "train" else 0):
        step()
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"times": times, "compile_s": compile_s}


# ----------------------------------------------------------------------------- where the device's time goes

PROFILE_STEPS = 2
# Kinds of op, by the names a device trace gives them: a GPU kernel's name (cuBLAS' sm90_xmma_gemm_..., cuDNN's
# ..._sdpa_..._flash_...) and its HLO op's (loop_multiply_fusion.3, copy.12), a TPU op's (convolution_add_fusion.2).
# The first kind whose key the name contains wins: a fused matmul is a matmul.
OP_KINDS = (("attention", ("fmha", "sdpa", "flash", "splash", "cudnn")),
            ("matmul", ("gemm", "xmma", "cutlass", "cublas", "matmul", "convolution", "dot")),
            ("collective", ("nccl", "all-reduce", "allreduce", "all-gather", "allgather", "reduce-scatter",
                            "reducescatter", "all-to-all", "collective-permute")),
            ("copy", ("copy", "transpose", "memcpy", "memset", "dynamic-update-slice", "dynamic_update_slice")),
            ("fusion", ("fusion", "reduce", "loop")))
CONTAINER_LINES = ("Module", "Step", "TraceMe", "Framework", "Source", "Launch")  # spans that hold the ops


def op_kind(name: str) -> str:
    name = name.lower()
    return next((kind for kind, keys in OP_KINDS if any(key in name for key in keys)), "other")


def device_time(trace_dir: str, steps: int) -> dict:
    """Milliseconds per step of each op on the device planes of the newest trace in trace_dir: {op name:
    ms}. A GPU kernel is named with its HLO op ("kernel [hlo op]"). On a CPU there is no device plane: {}."""
    from jax.profiler import ProfileData
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    ms = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if any(word in line.name for word in CONTAINER_LINES):
                continue
            for event in line.events:
                hlo_op = dict(event.stats).get("hlo_op")
                ms[f"{event.name} [{hlo_op}]" if hlo_op else event.name] += event.duration_ns / 1e6 / steps
    return dict(ms)


def profile_lines(ms: dict, top: int = 8) -> list[str]:
    """What to print of `device_time`'s result: the busy time by kind of op, then the longest ops."""
    if not ms:
        return ["  profile: the trace has no device plane (a CPU backend)"]
    kinds = collections.Counter()
    for name, t in ms.items():
        kinds[op_kind(name)] += t
    lines = [f"  device time per step {sum(ms.values()):.1f} ms: " +
             ", ".join(f"{kind} {t:.1f}" for kind, t in kinds.most_common())]
    lines += [f"    {t:8.2f} ms  {name[:100]}" for name, t in collections.Counter(ms).most_common(top)]
    return lines


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
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
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
                      "tokens_per_sec": _tokens_per_step(w) / median, "peak_gb": peak, **result}))


def _device_peak_gb(impl):
    if impl != "transformers":
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30 or None
    import torch
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- the driver

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
              if args.model in ("all", w["config"]) and args.only in (None, w["kind"])}
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
    if args.batch and min(args.batch) < 1:
        parser.error(f"--batch must be positive, not {min(args.batch)}")
    impls = ["fast", "reference"] if args.impl == "both" else [args.impl]
    print(f"device: {chip} ({os.cpu_count()} CPU cores), dtype {args.dtype}, median of {args.reps}; tokens/s, "
          f"ratio = ours / transformers", flush=True)
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    print(f"{'workload':<20}{'smallcoder':>12}{'reference':>12}{'transformers':>14}{'ratio':>8}{'ref ratio':>10}"
          f"{'compile s':>11}{'peak GB (ours/hf)':>19}{'scratch GB':>12}")
    rows = []
    for name, w in workloads(args, accel).items():
        ours = {impl: spawn(w, impl, args, accel) for impl in impls}
        theirs = None if args.no_transformers else spawn(w, "transformers", args, accel)
        tps = {impl: r and r["tokens_per_sec"] for impl, r in ours.items()}
        tps_hf = theirs and theirs["tokens_per_sec"]
        ratio = {impl: t and tps_hf and t / tps_hf for impl, t in tps.items()}
        main_impl = impls[0]  # fast when it runs
        first = ours[main_impl] or {}
        rows.append({"workload": name, "smallcoder": tps.get("fast"), "reference": tps.get("reference"),
                     "transformers": tps_hf, "ratio": ratio.get("fast"), "ratio_reference": ratio.get("reference"),
                     "unit": "tokens/s", "peak_gb": first.get("peak_gb"), "peak_gb_transformers":
                     theirs and theirs["peak_gb"], "scratch_gb": first.get("scratch_gb"),
                     "device_ms_per_step": first.get("profile")})
        print(f"{name:<20}{fmt(tps.get('fast'), ',.1f'):>12}{fmt(tps.get('reference'), ',.1f'):>12}"
              f"{fmt(tps_hf, ',.1f'):>14}{fmt(ratio.get('fast'), '.2f') + 'x':>8}"
              f"{fmt(ratio.get('reference'), '.2f') + 'x':>10}{fmt(first.get('compile_s'), '.1f'):>11}"
              f"{fmt(first.get('peak_gb'), '.2f') + ' / ' + fmt(theirs and theirs['peak_gb'], '.2f'):>19}"
              f"{fmt(first.get('scratch_gb'), '.2f'):>12}", flush=True)
        if first.get("profile") is not None:
            print("\n".join(profile_lines(first["profile"])), flush=True)
        if w["kind"] == "train" and w["config"] == "smallcoder" and not accel and first:
            rows.append({"workload": "compile_303m_train", "smallcoder": first["compile_s"],
                         "transformers": None, "ratio": None, "unit": "seconds"})
        if w["kind"] == "train" and peak:
            import model
            flops = model.flops_per_token(model.CONFIGS[w["config"]], w["seq"])
            mfu = lambda t: t and t * flops / peak  # noqa: E731
            rows.append({"workload": "mfu_" + name.removeprefix("train_"), "smallcoder": mfu(tps.get("fast")),
                         "reference": mfu(tps.get("reference")), "transformers": mfu(tps_hf),
                         "ratio": ratio.get("fast"), "unit": "fraction of peak"})
            print(f"{'  MFU':<20}{fmt(mfu(tps.get('fast')), '.1%'):>12}{fmt(mfu(tps.get('reference')), '.1%'):>12}"
                  f"{fmt(mfu(tps_hf), '.1%'):>14}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
