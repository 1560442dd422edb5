"""Shared by the test files (pytest puts tests/ on sys.path)."""
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
