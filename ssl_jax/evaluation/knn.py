"""Weighted cosine k-nearest-neighbour classifier on frozen features (InstDisc / DINO style).

For each test feature: cosine similarity to every train feature, keep the k most similar,
each votes for its class with weight exp(sim / T); the class with the largest summed weight
wins (ties -> lowest class index, as ``argmax``). Test features are processed in chunks of
``batch_size`` so memory is O(batch_size * N_train), not O(N_test * N_train).

Runs as one jitted ``lax.map`` over test chunks on whatever arrays it gets: features sharded on
the batch axis give the same numbers as unsharded ones.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any


def _l2_normalize(x: jax.Array) -> jax.Array:
    # Zero vectors stay zero (similarity 0 to everything) instead of becoming NaN.
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "batch_size"))
def _knn_votes(train_x, train_y, test_x, temperature, *, k: int, num_classes: int, batch_size: int):
    """Class scores [M_padded, num_classes] for test_x (padded to a multiple of batch_size)."""
    train_n = _l2_normalize(train_x.astype(jnp.float32))
    test_n = _l2_normalize(test_x.astype(jnp.float32))
    chunks = test_n.reshape(-1, batch_size, test_n.shape[1])

    def one_chunk(q: jax.Array) -> jax.Array:
        sim = q @ train_n.T  # [B, N]
        top_sim, top_idx = jax.lax.top_k(sim, k)
        weights = jnp.exp(top_sim / temperature)
        onehot = jax.nn.one_hot(train_y[top_idx], num_classes, dtype=jnp.float32)  # [B, k, C]
        return jnp.einsum("bk,bkc->bc", weights, onehot)

    return jax.lax.map(one_chunk, chunks).reshape(-1, num_classes)


def knn_scores(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Summed vote weights per class, numpy [M, num_classes]; see ``knn`` for the arguments."""
    train_x, test_x = jnp.asarray(train_x), jnp.asarray(test_x)
    train_y = jnp.asarray(train_y).astype(jnp.int32)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"need train_x [N, D] and test_x [M, D]; got {train_x.shape}, {test_x.shape}")
    if train_y.shape != (train_x.shape[0],):
        raise ValueError(f"train_y must be [N]={train_x.shape[0]}, got {train_y.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if num_classes is None:
        num_classes = int(jnp.max(train_y)) + 1
    if int(jnp.min(train_y)) < 0 or int(jnp.max(train_y)) >= num_classes:
        raise ValueError(f"train_y must be ints in [0, num_classes={num_classes})")
    k = min(k, train_x.shape[0])
    m = test_x.shape[0]
    batch_size = max(1, min(batch_size, m))
    pad = (-m) % batch_size
    if pad:
        test_x = jnp.concatenate([test_x, jnp.zeros((pad, test_x.shape[1]), test_x.dtype)])
    votes = _knn_votes(train_x, train_y, test_x, jnp.float32(temperature),
                       k=k, num_classes=num_classes, batch_size=batch_size)
    return np.asarray(votes)[:m]


def knn(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Weighted cosine kNN accuracy.

    Args:
      train_x [N, D], train_y [N] (ints in [0, num_classes)), test_x [M, D], test_y [M].
      k: neighbours (clipped to N). temperature: vote weight exp(cos / temperature).
      num_classes: defaults to max(train_y, test_y) + 1.
      batch_size: test examples per chunk (memory ~ batch_size * N floats).
    Returns:
      {"top1": percent, "top5": percent (only if num_classes >= 5)}.
    """
    test_y = np.asarray(test_y).astype(np.int64)
    if test_y.shape != (test_x.shape[0],):
        raise ValueError(f"test_y must be [M]={test_x.shape[0]}, got {test_y.shape}")
    if num_classes is None:
        num_classes = int(max(np.max(np.asarray(train_y)), test_y.max())) + 1
    votes = knn_scores(train_x, train_y, test_x, k=k, temperature=temperature,
                       num_classes=num_classes, batch_size=batch_size)
    result = {"top1": 100.0 * float(np.mean(votes.argmax(axis=1) == test_y))}
    if num_classes >= 5:
        # Stable sort so ties rank the lower class first, consistent with argmax.
        top5 = np.argsort(-votes, axis=1, kind="stable")[:, :5]
        result["top5"] = 100.0 * float(np.mean(np.any(top5 == test_y[:, None], axis=1)))
    return result
