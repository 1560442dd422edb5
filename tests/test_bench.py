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
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["workload"]: row for row in json.loads(out.read_text())}
    assert sorted(rows) == ["train_tiny_4x256", "train_tiny_4x256_full"]
    assert all(row["smallcoder"] > 0 and row["peak_gb"] > 0 for row in rows.values())
    assert 0 < rows["train_tiny_4x256_full"]["scratch_gb"] < rows["train_tiny_4x256"]["scratch_gb"]
