"""bench.py runs end to end and writes the rows it promises (a smoke test: no timing is asserted)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_train_tiny_writes_rows(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--config", "tiny", "--only", "train", "--reps", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train_tiny" in proc.stdout
    (row,) = json.loads(out.read_text())
    assert row["workload"] == "train_tiny" and row["unit"] == "tokens/s"
    assert row["smallcoder"] > 0 and row["reference"] > 0 and row["transformers"] > 0
    assert abs(row["ratio"] - row["smallcoder"] / row["transformers"]) < 1e-9
    assert abs(row["ratio_reference"] - row["reference"] / row["transformers"]) < 1e-9


def test_bench_refuses_to_overwrite_json(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("keep me")
    proc = subprocess.run([sys.executable, "bench.py", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "exists" in proc.stderr
    assert out.read_text() == "keep me"


def test_bench_sweeps_batch_and_remat(tmp_path):
    """--batch x --remat: one row each, and full remat compiles to less scratch memory than none."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--config", "tiny", "--only", "train", "--reps", "1",
                           "--impl", "fast", "--no-transformers", "--batch", "4", "--remat", "none", "full",
                           "--json", str(out), "--profile", str(tmp_path / "prof")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["workload"]: row for row in json.loads(out.read_text())}
    assert sorted(rows) == ["train_tiny_4x256", "train_tiny_4x256_full"]
    assert all(row["smallcoder"] > 0 and row["peak_gb"] > 0 for row in rows.values())
    assert 0 < rows["train_tiny_4x256_full"]["scratch_gb"] < rows["train_tiny_4x256"]["scratch_gb"]
    # --profile: a trace per workload; a CPU trace has no device plane, which the summary says
    assert all(list((tmp_path / "prof" / name).rglob("*.xplane.pb")) for name in rows)
    assert all(row["device_ms_per_step"] == {} for row in rows.values())
    assert proc.stdout.count("the trace has no device plane") == 2


def test_profile_summary_sorts_device_time_by_kind():
    """Ops by the names device traces give them (GPU kernels with their HLO op, TPU ops), and the summary."""
    import bench
    names = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_kernel__5x_cublas "
        "[custom-call.12]": "matmul",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64 [custom-call.3]": "attention",
        "splash_mha_fwd_residuals": "attention", "convolution_add_fusion.2": "matmul",
        "loop_multiply_fusion_3 [loop_multiply_fusion.3]": "fusion", "input_reduce_fusion [input_reduce_fusion.1]":
        "fusion", "copy_fusion_5 [copy.7]": "copy", "transpose.3": "copy", "all-reduce.1": "collective",
        "ncclDevKernel_AllGather_RING_LL [all-gather-start.2]": "collective", "rng-bit-generator.1": "other"}
    assert {name: bench.op_kind(name) for name in names} == names
    ms = {"sm90_xmma_gemm_a [custom-call.1]": 19.0, "loop_add_fusion [loop_add_fusion.2]": 3.0,
          "copy.4": 1.5, "loop_mul_fusion [loop_mul_fusion]": 2.0}
    lines = bench.profile_lines(ms, top=2)
    assert lines[0] == "  device time per step 25.5 ms: matmul 19.0, fusion 5.0, copy 1.5"
    assert "19.00 ms  sm90_xmma_gemm_a" in lines[1] and "3.00 ms  loop_add_fusion" in lines[2] and len(lines) == 3


def test_the_evaluation_like_workload_is_what_it_says():
    """bench.py's eval workload on our side: the chain model generates each prompt's designed length (time_decoding
    asserts it), half the prompts stop early, and continuous batching keeps the useful fraction of row-steps
    above the goal, where batch-at-a-time decoding of the same prompts would be near 0.5."""
    import bench
    import sample
    w = {"kind": "eval", "config": "tiny", "batch": 16, "context": 1024}
    config, params = bench._setup(w, "float32")
    prompts, ends = bench.eval_prompts(config)
    assert len(prompts) == 32 and sorted(set(ends))[-1] == bench.EVAL_MAX_NEW and ends.count(bench.EVAL_MAX_NEW) == 16
    assert all(8 <= n <= 24 for n in ends if n < bench.EVAL_MAX_NEW)

    def generate(prompts, max_new, eos, batch, stats):
        return sample.generate_ids(params, config, prompts, eos, max_new_tokens=max_new, batch_size=batch, stats=stats)
    result = bench.time_decoding(w, 1, generate, None, config)
    assert bench.USEFUL_GOAL <= result["useful"] <= 1 and result["tokens_per_sec"] > 0
