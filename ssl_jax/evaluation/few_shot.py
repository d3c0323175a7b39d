"""Few-shot evaluation with a prototypical classifier on frozen features (004 protocol).

Each episode: ``ways`` classes drawn without replacement; per class ``shots + queries``
distinct examples drawn without replacement, the first ``shots`` are the support set, the rest
the queries. Prototype = mean support feature; logits = -squared Euclidean distance; episode
accuracy = fraction of queries classified correctly. Report mean accuracy and the 95% interval
half-width 1.96 * std(ddof=0) / sqrt(episodes), both in percent.

Episodes are sampled on the host with ``np.random.default_rng(seed)`` (same seed -> same
episodes); the accuracy computation is one jitted ``lax.map`` over chunks of episodes, so
sharded and unsharded features give the same numbers.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any


class Episodes(NamedTuple):
    """Index arrays into the dataset. support: [E, ways, shots]; query: [E, ways, queries];
    classes: [E, ways] (row i of support/query belongs to classes[:, i])."""

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray


def sample_episodes(
    labels: ArrayLike, ways: int = 5, shots: int = 5, queries: int = 15, episodes: int = 600,
    seed: int = 0,
) -> Episodes:
    """Sample few-shot episodes from int labels [N]; only classes with >= shots + queries
    examples are eligible. Deterministic given ``seed``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {labels.shape}")
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries), ("episodes", episodes)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    classes, counts = np.unique(labels, return_counts=True)
    per_class = {c: np.flatnonzero(labels == c) for c in classes[counts >= shots + queries]}
    eligible = np.array(sorted(per_class))
    if eligible.size < ways:
        raise ValueError(
            f"ways={ways} needs {ways} classes with >= shots+queries={shots + queries} examples; "
            f"only {eligible.size} have that many")
    rng = np.random.default_rng(seed)
    support = np.empty((episodes, ways, shots), np.int64)
    query = np.empty((episodes, ways, queries), np.int64)
    chosen = np.empty((episodes, ways), eligible.dtype)
    for e in range(episodes):
        chosen[e] = rng.choice(eligible, size=ways, replace=False)
        for i, c in enumerate(chosen[e]):
            idx = rng.choice(per_class[c], size=shots + queries, replace=False)
            support[e, i], query[e, i] = idx[:shots], idx[shots:]
    return Episodes(support, query, chosen)


def mean_and_ci95(accuracies: ArrayLike) -> dict[str, float]:
    """004's summary of per-episode accuracies: mean and 1.96 * std(ddof=0) / sqrt(n)."""
    acc = np.asarray(accuracies, np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D array, got shape {acc.shape}")
    return {"mean": float(acc.mean()), "ci95": float(1.96 * acc.std() / np.sqrt(acc.size))}


@functools.partial(jax.jit, static_argnames=("chunk",))
def _episode_correct(x, support, query, *, chunk: int):
    """Per-episode number of correct queries (int, exact); support [E, W, S], query [E, W, Q]."""
    x = x.astype(jnp.float32)

    def one_episode(idx):
        s_idx, q_idx = idx
        protos = jnp.mean(x[s_idx], axis=1)  # [W, D]
        q = x[q_idx]  # [W, Q, D]
        # Direct differences rather than the ||q||^2 - 2 q.p + ||p||^2 expansion: no
        # cancellation for large, nearby (e.g. non-negative pooled) features.
        logits = -jnp.sum(jnp.square(q[:, :, None, :] - protos), axis=-1)  # [W, Q, W]
        pred = jnp.argmax(logits, axis=-1)
        return jnp.sum(pred == jnp.arange(s_idx.shape[0])[:, None])

    return jax.lax.map(one_episode, (support, query), batch_size=chunk)


def few_shot(
    x: ArrayLike, y: ArrayLike, ways: int = 5, shots: int = 5, queries: int = 15,
    episodes: int = 600, seed: int = 0, chunk: int = 20,
) -> dict[str, float]:
    """ProtoNet few-shot accuracy on features x [N, D] with int labels y [N].

    Returns {"mean", "ci95"} in percent (ci95 is the half-width of the 95% interval).
    ``chunk`` episodes are evaluated at a time (memory ~ chunk * ways * (shots + ways * queries) * D floats).
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] != np.asarray(y).shape[0]:
        raise ValueError(f"x must be [N, D] matching y [N]; got {x.shape}, {np.asarray(y).shape}")
    ep = sample_episodes(y, ways, shots, queries, episodes, seed)
    correct = _episode_correct(x, jnp.asarray(ep.support), jnp.asarray(ep.query),
                               chunk=max(1, min(chunk, episodes)))
    return mean_and_ci95(100.0 * np.asarray(correct, np.float64) / (ways * queries))
