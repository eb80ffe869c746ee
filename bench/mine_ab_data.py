"""The data of the mining A/B scripts (mine_ab.py, mine_libs_ab.py): unit-norm f32 queries and
corpus from one seed, and their bf16 bits (round to nearest even), so that every variant and
every build mines the same rows."""
import numpy as np


def bf16_bits(a):
    u = a.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def unit_rows(Q, N, d, seed=0):
    """(q, c, q16, c16): Q queries and N corpus rows of dimension d, unit norm, and bf16 bits."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((N, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = rng.standard_normal((Q, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, c, bf16_bits(q), bf16_bits(c)
