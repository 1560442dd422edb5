"""Run train.main with synthetic data, for tests/test_train.py (which starts it in subprocesses).

`python tests/train_worker.py --key=value ...`. The fake Batches makes global row r of step s a pure
function of (seed, s, r), and process p of P gets rows [p B/P, (p+1) B/P): so 1 process and several
processes see the same global batches, whatever the device count. Environment:
  DEVICES=n      simulate n CPU devices (set before jax is imported)
  KILL_AT=s      send this process SIGKILL (or SIGNAL=TERM, INT, ...) when it fetches the batch of step s, and
                 then take a second per batch: a real step outlasts the notice's trip between hosts
  MEMSTATS=1     print the device's peak memory at the end (accelerators)
"""
import os
import signal
import sys
import time
from pathlib import Path

if os.environ.get("DEVICES"):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={os.environ['DEVICES']}"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VOCAB = 256
TINY = ["--model=tiny", "--tokenizer=fake",
        "--model_overrides={'vocab_size': 256, 'd_model': 64, 'n_layers': 2, 'n_heads': 4, 'n_kv_heads': 2, "
        "'d_ff': 128, 'max_seq_len': 64}"]


def fake_tokenizer():
    from tokenizers import Tokenizer, models
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    return Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))


def fake_rows(seed, step, rows, T):
    """Global rows `rows` of batch `step`: tokens and a loss mask with 0-60% zeros (uneven per row)."""
    out = {"inputs": [], "targets": [], "mask": []}
    for r in rows:
        rng = np.random.default_rng([seed, step, r])
        ids = rng.integers(0, VOCAB, T + 1).astype(np.int32)
        for t in np.flatnonzero(rng.random(T + 1) < 0.75):  # learnable: mostly "next token = this one + 1"
            ids[t] = (ids[t - 1] + 1) % VOCAB if t else ids[t]
        out["inputs"].append(ids[:-1])
        out["targets"].append(ids[1:])
        out["mask"].append((rng.random(T) > rng.uniform(0.0, 0.6)).astype(np.float32))
    return {k: np.stack(v) for k, v in out.items()}


class FakeBatches:
    def __init__(self, sources, tokenizer, seq_len, batch_size, *, seed=0, split="train", process_index=0,
                 process_count=1, cache=None):
        self.seq_len, self.rows, self.seed = seq_len, batch_size, seed + (1000 if split == "val" else 0)
        self.first, self.process_index = process_index * batch_size, process_index
        self.step, self.split = 0, split

    def __iter__(self):
        return self

    def __next__(self):
        self.step += 1
        if self.split == "train" and self.step > int(os.environ.get("KILL_AT") or 1 << 30):
            time.sleep(1.0)
        if self.split == "train" and str(self.step) == os.environ.get("KILL_AT"):
            os.kill(os.getpid(), signal.Signals["SIG" + os.environ.get("SIGNAL", "KILL")])
        return fake_rows(self.seed, self.step, range(self.first, self.first + self.rows), self.seq_len)

    def reset(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, d):
        self.step = d["step"]

    def decontamination(self, tasks=False):
        """Counts that differ by host (process p dropped p + 1 documents), so a run's can be seen to add up."""
        p = self.process_index
        return {"fake": {"docs": p + 1, **({"matched": {"HumanEval/0": p + 1, f"MBPP/{p + 1}": 1}} if tasks else {})}}


def patch():
    import data
    import tokenizer
    data.Batches = FakeBatches
    tokenizer.load_tokenizer = lambda spec: fake_tokenizer()


if __name__ == "__main__":
    patch()
    import train
    train.main(sys.argv[1:])
    if os.environ.get("MEMSTATS"):
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        print(f"peak device memory: {stats.get('peak_bytes_in_use', 0) / 2**30:.2f} GiB")
