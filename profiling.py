"""Where a device's time goes: a `jax.profiler` trace's device time per op, and a summary by kind of op.

bench.py --profile traces a few training steps and prints `profile_lines(device_time(trace_dir, steps))`. XProf,
TensorBoard or Perfetto open the same trace for the whole picture.
"""
import collections
import glob
import os

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
