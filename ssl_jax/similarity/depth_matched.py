"""Network-to-network similarity as mean CCA over depth-matched layers (Epstein et al., "What's
missing from self-supervised representation learning?", section 3 and footnotes 1-2).

The protocol: each compared layer's activations are resized to a common s x s grid per image
and every (image, position) becomes a row with one column per channel
(`activations.to_examples(a, "positions", s)`, so a layer is `[N * s * s, C]`, example-major);
two layers are scored by the mean of their K leading canonical correlations (K = 20 in the
paper); two networks by the average of that score over depth-matched pairs (conv i of an AlexNet
with block i of a ResNet, i = 1..4); and the network score is reported as mean +- standard error
over several batches of N images (paper: N = 120, 10 batches).

Averaging a fixed number K of leading correlations (the paper's choice; its reason is not given)
keeps layers of different widths on one scale: the mean of all min(p, q) correlations (`mean_cca`)
tends to fall as the narrower layer gets wider, each added direction adding a weaker correlation.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.similarity import _numerics as nm
from ssl_jax.similarity.cca import _MESSAGES, _canonical, _checked


def depth_matched_pairs(layers_a: Sequence[str], layers_b: Sequence[str],
                        depth: int = 4) -> list[tuple[str, str]]:
    """[(layers_a[i], layers_b[i]) for i < depth].

    The caller lists each network's block-output layers in depth order, e.g. AlexNet
    ["conv1", ..., "conv5"] with ResNet ["layer1", ..., "layer4"] gives (conv1, layer1) ...
    (conv4, layer4); extra deep layers (conv5) are left out, as in the paper's footnote 2.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    for name, layers in (("layers_a", layers_a), ("layers_b", layers_b)):
        if isinstance(layers, str):  # a string is a sequence of one-letter "layers"
            raise ValueError(f"{name} must be a sequence of layer names, got the string {layers!r}")
        if len(layers) < depth:
            raise ValueError(f"{name} has {len(layers)} layers {list(layers)}; depth={depth} "
                             f"needs at least {depth}")
    return [(layers_a[i], layers_b[i]) for i in range(depth)]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _leading(x, y, k: int):
    """Traced: (mean of the k leading correlations, status). See `leading_mean_cca`."""
    rho, n_valid, status = _canonical(x, y, min(k, x.shape[1], y.shape[1]))
    # rho is zero past min(rank_x, rank_y), so the sum covers min(k, rank) real correlations.
    return jnp.sum(rho) / jnp.maximum(jnp.minimum(k, n_valid), 1), status


_leading_jit = jax.jit(_leading, static_argnums=2)


def leading_mean_cca(x, y, k: int, allow_underdetermined: bool = False) -> jax.Array:
    """Mean of the k largest canonical correlations of x `[n, p]` and y `[n, q]`, in [0, 1].

    Exactly: sum of the top min(k, p, q) correlations of `cca.cca` divided by
    min(k, rank_x, rank_y) (ranks of the centred inputs, as in `mean_cca`). Correlations past
    min(rank_x, rank_y) are 0, so this is the mean over the k' = min(k, p, q, rank_x, rank_y)
    leading correlations that exist; k >= min(p, q) on full-rank inputs gives `mean_cca`.
    Same input checks as `cca` (features < examples unless `allow_underdetermined`; NaN/inf and
    constant inputs raise outside jit). Jit-compatible with `k` static; under jit the value
    checks are skipped and an all-constant input scores 0.
    """
    k = _positive_int(k, "k")
    x, y = _checked(x, y, allow_underdetermined, "leading_mean_cca")
    value, status = _leading_jit(x, y, k)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status, _MESSAGES)
    return value


def _leading_per_batch(x, y, k: int, num_batches: int):
    """x `[B * R, p]`, y `[B * R, q]` -> (scores [B], status [B, 4]): one compile per shape,
    batches run sequentially inside it (lax.map: vmap is no faster on CPU and holds B bases)."""
    xb = x.reshape(num_batches, -1, x.shape[1])
    yb = y.reshape(num_batches, -1, y.shape[1])
    return jax.lax.map(lambda xy: _leading(xy[0], xy[1], k), (xb, yb))


_leading_per_batch_jit = jax.jit(_leading_per_batch, static_argnums=(2, 3))


def _layer_rows(rows: Mapping, layer: str, side: str, positions: int) -> tuple[jax.Array, int]:
    if layer not in rows:
        raise ValueError(f"layer {layer!r} is not in {side}; available: {sorted(rows)}")
    a = nm.as_activations(rows[layer], f"{side}[{layer!r}]")
    if a.shape[0] % positions:
        raise ValueError(f"{side}[{layer!r}] has {a.shape[0]} rows, not a multiple of "
                         f"positions={positions} (rows per example)")
    return a, a.shape[0] // positions


def _batch_shape(a: jax.Array, rows: int) -> jax.ShapeDtypeStruct:
    """The shape of one batch of `a`, for the shape-only overdetermination check."""
    return jax.ShapeDtypeStruct((rows, a.shape[1]), a.dtype)


def batched_network_similarity(rows_a: Mapping[str, np.ndarray], rows_b: Mapping[str, np.ndarray],
                               pairs: Sequence[tuple[str, str]], positions: int,
                               batch_examples: int, k: int,
                               allow_underdetermined: bool = False) -> dict:
    """Depth-matched network similarity, scored per batch of examples (Epstein et al.).

    rows_a, rows_b: {layer: `[n * positions, channels]`} example-major, as returned by
    `capture(..., mode="positions", positions_size=s)` (positions = s * s), the same n examples
    in the same order on both sides. pairs: (layer of a, layer of b), e.g. from
    `depth_matched_pairs`. The n examples are cut into n / batch_examples consecutive batches;
    n must be divisible by batch_examples (ValueError otherwise: trim the inputs rather than
    have a short last batch with a different variance silently averaged in).

    Returns {"per_pair": np.ndarray [num_batches, len(pairs)] of leading_mean_cca(x_batch,
    y_batch, k); "per_batch": its mean over pairs, [num_batches]; "mean": mean of per_batch;
    "se": std(per_batch, ddof=1) / sqrt(num_batches), NaN for one batch; "pairs": the pairs}.
    Each batch must be overdetermined (batch_examples * positions rows > channels) unless
    `allow_underdetermined`; a NaN or constant layer in any batch raises ValueError naming it.
    """
    positions = _positive_int(positions, "positions")
    batch_examples = _positive_int(batch_examples, "batch_examples")
    k = _positive_int(k, "k")
    pairs = [tuple(pair) for pair in pairs]
    if not pairs:
        raise ValueError("pairs is empty; nothing to compare")
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"pairs must be (layer of a, layer of b) tuples, got {pairs}")
    # Validate every layer before computing anything.
    layers, n_examples = [], {}
    for la, lb in pairs:
        x, n_x = _layer_rows(rows_a, la, "rows_a", positions)
        y, n_y = _layer_rows(rows_b, lb, "rows_b", positions)
        n_examples[f"rows_a[{la!r}]"], n_examples[f"rows_b[{lb!r}]"] = n_x, n_y
        layers.append((x, y))
    if len(set(n_examples.values())) > 1:
        raise ValueError(f"layers hold different numbers of examples: {n_examples}")
    n = next(iter(n_examples.values()))
    if n % batch_examples:
        raise ValueError(f"{n} examples are not divisible into batches of {batch_examples}; "
                         f"trim the inputs to {n - n % batch_examples} examples")
    num_batches = n // batch_examples
    rows_per_batch = batch_examples * positions

    for (la, lb), (x, y) in zip(pairs, layers):
        nm.require_overdetermined(_batch_shape(x, rows_per_batch), _batch_shape(y, rows_per_batch),
                                  allow_underdetermined,
                                  f"batched_network_similarity pair ({la!r}, {lb!r})")
    # Dispatch every pair before reading any result back, so the device never waits on the host.
    results = [_leading_per_batch_jit(x, y, k, num_batches) for x, y in layers]
    per_pair = []
    for (la, lb), (scores, status) in zip(pairs, results):
        status = np.asarray(status)
        bad = np.flatnonzero(~status.all(axis=1))
        if bad.size:
            message = _MESSAGES[int(np.flatnonzero(~status[bad[0]])[0])]
            raise ValueError(f"pair ({la!r}, {lb!r}), batch {bad[0]} (x = rows_a, y = rows_b): "
                             f"{message}")
        per_pair.append(np.asarray(scores))
    per_pair = np.stack(per_pair, axis=1)
    per_batch = per_pair.mean(axis=1)
    se = float(per_batch.std(ddof=1) / math.sqrt(num_batches)) if num_batches > 1 else math.nan
    return {"per_pair": per_pair, "per_batch": per_batch, "mean": float(per_batch.mean()),
            "se": se, "pairs": pairs}
