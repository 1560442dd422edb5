"""What makes fast.py fast on this platform: layouts in the compiled HLO, page faults, compile caches.

Equality with the reference is test_fast.py's; these check that each trick still does its job. They need
the feature they test (XLA:CPU, glibc) and skip, saying why, where it is missing.
"""
import os
import platform
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fast
import sample
from helpers import GQA, random_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout trick; this backend is not CPU")
GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="reuse_host_memory needs glibc's mallopt")


@CPU
def test_dense_gradient_contracts_no_leading_axis_on_cpu():
    """The compiled gradient of fast.dense has no dot contracting the leading axis of its left operand, whether
    x is the narrower operand (6 x 5 @ 5 x 7) or g is (6 x 7 @ 7 x 5), and only the narrower is transposed."""
    rng = np.random.default_rng(0)
    for (n, i, o) in [(6, 5, 7), (6, 7, 5)]:
        x, w, c = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(n, i), (i, o), (n, o)])
        grad = jax.grad(lambda x, w, c: jnp.sum(fast.dense(x, w) * c), (0, 1))  # c an argument: not constant-folded
        hlo = jax.jit(grad).lower(x, w, c).compile().as_text()
        dots = [line for line in hlo.splitlines() if " dot(" in line]
        assert len(dots) == 2
        # A dot may contract x's axis 0 only into a column-major result, which is physically gᵀ·x.
        assert all("{0,1}" in d.split(" dot(")[0] for d in dots if "lhs_contracting_dims={0}" in d), dots
        assert f"f32[{max(i, o)},{n}]" not in hlo


@CPU
def test_the_optimizer_update_passes_over_each_weight_three_times():
    """The compiled train step writes three arrays of each weight's shape after the backward pass: Adam's m and
    v (each reading its old value and the gradient) and the weight (reading it, m and v). A clip or token-mean
    division written per element was a fourth, a scaled copy of every gradient (see train.clip_by_global_norm
    and local_grads). Counted for w_down, [L, F, D], a shape no other weight has; the zero-fill of the
    backward pass's gradient accumulator is not a pass over a weight."""
    import model
    import train
    cfg = train.RunConfig(batch_size=2, seq_len=16)
    mesh, optimizer = train.make_mesh(cfg), train.make_optimizer(cfg, steps=100)
    step, _ = train.make_train_step(GQA, mesh, optimizer)
    params = train.shard(model.init(GQA, jax.random.key(0)), mesh)
    tokens = np.zeros((2, 17), np.int32)
    batch = train.global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                "mask": np.ones((2, 16), np.float32)}, mesh, 1)
    hlo = step.lower({"params": params, "opt": optimizer.init(params)}, batch).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):].splitlines()
    shape = f"f32[{GQA.n_layers},{GQA.d_ff},{GQA.d_model}]"
    fills = re.compile(r" fusion\((%constant[.\d]*(, )?)+\)")  # made of constants alone
    passes = [line for line in entry if f"= {shape}" in line and " fusion(" in line and not fills.search(line)]
    assert len(passes) == 3, "\n".join(passes)


def test_the_train_step_lowers_for_a_tpu(monkeypatch):
    """train.py's step, shard_map and optimizer included, lowered for a TPU (faked: the backend's name; lowering
    runs Mosaic's checks, compiling would need the chip) at 1024 tokens a row with remat="dots", as the stage
    files run: splash's forward kernel once, its dq and dkv kernels in the backward pass."""
    import dataclasses

    import model
    import train
    config = dataclasses.replace(GQA, max_seq_len=1024, dtype="bfloat16", remat="dots")
    cfg = train.RunConfig(batch_size=2, seq_len=1024)
    mesh, optimizer = train.make_mesh(cfg), train.make_optimizer(cfg, steps=100)
    step, _ = train.make_train_step(config, mesh, optimizer)
    params = jax.eval_shape(lambda: model.init(config, jax.random.key(0)))
    state = {"params": params, "opt": jax.eval_shape(optimizer.init, params)}
    batch = {k: jax.ShapeDtypeStruct((1, 2, 1024), jnp.float32 if k == "mask" else jnp.int32)
             for k in ("inputs", "targets", "mask")}
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    lowered = step.trace(state, batch).lower(lowering_platforms=("tpu",)).as_text()
    assert lowered.count("tpu_custom_call") == 3


def test_decoding_compiles_once_per_bucket():
    """New prompt lengths inside one width bucket reuse the compiled prefill and decode loop."""
    config = GQA
    params = random_params(config)
    rng = np.random.default_rng(0)
    for n in (17, 20, 25, 31, 32):  # one prompt-width bucket (32); max_new fixed
        sample.generate_ids(params, config, [rng.integers(1, 300, n).tolist()], 0, max_new_tokens=8)
        if n == 17:
            sizes = sample._admit._cache_size(), sample._decode_jit("fast")._cache_size()
    assert (sample._admit._cache_size(), sample._decode_jit("fast")._cache_size()) == sizes


_FAULTS_PER_RUN = """
import resource, sys
import jax, jax.numpy as jnp
import fast, model
tuned = sys.argv[1] == "tuned" and fast.reuse_host_memory()
c = model.Config(vocab_size=8192, d_model=256, n_layers=1, n_heads=4, n_kv_heads=4, d_ff=768)
p, t = model.init(c, jax.random.key(0)), jnp.zeros((4, 256), jnp.int32)
step = jax.jit(jax.grad(lambda p: model.cross_entropy(model.forward(p, t, c), t).mean())).lower(p).compile()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(p))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, sorted(faults[2:])[4] / (step.memory_analysis().temp_size_in_bytes / 4096))  # median after warm-up
"""


@GLIBC
def test_reuse_host_memory_stops_fresh_pages_for_every_run():
    """XLA:CPU mallocs each run's scratch from a worker thread, which glibc serves with a fresh mmap: by
    default a run faults in about one page per 4 KB of scratch. After reuse_host_memory (called before
    jax starts, as the scripts do) the scratch is reused: the median run faults in under half of that (the
    heap settles within a few runs; until then some runs still grow it)."""
    ratios = {}
    for mode in ["default", "tuned"]:
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_RUN, mode], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
        ratios[mode] = float(out[1])
        assert out[0] == ("True" if mode == "tuned" else "False")
    assert ratios["default"] > 0.9 and ratios["tuned"] < 0.5, ratios


_FAULTS_PER_LARGE_BLOCK = """
import ctypes, resource
import fast, model
assert fast.reuse_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
n = 2**31 + 2**28  # 2.25 GiB: above any threshold an int can set, as the 303M step's 3.76 GiB scratch is
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(n)
    ctypes.memset(block, 1, n)
    libc.free(block)
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (n / 4096))
print(*faults)
"""


@GLIBC
def test_reuse_host_memory_keeps_blocks_larger_than_2_gib():
    """With trimming merely raised to the largest int (2 GiB), glibc gave a freed 3.76 GiB scratch back to
    the kernel and every 303M step faulted it in again; trimming off, the second use of a block that
    large touches no new page."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_LARGE_BLOCK], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    first, *later = map(float, out)
    assert first > 0.9 and max(later) < 0.01, out
