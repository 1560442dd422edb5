"""bench.py runs end to end and writes the rows it promises (a smoke test: no timing is asserted)."""
import json
import os
import subprocess
import sys

import pytest

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
    import profiling
    names = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_kernel__5x_cublas "
        "[custom-call.12]": "matmul",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64 [custom-call.3]": "attention",
        "splash_mha_fwd_residuals": "attention", "convolution_add_fusion.2": "matmul",
        "loop_multiply_fusion_3 [loop_multiply_fusion.3]": "fusion", "input_reduce_fusion [input_reduce_fusion.1]":
        "fusion", "copy_fusion_5 [copy.7]": "copy", "transpose.3": "copy", "all-reduce.1": "collective",
        "ncclDevKernel_AllGather_RING_LL [all-gather-start.2]": "collective", "rng-bit-generator.1": "other"}
    assert {name: profiling.op_kind(name) for name in names} == names
    ms = {"sm90_xmma_gemm_a [custom-call.1]": 19.0, "loop_add_fusion [loop_add_fusion.2]": 3.0,
          "copy.4": 1.5, "loop_mul_fusion [loop_mul_fusion]": 2.0}
    lines = profiling.profile_lines(ms, top=2)
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


def test_a_tokens_cost_is_timed_in_pairs_so_a_busy_machine_cancels(monkeypatch):
    """time_per_token on a fake clock: token i costs a + b·i, a run also pays a prefill, its first call a compile,
    and each repetition runs `slow` times slower (neighbours busy for a while). A token's cost after n is the
    median over repetitions; the growth, each repetition's own ratio, is exact whatever the slowdowns."""
    import bench
    a, b, prefill, compile_s = 0.5, 0.002, 3.0, 10.0
    slow = iter([1.5] * 4 + [1.0] * 4 + [3.0] * 4 + [1.5] * 4)  # the compiling calls, then 3 repetitions of 1, 32..
    clock, compiled = [0.0], set()

    def generate(prompts, n, eos, batch, stats):
        assert (len(prompts), eos, batch, stats) == (1, -1, 1, None)
        clock[0] += compile_s * (n not in compiled) + next(slow) * (prefill + sum(a + b * i for i in range(2, n + 1)))
        compiled.add(n)
        return [[7] * n]

    def timed(fn):
        t0 = clock[0]
        return fn(), clock[0] - t0
    monkeypatch.setattr(bench, "_timed", timed)
    result = bench.time_per_token({"new": [32, 512, 992]}, 3, generate, [[1] * 16])
    cost = lambda n: a + b * (n + 2) / 2  # noqa: E731  the mean of a + b·i over i = 2..n
    assert result["per_token_s"].keys() == {"32", "512", "992"}
    for n in (32, 512, 992):  # slowdowns 1, 3, 1.5: the median is 1.5
        assert abs(result["per_token_s"][str(n)] - 1.5 * cost(n)) < 1e-9
    assert abs(result["growth"] - cost(992) / cost(32)) < 1e-9 and abs(result["compile_s"] - 4 * compile_s) < 1e-6
    assert len(result["times"]) == 3
    with pytest.raises(AssertionError, match="every token is generated"):  # a run that stops short is caught
        bench.time_per_token({"new": [32]}, 1, lambda *args: [[7]], [[1] * 16])


def test_rows_are_medians_over_rounds_and_ratios_are_paired_by_round():
    """summary_row: each side's median over rounds, the ratio the median of each round's own ratio (not the
    ratio of the medians), a side that failed in a round (None) left out of that round."""
    import bench
    rounds = [{"fast": {"tps": 100}, "reference": {"tps": 50}, "transformers": {"tps": 10}},
              {"fast": {"tps": 300}, "reference": None, "transformers": {"tps": 100}},
              {"fast": {"tps": 200}, "reference": {"tps": 70}, "transformers": {"tps": 20}}]
    row = bench.summary_row(rounds, "w", lambda r: r["tps"], unit="tokens/s")
    assert row == {"workload": "w", "smallcoder": 200, "reference": 60, "transformers": 20,
                   "smallcoder_rounds": [100, 300, 200], "ratio": 10.0,
                   "ratio_rounds": [10.0, 3.0, 10.0], "ratio_reference": 4.25,
                   "ratio_reference_rounds": [5.0, None, 3.5], "unit": "tokens/s"}
    assert bench.summary_row(rounds[:1], "w", lambda r: r["tps"], ratio=False) == {
        "workload": "w", "smallcoder": 100, "reference": 50, "transformers": 10, "smallcoder_rounds": [100]}
    nobody = bench.summary_row([{"fast": None, "transformers": None}], "w", lambda r: r["tps"])
    assert nobody["smallcoder"] is nobody["transformers"] is nobody["ratio"] is nobody["reference"] is None
