"""Shared by the test files (pytest puts tests/ on sys.path)."""
import json

import jax
import numpy as np

import model


def random_params(config, seed=0):
    """Random weights from numpy (no RNG kernels to compile): matrices ~ N(0, 0.05²), norm gains ~ 1 ± 0.1."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        base = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
        return (base + (0.1 if base else 0.05) * rng.standard_normal(s.shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(lambda: model.init(config, jax.random.key(0))))


def train_tokenizer(texts, vocab_size):
    """A small byte-level BPE with "<|endoftext|>" at id 0, like StarCoder's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id("<|endoftext|>") == 0
    return tok


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def stream(batches_list):
    """The packed token stream (rows concatenated) and the loss mask of each token (None for a row's first)."""
    ids, mask = [], []
    for b in batches_list:
        for row_in, row_tg, row_m in zip(b["inputs"], b["targets"], b["mask"]):
            ids += [int(row_in[0])] + row_tg.tolist()
            mask += [None] + row_m.tolist()
    return ids, mask


def take(batches, n):
    return [next(batches) for _ in range(n)]


def assert_same_batches(want, got):
    assert len(want) == len(got)
    for x, y in zip(want, got):
        for key in ("inputs", "targets", "mask"):
            assert x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key])


def resumes(batches, make, checkpoints):
    """Checkpoint `batches` after each of its first `checkpoints` steps (state_dict through JSON, as a checkpoint
    stores it) and restore a fresh make() there: yields (step, state, the restored batches)."""
    for n in range(checkpoints):
        state = json.loads(json.dumps(batches.state_dict()))
        restored = make()
        restored.load_state_dict(state)
        yield n, state, restored
        next(batches)


# Small enough to compile in a second, big enough to have GQA (2 query heads per KV head) and 2 layers.
GQA = model.Config(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, max_seq_len=64,
                   rope_theta=500000.0, rms_norm_eps=1e-5)
