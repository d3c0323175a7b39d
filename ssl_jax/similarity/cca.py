"""Canonical correlation analysis and its summaries: mean CCA, SVCCA, PWCCA.

Canonical correlations are the singular values of Q_x^T Q_y, with Q an orthonormal basis of the
centred activations. The basis comes from an SVD rather than a QR so that rank-deficient layers
(duplicated or dead neurons) are handled: directions with singular value below
max(n, p) * eps * s_max are dropped, their correlations reported as 0, and averages taken over
min(rank_x, rank_y) instead of min(p1, p2).

All measures refuse inputs with n_features >= n_examples unless `allow_underdetermined=True`:
there every linearly invariant similarity is trivially 1 (Kornblith et al. 2019, Theorem 1).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from ssl_jax.similarity import _numerics as nm

_MESSAGES = (
    "x contains NaN or inf activations",
    "y contains NaN or inf activations",
    "x has zero variance over examples (constant activations); CCA is undefined",
    "y has zero variance over examples (constant activations); CCA is undefined",
)


def _svd_basis(a: jax.Array):
    """Centres `a` [n, p]; returns (U [n, m], s [m], Vt [m, p], in_rank [m] bool), m = min(n, p)."""
    u, s, vt = jnp.linalg.svd(nm.centre(a), full_matrices=False)
    tol = max(a.shape) * jnp.finfo(a.dtype).eps * s[0]
    in_rank = s > tol
    return u, s, vt, in_rank


def _correlations(ux, mask_x, uy, mask_y, n_out: int) -> jax.Array:
    rho = jnp.linalg.svd(nm.mm((ux * mask_x).T, uy * mask_y), compute_uv=False)[:n_out]
    # Rounding can push the top correlation of identical subspaces slightly above 1.
    return jnp.clip(rho, 0.0, 1.0)


def _canonical(x, y, n_out: int):
    """Traced core of `cca`: the `n_out` largest
    canonical correlations (zeros past the ranks), min(rank_x, rank_y) and the status vector."""
    ux, _, _, rx = _svd_basis(x)
    uy, _, _, ry = _svd_basis(y)
    rho = _correlations(ux, rx, uy, ry, n_out)
    n_valid = jnp.minimum(jnp.sum(rx), jnp.sum(ry))
    status = jnp.stack([nm.finite(x), nm.finite(y), jnp.any(rx), jnp.any(ry)])
    return rho, n_valid, status


@jax.jit
def _cca(x, y):
    return _canonical(x, y, min(x.shape[1], y.shape[1]))


def _checked(x, y, allow_underdetermined, measure):
    x, y = nm.as_activation_pair(x, y, min_examples=2)
    nm.require_overdetermined(x, y, allow_underdetermined, measure)
    return x, y


def cca(x, y, allow_underdetermined: bool = False) -> jax.Array:
    """All canonical correlations between x `[n, p1]` and y `[n, p2]`, descending.

    Returns `[min(p1, p2)]` values in [0, 1]; entries beyond min(rank_x, rank_y) are 0.
    Mean of squares = R^2_CCA (Kornblith's "CCA" index); mean = `mean_cca`.
    """
    x, y = _checked(x, y, allow_underdetermined, "cca")
    rho, _, status = _cca(x, y)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _MESSAGES)
    return rho


def mean_cca(x, y, allow_underdetermined: bool = False) -> jax.Array:
    """Mean canonical correlation (sum of rho / min(rank_x, rank_y)), a scalar in [0, 1]."""
    x, y = _checked(x, y, allow_underdetermined, "mean_cca")
    rho, n_valid, status = _cca(x, y)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _MESSAGES)
    return jnp.sum(rho) / jnp.maximum(n_valid, 1)


def _variance_mask(s: jax.Array, in_rank: jax.Array, keep: jax.Array) -> jax.Array:
    """Leading directions whose cumulative variance (sum of s^2, not s) first reaches `keep`."""
    energy = s**2
    before = jnp.cumsum(energy) - energy  # variance explained by the directions before this one
    return (before < keep * jnp.sum(energy)) & in_rank


@jax.jit
def _svcca(x, y, keep):
    ux, sx, _, rx = _svd_basis(x)
    uy, sy, _, ry = _svd_basis(y)
    kx, ky = _variance_mask(sx, rx, keep), _variance_mask(sy, ry, keep)
    rho = _correlations(ux, kx, uy, ky, min(x.shape[1], y.shape[1]))
    n_valid = jnp.minimum(jnp.sum(kx), jnp.sum(ky))
    status = jnp.stack([nm.finite(x), nm.finite(y), jnp.any(rx), jnp.any(ry)])
    return jnp.sum(rho) / jnp.maximum(n_valid, 1), status


def svcca(x, y, keep: float = 0.99, allow_underdetermined: bool = False) -> jax.Array:
    """SVCCA (Raghu et al. 2017): mean CCA after keeping, per layer, the top singular directions
    that explain a `keep` fraction of the variance (sum of squared singular values).

    x `[n, p1]`, y `[n, p2]`; returns a scalar in [0, 1]. keep=1.0 keeps every direction in rank.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a variance fraction in (0, 1], got {keep}")
    x, y = _checked(x, y, allow_underdetermined, "svcca")
    value, status = _svcca(x, y, jnp.asarray(keep, x.dtype))
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _MESSAGES)
    return value


@jax.jit
def _pwcca(x, y):
    finite_x, finite_y = nm.finite(x), nm.finite(y)
    # Morcos et al. weight the correlations by the layer with fewer neurons (ties: x).
    swapped = y.shape[1] < x.shape[1]
    if swapped:
        x, y = y, x
    ux, sx, vtx, rx = _svd_basis(x)
    uy, _, _, ry = _svd_basis(y)
    m = nm.mm((ux * rx).T, uy * ry)
    p, rho, _ = jnp.linalg.svd(m, full_matrices=False)
    n_cc = x.shape[1]
    p, rho = p[:, :n_cc], jnp.clip(rho[:n_cc], 0.0, 1.0)
    # Canonical variates h_i = U_x p_i (unit norm); neurons z_j = columns of centred x = U_x S Vt,
    # so <h_i, z_j> = (p^T S Vt)_ij. alpha_i = sum_j |<h_i, z_j>| (centred, as in the paper).
    inner = nm.mm(p.T, (sx * rx)[:, None] * vtx)
    alpha = jnp.sum(jnp.abs(inner), axis=1)
    value = jnp.sum(alpha * rho) / jnp.sum(alpha)
    rank_ok = jnp.stack([jnp.any(rx), jnp.any(ry)])
    if swapped:
        rank_ok = rank_ok[::-1]
    status = jnp.concatenate([jnp.stack([finite_x, finite_y]), rank_ok])
    return value, status


def pwcca(x, y, allow_underdetermined: bool = False) -> jax.Array:
    """Projection-weighted CCA (Morcos et al. 2018), paper version.

    rho_PW = sum_i alpha_i rho_i / sum_i alpha_i, alpha_i = sum_j |<h_i, z_j>| with h_i the
    (unit-norm) canonical variates and z_j the centred neurons of the layer with fewer features.
    Unlike google/svcca's pwcca.py the projections use centred activations of that same layer.
    Not symmetric when p1 != p2. Returns a scalar in [0, 1].
    """
    x, y = _checked(x, y, allow_underdetermined, "pwcca")
    value, status = _pwcca(x, y)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _MESSAGES)
    return value
