"""Centred kernel alignment (Kornblith et al. 2019), biased and debiased (Song et al. 2012).

Conventions (see docs/SIMILARITY.md):
- inputs `[n_examples, n_features]`, centred over examples before any kernel is formed;
- linear CKA runs in feature space (O(n p^2)) or Gram space (O(n^2 p)), whichever is cheaper for
  the given shapes; both give the same value;
- RBF bandwidth: sigma^2 = threshold^2 * median(D), the median over all n^2 squared distances
  including the zero diagonal (Kornblith's convention);
- debiased = the unbiased HSIC_1 U-statistic; it needs n >= 4 and may be slightly negative for
  unrelated representations.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssl_jax.similarity import _numerics as nm


def u_centre(gram: jax.Array) -> jax.Array:
    """U-centres a symmetric Gram `[n, n]` so that <U(K), U(L)> / (n (n-3)) = HSIC_1(K, L).

    Zeroes the diagonal (the U-statistic excludes i == j pairs), removes the row/column means
    of the off-diagonal entries and zeroes the diagonal again. Requires n >= 4.
    """
    n = gram.shape[-1]
    eye = jnp.eye(n, dtype=bool)
    gram = jnp.where(eye, 0.0, gram)
    means = jnp.sum(gram, axis=-1) / (n - 2)
    means = means - jnp.sum(means, axis=-1, keepdims=True) / (2 * (n - 1))
    gram = gram - means[..., :, None] - means[..., None, :]
    return jnp.where(eye, 0.0, gram)


def double_centre(gram: jax.Array) -> jax.Array:
    """H K H with H = I - 11^T/n: the biased (V-statistic) centring of a Gram `[n, n]`."""
    gram = gram - jnp.mean(gram, axis=0, keepdims=True)
    return gram - jnp.mean(gram, axis=1, keepdims=True)


def _normalised_centred(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Centres `a` and divides by its Frobenius norm (CKA is scale invariant; keeps float32 sums
    O(1) so ||X^T X||^2 cannot overflow). Also returns `has_variance`, False for inputs that are
    constant up to rounding of the mean."""
    ac = nm.centre(a)
    norm_c = jnp.linalg.norm(ac)
    eps = jnp.finfo(a.dtype).eps
    has_variance = norm_c > 64 * eps * jnp.linalg.norm(a)
    return ac / jnp.where(has_variance, norm_c, 1.0), has_variance


def _rbf_gram(ac: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
    """RBF Gram of centred rows; returns (gram, median squared distance)."""
    g = nm.mm(ac, ac.T)
    sq = jnp.diagonal(g)
    # Clamp: rounding can make |a|^2 + |b|^2 - 2ab slightly negative for near-duplicate rows.
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    d = jnp.where(jnp.eye(d.shape[0], dtype=bool), 0.0, d)
    med = jnp.median(d)
    return jnp.exp(-d / (2.0 * threshold**2 * jnp.where(med > 0, med, 1.0))), med


def _gram_hsics(k: jax.Array, l: jax.Array, debiased: bool):
    """(<K~, L~>, <K~, K~>, <L~, L~>) with ~ the biased or unbiased centring."""
    centring = u_centre if debiased else double_centre
    k, l = centring(k), centring(l)
    return jnp.sum(k * l), jnp.sum(k * k), jnp.sum(l * l)


def _ratio(hxy, hxx, hyy):
    # Separate square roots: hxx * hyy can overflow float32; the guard keeps the traced value
    # finite, the status vector reports the failure.
    safe = lambda h: jnp.sqrt(jnp.where(h > 0, h, 1.0))
    return hxy / (safe(hxx) * safe(hyy))


_VALUE_MESSAGES = (
    "x contains NaN or inf activations",
    "y contains NaN or inf activations",
    "x has zero variance over examples (constant activations); CKA is undefined",
    "y has zero variance over examples (constant activations); CKA is undefined",
)


def _self_messages(n: int) -> tuple[str, str]:
    return tuple(
        f"debiased self-HSIC of {v} is <= 0 with n={n} examples (the U-statistic is too noisy "
        "or the kernel is degenerate); use more examples or debiased=False" for v in "xy")


@functools.partial(jax.jit, static_argnames=("debiased", "feature_space"))
def _linear_cka(x, y, debiased: bool, feature_space: bool):
    n = x.shape[0]
    xs, var_x = _normalised_centred(x)
    ys, var_y = _normalised_centred(y)
    if feature_space:
        hxy = jnp.sum(nm.mm(ys.T, xs) ** 2)
        hxx = jnp.sum(nm.mm(xs.T, xs) ** 2)
        hyy = jnp.sum(nm.mm(ys.T, ys) ** 2)
        if debiased:
            rx, ry = jnp.sum(xs * xs, axis=1), jnp.sum(ys * ys, axis=1)

            def debias(h, ra, rb):
                return (h - n / (n - 2.0) * jnp.dot(ra, rb, precision=nm.HIGHEST)
                        + jnp.sum(ra) * jnp.sum(rb) / ((n - 1.0) * (n - 2.0)))

            hxy, hxx, hyy = debias(hxy, rx, ry), debias(hxx, rx, rx), debias(hyy, ry, ry)
    else:
        hxy, hxx, hyy = _gram_hsics(nm.mm(xs, xs.T), nm.mm(ys, ys.T), debiased)
    status = jnp.stack([nm.finite(x), nm.finite(y), var_x, var_y, hxx > 0, hyy > 0])
    return _ratio(hxy, hxx, hyy), status


def linear_cka(x, y, debiased: bool = False) -> jax.Array:
    """Linear CKA between activations x `[n, p1]` and y `[n, p2]` (same n examples, same order).

    Computes ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred data (debiased: with the
    unbiased HSIC_1 estimator, n >= 4). Feature or Gram space is chosen from the shapes.
    Returns a scalar in the compute dtype (float32, or float64 under x64). Raises ValueError for
    mismatched n, empty layers, NaN/inf or constant activations.
    """
    x, y = nm.as_activation_pair(x, y, min_examples=4 if debiased else 2)
    n, p1, p2 = x.shape[0], x.shape[1], y.shape[1]
    feature_space = n * (p1 * p2 + p1 * p1 + p2 * p2) <= n * n * (p1 + p2 + 1)
    value, status = _linear_cka(x, y, debiased=debiased, feature_space=feature_space)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _VALUE_MESSAGES + _self_messages(n))
    return value


@functools.partial(jax.jit, static_argnames=("debiased",))
def _rbf_cka(x, y, threshold, debiased: bool):
    xs, var_x = _normalised_centred(x)
    ys, var_y = _normalised_centred(y)
    k, med_x = _rbf_gram(xs, threshold)
    l, med_y = _rbf_gram(ys, threshold)
    hxy, hxx, hyy = _gram_hsics(k, l, debiased)
    status = jnp.stack([nm.finite(x), nm.finite(y), var_x, var_y, med_x > 0, med_y > 0,
                        hxx > 0, hyy > 0])
    return _ratio(hxy, hxx, hyy), status


def rbf_cka(x, y, threshold: float = 0.5, debiased: bool = False) -> jax.Array:
    """RBF-kernel CKA between x `[n, p1]` and y `[n, p2]`; O(n^2) memory.

    Kernel exp(-||a-b||^2 / (2 threshold^2 median(D))), D the n x n squared distances (median
    includes the zero diagonal). `threshold` is the bandwidth as a fraction of the median
    distance (Kornblith et al. use 0.2-0.8). Same errors as `linear_cka`.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (fraction of the median distance), got {threshold}")
    x, y = nm.as_activation_pair(x, y, min_examples=4 if debiased else 2)
    n = x.shape[0]
    value, status = _rbf_cka(x, y, jnp.asarray(threshold, x.dtype), debiased=debiased)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _VALUE_MESSAGES + (
            "x has a zero median pairwise distance (more than half the examples coincide)",
            "y has a zero median pairwise distance (more than half the examples coincide)",
        ) + _self_messages(n))
    return value
