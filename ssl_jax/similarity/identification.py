"""Layer identification across networks (Kornblith et al. 2019, Table 2).

Given a similarity index between every layer of every pair of networks of one architecture
trained from different seeds, a good index should find, for layer i of network a, that the
most similar layer of network b is layer i. The score is the fraction of (layer, ordered pair of
different networks) for which it does.
"""
from __future__ import annotations

import numpy as np


def corresponding_layer_hits(similarity) -> np.ndarray:
    """similarity: [M, M, L, L], entry [a, b, i, j] = s(layer i of net a, layer j of net b);
    the a == b blocks are ignored. Returns bool [M * (M - 1), L]: for each ordered pair (a, b),
    a != b (row-major), whether layer i of a is strictly more similar to layer i of b than to
    every other layer of b.

    Ties count as misses: an index that is constant across layers (e.g. every linearly invariant
    index at 1 when features >= examples) must not score as if it identified them.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 4 or s.shape[0] != s.shape[1] or s.shape[2] != s.shape[3]:
        raise ValueError(f"similarity must be [M, M, L, L], got shape {s.shape}")
    m, _, n_layers, _ = s.shape
    if m < 2 or n_layers < 2:
        raise ValueError(f"need at least 2 networks and 2 layers, got M={m}, L={n_layers}")
    off = ~np.eye(m, dtype=bool)
    pairs = s[off]                                     # [M(M-1), L, L]
    if not np.isfinite(pairs).all():
        raise ValueError("similarity has NaN/inf entries between different networks")
    diag = np.einsum("pii->pi", pairs)                 # [P, L] s(a_i, b_i)
    others = np.where(np.eye(n_layers, dtype=bool), -np.inf, pairs)
    return diag > others.max(axis=2)                   # strict: a tie is not an identification


def corresponding_layer_accuracy(similarity) -> tuple[float, np.ndarray]:
    """(overall fraction of hits, per-layer fraction [L]) of `corresponding_layer_hits`."""
    hits = corresponding_layer_hits(similarity)
    return float(hits.mean()), hits.mean(axis=0)
