"""Minibatch CKA for every layer pair of two models at once (Nguyen et al. 2021).

Per minibatch of b examples: the Gram of every layer is flattened to b^2 and stacked into
G_x [b^2, L1] and G_y [b^2, L2]; one matrix product G_x^T G_y, plus corrections from each
Gram's diagonal and row sums, gives the unbiased HSIC_1 of every pair (Song et al.'s formula,
equal to the inner product of the U-centred Grams without forming them). The estimates are
*summed* over batches and CKA is formed once, as a ratio of sums:

    CKA_ij = sum_b HSIC_1(K_i, L_j) / sqrt(sum_b HSIC_1(K_i, K_i) * sum_b HSIC_1(L_j, L_j)).

This is neither a mean of per-batch CKAs nor a biased per-batch HSIC: both inflate the values.
With a mesh, the example axis of each batch is sharded over `axis`; each device forms its rows
of every Gram and the pair product reduces over devices (XLA inserts the collectives).
"""
from __future__ import annotations

import functools
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.similarity import _numerics as nm

Layers = Union[Sequence[jax.Array], Mapping[str, jax.Array]]


class MinibatchCKAState(NamedTuple):
    """Running sums of HSIC_1 estimates (a pytree; start from `minibatch_cka_init`)."""
    cross: jax.Array    # [L1, L2] sum over batches of HSIC_1(K_i, L_j)
    self_x: jax.Array   # [L1] sum over batches of HSIC_1(K_i, K_i)
    self_y: jax.Array   # [L2]
    varied_x: jax.Array  # [L1] bool: layer i was non-constant in at least one batch
    varied_y: jax.Array  # [L2]
    n_batches: jax.Array  # int32 scalar


def minibatch_cka_init(n_layers_x: int, n_layers_y: int) -> MinibatchCKAState:
    """Empty accumulator for L1 x L2 layer pairs (compute dtype: float32, float64 under x64)."""
    dt = nm.compute_dtype()
    return MinibatchCKAState(jnp.zeros((n_layers_x, n_layers_y), dt), jnp.zeros((n_layers_x,), dt),
                             jnp.zeros((n_layers_y,), dt),
                             jnp.zeros((n_layers_x,), bool), jnp.zeros((n_layers_y,), bool),
                             jnp.asarray(0, jnp.int32))


def _as_list(layers: Layers, name: str) -> list:
    values = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
    if not values:
        raise ValueError(f"{name} has no layers")
    return values


def _check_batch(layers: list, name: str) -> int:
    b = None
    for i, a in enumerate(layers):
        if len(a.shape) != 2:
            raise ValueError(f"{name}[{i}] must be [batch, n_features], got shape {tuple(a.shape)}")
        if a.shape[1] == 0:
            raise ValueError(f"{name}[{i}] has no features (empty layer)")
        if b is not None and a.shape[0] != b:
            raise ValueError(f"{name}[{i}] has batch size {a.shape[0]}, other layers have {b}")
        b = a.shape[0]
    if b < 4:
        raise ValueError(f"{name}: batch size {b} < 4; the unbiased HSIC_1 needs at least 4 examples")
    return b


def _gram_terms(layers, spec) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """What HSIC_1 needs of each layer's linear Gram K (features mean-centred):
    ([b * b, L] every K flattened, one column per layer; [L, b] diag(K); [L, b] the row sums
    of K with its diagonal removed; [L] bool non-constant)."""
    grams, diags, row_sums, varied = [], [], [], []
    for a in layers:
        a = a.astype(nm.compute_dtype())
        # The HSIC_1 estimate ignores feature means anyway; removing them first keeps Gram
        # entries small (float32 ReLU outputs with large means would otherwise cancel) and
        # lets a constant layer be told apart from rounding noise.
        mean = jnp.mean(a, axis=0)
        ac = a - mean
        k = nm.mm(ac, ac.T)
        if spec is not None:  # keep each device's rows of the Gram local; no all-gather of G
            k = jax.lax.with_sharding_constraint(k, spec)
        d = jnp.diagonal(k)
        # trace(K_c) = ||a_c||^2 and ||a||^2 = ||a_c||^2 + b ||mean||^2: no extra pass over `a`.
        centred_sq = jnp.sum(d)
        tol = (64 * jnp.finfo(a.dtype).eps) ** 2
        varied.append(centred_sq > tol * (centred_sq + a.shape[0] * jnp.sum(mean * mean)))
        grams.append(k.reshape(-1))
        diags.append(d)
        row_sums.append(jnp.sum(k, axis=1) - d)
    # Columns, not rows: XLA:CPU's product of two tall [b * b, L] matrices ran ~1.6x faster
    # than that of two wide [L, b * b] ones.
    return jnp.stack(grams, axis=1), jnp.stack(diags), jnp.stack(row_sums), jnp.stack(varied)


def _hsic_numerators(gx, dx, sx, gy, dy, sy, b: int) -> jax.Array:
    """[L1, L2] b (b - 3) HSIC_1(K_i, L_j) (Song et al. 2012) from `_gram_terms`, with K~, L~
    the Grams with zeroed diagonals:
        tr(K~ L~) + (1' K~ 1)(1' L~ 1) / ((b-1)(b-2)) - 2 / (b-2) 1' K~ L~ 1,
    tr(K~ L~) = <K, L> - <diag K, diag L> and K~ 1 = the row sums without the diagonal. The
    one large product, <K_i, L_j> for all pairs, is a single GEMM over the b^2 entries; the
    rest are [L, b] products. Equal to <U(K), U(L)> (U-centring) without forming U(K)."""
    trace = nm.mm(gx.T, gy) - nm.mm(dx, dy.T)
    totals = jnp.sum(sx, axis=1)[:, None] * jnp.sum(sy, axis=1)[None, :]
    return trace + totals / ((b - 1.0) * (b - 2.0)) - 2.0 / (b - 2.0) * nm.mm(sx, sy.T)


def _self_hsic_numerators(g, d, s, b: int) -> jax.Array:
    """[L] the diagonal of `_hsic_numerators` of a model with itself, without the [L, L]
    products."""
    return (jnp.sum(g * g, axis=0) - jnp.sum(d * d, axis=1)
            + jnp.sum(s, axis=1) ** 2 / ((b - 1.0) * (b - 2.0))
            - 2.0 / (b - 2.0) * jnp.sum(s * s, axis=1))


@functools.partial(jax.jit, static_argnames=("same_model", "spec"))
def _update(state: MinibatchCKAState, xs, ys, same_model: bool, spec):
    b = xs[0].shape[0]
    scale = 1.0 / (b * (b - 3.0))
    gx, dx, sx, varied_x = _gram_terms(xs, spec)
    gy, dy, sy, varied_y = (gx, dx, sx, varied_x) if same_model else _gram_terms(ys, spec)
    cross = _hsic_numerators(gx, dx, sx, gy, dy, sy, b) * scale  # all L1 x L2 pairs at once
    self_x = _self_hsic_numerators(gx, dx, sx, b) * scale
    self_y = self_x if same_model else _self_hsic_numerators(gy, dy, sy, b) * scale
    # NaN/inf activations reach every Gram entry of their layer, hence these sums; checked in
    # minibatch_cka_result instead of a separate pass over the activations.
    return MinibatchCKAState(state.cross + cross, state.self_x + self_x, state.self_y + self_y,
                             state.varied_x | varied_x, state.varied_y | varied_y,
                             state.n_batches + 1)


def minibatch_cka_update(state: MinibatchCKAState, acts_x: Layers, acts_y: Optional[Layers] = None,
                         mesh: Optional[Mesh] = None, axis: str = "data") -> MinibatchCKAState:
    """Adds one minibatch. acts_x: L1 arrays `[b, p_i]` (same b examples, same order as acts_y);
    acts_y: L2 arrays `[b, q_j]`, or None to compare the model with itself.

    With `mesh`, the example axis is sharded over mesh axis `axis` (b must divide evenly).
    No host sync: value checks happen in `minibatch_cka_result`.
    """
    xs = _as_list(acts_x, "acts_x")
    ys = xs if acts_y is None else _as_list(acts_y, "acts_y")
    b = _check_batch(xs, "acts_x")
    if _check_batch(ys, "acts_y") != b:
        raise ValueError(f"acts_x and acts_y must hold the same examples: batch {b} vs {ys[0].shape[0]}")
    if (len(xs), len(ys)) != state.cross.shape:
        raise ValueError(f"state is for {state.cross.shape} layer pairs, got {len(xs)} x {len(ys)} layers")
    spec = None
    if mesh is not None:
        n_dev = mesh.shape[axis]
        if b % n_dev:
            raise ValueError(f"batch size {b} is not divisible by the {n_dev} devices of mesh axis {axis!r}")
        sharding = NamedSharding(mesh, P(axis))
        xs = [jax.device_put(a, sharding) for a in xs]
        ys = xs if acts_y is None else [jax.device_put(a, sharding) for a in ys]
        spec = NamedSharding(mesh, P(axis, None))
    return _update(state, tuple(xs), tuple(ys), same_model=acts_y is None, spec=spec)


def minibatch_cka_result(state: MinibatchCKAState) -> np.ndarray:
    """[L1, L2] CKA from the accumulated sums (host numpy). Raises ValueError on bad values."""
    if int(state.n_batches) == 0:
        raise ValueError("no minibatches were accumulated")
    cross, sx, sy, vx, vy = jax.device_get((state.cross, state.self_x, state.self_y,
                                            state.varied_x, state.varied_y))
    for name, s in (("x", sx), ("y", sy)):
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise ValueError(f"layers {bad.tolist()} of {name} had NaN or inf activations (or "
                             "overflowed float32) in at least one minibatch")
    for name, varied in (("x", vx), ("y", vy)):
        bad = np.flatnonzero(~varied)
        if bad.size:
            raise ValueError(f"layers {bad.tolist()} of {name} are constant over every minibatch; "
                             "CKA is undefined")
    for name, s in (("x", sx), ("y", sy)):
        bad = np.flatnonzero(~(s > 0))
        if bad.size:
            raise ValueError(f"layers {bad.tolist()} of {name} have a summed self-HSIC_1 <= 0 "
                             "(too few examples per batch for the unbiased estimator)")
    return cross / (np.sqrt(sx)[:, None] * np.sqrt(sy)[None, :])


def minibatch_cka(batches: Iterable[tuple[Layers, Optional[Layers]]], mesh: Optional[Mesh] = None,
                  axis: str = "data") -> np.ndarray:
    """Minibatch CKA `[L1, L2]` over an iterable of `(acts_x, acts_y)` minibatches (acts_y may be
    None for a model against itself). See the module docstring for the estimator."""
    state = None
    for acts_x, acts_y in batches:
        if state is None:
            n_y = len(acts_x) if acts_y is None else len(acts_y)
            state = minibatch_cka_init(len(acts_x), n_y)
        state = minibatch_cka_update(state, acts_x, acts_y, mesh=mesh, axis=axis)
    if state is None:
        raise ValueError("batches is empty")
    return minibatch_cka_result(state)
