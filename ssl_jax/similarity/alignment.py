"""Alignment measures that are not kernel/CCA based: orthogonal Procrustes and mutual kNN."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssl_jax.similarity import _numerics as nm


def _gram_preserving_width(a: jax.Array) -> jax.Array:
    """[n, p] -> [n, min(n, p)] with the same Gram a a^T.

    For p > n, a^T = Q R (Q [p, n] orthonormal columns) and a Q = R^T keeps every inner product
    between examples, which is all the Procrustes nuclear norm depends on; saves O(p1 p2) work.
    """
    n, p = a.shape
    if p <= n:
        return a
    _, r = jnp.linalg.qr(a.T)
    return r.T


@jax.jit
def _procrustes(x, y):
    def prep(a):
        ac = nm.centre(a)
        norm = jnp.linalg.norm(ac)
        ok = norm > 64 * jnp.finfo(a.dtype).eps * jnp.linalg.norm(a)
        return _gram_preserving_width(ac / jnp.where(ok, norm, 1.0)), ok

    xs, ok_x = prep(x)
    ys, ok_y = prep(y)
    nuclear = jnp.sum(jnp.linalg.svd(nm.mm(xs.T, ys), compute_uv=False))
    status = jnp.stack([nm.finite(x), nm.finite(y), ok_x, ok_y])
    return jnp.clip(nuclear, 0.0, 1.0), status


def procrustes(x, y) -> jax.Array:
    """Orthogonal Procrustes similarity ||X^T Y||_* of centred, unit-Frobenius-norm x `[n, p1]`
    and y `[n, p2]` (zero-padding the narrower one).

    In [0, 1]; 1 iff y is an orthogonal transform of x up to scale. The Procrustes *distance*
    of Ding et al. (2021) is 2 - 2 * procrustes(x, y). Symmetric.
    """
    x, y = nm.as_activation_pair(x, y, min_examples=2)
    value, status = _procrustes(x, y)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, (
            "x contains NaN or inf activations", "y contains NaN or inf activations",
            "x has zero variance over examples (constant activations)",
            "y has zero variance over examples (constant activations)"))
    return value


_METRICS = ("cosine", "euclidean")


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _mutual_knn(x, y, k: int, metric: str):
    n = x.shape[0]

    def neighbour_mask(a):
        if metric == "cosine":
            norms = jnp.linalg.norm(a, axis=1, keepdims=True)
            a = a / jnp.where(norms > 0, norms, 1.0)
            score = nm.mm(a, a.T)
        else:  # ranking by -||a_i - a_j||^2 = 2 a_i.a_j - ||a_j||^2 (the ||a_i||^2 term is constant per row)
            score = 2.0 * nm.mm(a, a.T) - jnp.sum(a * a, axis=1)[None, :]
        score = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, score)  # an example is not its own neighbour
        _, idx = jax.lax.top_k(score, k)
        return jnp.zeros((n, n), a.dtype).at[jnp.arange(n)[:, None], idx].set(1.0)

    overlap = jnp.sum(neighbour_mask(x) * neighbour_mask(y)) / (n * k)
    return overlap, jnp.stack([nm.finite(x), nm.finite(y)])


def mutual_knn(x, y, k: int = 10, metric: str = "cosine") -> jax.Array:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024) of x `[n, p1]` and y `[n, p2]`.

    For each example, the fraction of its k nearest neighbours (itself excluded) in x-space that
    are also among its k nearest in y-space, averaged over examples; in [0, 1]. `metric`:
    "cosine" (rows L2-normalised, no centring; Huh et al.'s choice) or "euclidean". O(n^2) memory.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    x, y = nm.as_activation_pair(x, y, min_examples=2)
    n = x.shape[0]
    if not (isinstance(k, int) and 1 <= k <= n - 1):
        raise ValueError(f"k must be an integer in [1, n_examples - 1] = [1, {n - 1}], got {k!r}")
    value, status = _mutual_knn(x, y, k=k, metric=metric)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, ("x contains NaN or inf activations",
                                     "y contains NaN or inf activations"))
    return value
