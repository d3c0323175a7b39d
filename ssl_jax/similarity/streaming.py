"""Exact linear CKA (biased and debiased) over any number of examples in O(p^2) memory.

Chunks of examples are folded into running sums; the final value equals `linear_cka` on the
concatenated data up to rounding. With x' = x - c (c: the first chunk's mean, a fixed shift
that keeps float32 sums from cancelling) the sums are

    S_xy = sum x' y'^T, S_xx, S_yy, m_x = sum x', m_y = sum y', n,
    and for the debiased form, with a_i = ||x'_i||^2, b_i = ||y'_i||^2:
    sum a, sum b, sum a^2, sum b^2, sum a b, sum a x', sum a y', sum b x', sum b y'.

Centred cross-products are S_xy - n mu_x mu_y^T; centred row norms r_i = a_i - 2 x'_i.mu_x
+ |mu_x|^2, so <r_x, r_y> and sum r expand into the sums above. The final combination runs in
float64 numpy on the host (O(p^2)).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.similarity import _numerics as nm


class StreamingCKAState(NamedTuple):
    """Running sums (a pytree). Start from `streaming_cka_init`."""
    shift_x: jax.Array  # [p1]
    shift_y: jax.Array  # [p2]
    n: jax.Array        # int32 scalar
    s_xy: jax.Array     # [p1, p2]
    s_xx: jax.Array     # [p1, p1]
    s_yy: jax.Array     # [p2, p2]
    m_x: jax.Array      # [p1]
    m_y: jax.Array      # [p2]
    sum_a: jax.Array
    sum_b: jax.Array
    sum_aa: jax.Array
    sum_bb: jax.Array
    sum_ab: jax.Array
    sum_a_x: jax.Array  # [p1]
    sum_a_y: jax.Array  # [p2]
    sum_b_x: jax.Array  # [p1]
    sum_b_y: jax.Array  # [p2]
    finite: jax.Array   # bool scalar


def streaming_cka_init(x_chunk, y_chunk) -> StreamingCKAState:
    """Empty sums for x chunks `[*, p1]` and y chunks `[*, p2]`; the first chunk's feature means
    become the shift. Does not add the chunk: call `streaming_cka_update` with it too."""
    x, y = nm.as_activation_pair(x_chunk, y_chunk, min_examples=1)
    p1, p2 = x.shape[1], y.shape[1]
    z = lambda *s: jnp.zeros(s, x.dtype)
    # A non-finite first chunk would poison the shift; update() then flags it anyway.
    shift = lambda a: jnp.where(jnp.isfinite(a), a, 0.0)
    return StreamingCKAState(shift(jnp.mean(x, 0)), shift(jnp.mean(y, 0)), jnp.asarray(0, jnp.int32),
                             z(p1, p2), z(p1, p1), z(p2, p2), z(p1), z(p2), z(), z(), z(), z(), z(),
                             z(p1), z(p2), z(p1), z(p2), jnp.asarray(True))


@jax.jit
def _update(s: StreamingCKAState, x, y) -> StreamingCKAState:
    xs, ys = x - s.shift_x, y - s.shift_y
    a, b = jnp.sum(xs * xs, axis=1), jnp.sum(ys * ys, axis=1)
    dot = lambda u, v: jnp.dot(u, v, precision=nm.HIGHEST)
    return StreamingCKAState(
        s.shift_x, s.shift_y, s.n + x.shape[0],
        s.s_xy + nm.mm(xs.T, ys), s.s_xx + nm.mm(xs.T, xs), s.s_yy + nm.mm(ys.T, ys),
        s.m_x + jnp.sum(xs, 0), s.m_y + jnp.sum(ys, 0),
        s.sum_a + jnp.sum(a), s.sum_b + jnp.sum(b), s.sum_aa + dot(a, a), s.sum_bb + dot(b, b),
        s.sum_ab + dot(a, b), s.sum_a_x + dot(a, xs), s.sum_a_y + dot(a, ys),
        s.sum_b_x + dot(b, xs), s.sum_b_y + dot(b, ys),
        s.finite & nm.finite(x) & nm.finite(y))


def streaming_cka_update(state: StreamingCKAState, x_chunk, y_chunk) -> StreamingCKAState:
    """Adds a chunk: x `[m, p1]`, y `[m, p2]` (same m examples). Any m >= 1; no host sync."""
    x, y = nm.as_activation_pair(x_chunk, y_chunk, min_examples=1)
    if (x.shape[1], y.shape[1]) != state.s_xy.shape:
        raise ValueError(f"chunk widths {(x.shape[1], y.shape[1])} differ from the state's "
                         f"{state.s_xy.shape}")
    return _update(state, x, y)


def _r_dot(n, sum_ab, sum_a_v, sum_b_u, s_uv, m_u, m_v, sum_a, sum_b):
    """<r_u, r_v> for centred row norms, from sums over shifted rows (see module docstring)."""
    mu_u, mu_v = m_u / n, m_v / n
    nu, nv = mu_u @ mu_u, mu_v @ mu_v
    return (sum_ab - 2 * mu_v @ sum_a_v + nv * sum_a - 2 * mu_u @ sum_b_u
            + 4 * mu_u @ s_uv @ mu_v - 2 * nv * (m_u @ mu_u)
            + nu * sum_b - 2 * nu * (m_v @ mu_v) + n * nu * nv)


def streaming_cka_result(state: StreamingCKAState, debiased: bool = False) -> float:
    """Linear CKA of everything added so far (float64 on the host). Raises ValueError for
    NaN/inf activations, too few examples (2, or 4 when debiased) or constant activations."""
    s = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(state))
    n = float(s.n)
    if not s.finite:
        raise ValueError("NaN or inf activations were seen in at least one chunk")
    need = 4 if debiased else 2
    if n < need:
        raise ValueError(f"{int(n)} examples accumulated; this estimator needs at least {need}")
    mu_x, mu_y = s.m_x / n, s.m_y / n
    c_xy = s.s_xy - n * np.outer(mu_x, mu_y)
    c_xx = s.s_xx - n * np.outer(mu_x, mu_x)
    c_yy = s.s_yy - n * np.outer(mu_y, mu_y)
    for name, c, raw in (("x", c_xx, s.s_xx), ("y", c_yy, s.s_yy)):
        # Relative test: constant inputs leave only rounding noise in the centred moments.
        if np.trace(c) <= 1e-5 * max(np.trace(raw), np.finfo(np.float64).tiny):
            raise ValueError(f"{name} has zero variance over examples (constant activations)")
    hxy, hxx, hyy = (np.sum(c_xy**2), np.sum(c_xx**2), np.sum(c_yy**2))
    if debiased:
        sr_x = s.sum_a - n * (mu_x @ mu_x)
        sr_y = s.sum_b - n * (mu_y @ mu_y)
        rxy = _r_dot(n, s.sum_ab, s.sum_a_y, s.sum_b_x, s.s_xy, s.m_x, s.m_y, s.sum_a, s.sum_b)
        rxx = _r_dot(n, s.sum_aa, s.sum_a_x, s.sum_a_x, s.s_xx, s.m_x, s.m_x, s.sum_a, s.sum_a)
        ryy = _r_dot(n, s.sum_bb, s.sum_b_y, s.sum_b_y, s.s_yy, s.m_y, s.m_y, s.sum_b, s.sum_b)
        k = n / (n - 2)
        c = 1.0 / ((n - 1) * (n - 2))
        hxy = hxy - k * rxy + c * sr_x * sr_y
        hxx = hxx - k * rxx + c * sr_x * sr_x
        hyy = hyy - k * ryy + c * sr_y * sr_y
        for name, h in (("x", hxx), ("y", hyy)):
            if not h > 0:
                raise ValueError(f"debiased self-HSIC of {name} is <= 0 with n={int(n)}; "
                                 "use more examples or debiased=False")
    return float(hxy / (np.sqrt(hxx) * np.sqrt(hyy)))


def streaming_linear_cka(chunks: Iterable[tuple], debiased: bool = False) -> float:
    """Exact linear CKA over an iterable of `(x_chunk [m, p1], y_chunk [m, p2])` pairs."""
    state = None
    for x, y in chunks:
        if state is None:
            state = streaming_cka_init(x, y)
        state = streaming_cka_update(state, x, y)
    if state is None:
        raise ValueError("chunks is empty")
    return streaming_cka_result(state, debiased)
