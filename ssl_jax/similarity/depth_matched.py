"""Network-to-network similarity by CCA over depth-matched layers (Epstein et al., "What's
missing from self-supervised representation learning?", section 3 and footnotes 1-2).

The protocol: each compared layer's activations are resized to a common s x s grid per image
and every (image, position) becomes a row with one column per channel
(`activations.to_examples(a, "positions", s)`, so a layer is `[N * s * s, C]`, example-major);
two networks are scored by the average over depth-matched layer pairs (conv i of an AlexNet
with block i of a ResNet, i = 1..4) and reported as mean +- standard error over several
batches of N images (paper: N = 120, 10 batches).

Two layers are scored with K directions (the paper's K = 20; it combines SVCCA and PCA): each
layer is reduced to its K leading principal directions (over the batch's rows), and the score
is the mean canonical correlation of the two reduced layers (SVCCA with a fixed K rather than
a variance fraction). Reducing first keeps the score meaningful when a layer has few distinct
rows for its width: a ResNet's last block at 32 px is a 1 x 1 map, so a batch of 200 images
gives 200 distinct rows for 128 channels, where the leading correlations of a full CCA come
out near 1 whatever the networks. A fixed K also keeps layers of different widths on one
scale: the mean of all min(p, q) correlations falls as the narrower layer widens.

Each layer's basis is computed once per batch (`layer_bases`), then every pair of networks
costs one small K x K SVD per layer pair and batch (`bases_similarity`):
`batched_network_similarity` is the two steps for one pair of networks.
"""
from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.similarity import _numerics as nm
from ssl_jax.similarity.cca import _MESSAGES, _checked, _correlations, _svd_basis


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


def _basis(a, k: int):
    """Traced: the orthonormal basis [n, k'] of a's k' = min(k, channels) leading principal
    directions (columns past a's rank zeroed), their count within the rank, and the status
    (finite, not constant)."""
    u, _, _, in_rank = _svd_basis(a)
    kk = min(k, a.shape[1])
    mask = in_rank[:kk]
    return u[:, :kk] * mask, jnp.sum(mask), jnp.stack([nm.finite(a), jnp.any(in_rank)])


def _basis_cca(ux, nx, uy, ny):
    """Mean canonical correlation of two reduced layers from their bases: the sum of the
    singular values of ux^T uy over min(rank_x, rank_y)."""
    rho = _correlations(ux, 1.0, uy, 1.0, min(ux.shape[1], uy.shape[1]))
    return jnp.sum(rho) / jnp.maximum(jnp.minimum(nx, ny), 1)


def _k_svcca(x, y, k: int):
    ux, nx, sx = _basis(x, k)
    uy, ny, sy = _basis(y, k)
    return _basis_cca(ux, nx, uy, ny), jnp.concatenate([sx, sy])


_k_svcca_jit = jax.jit(_k_svcca, static_argnums=2)


def k_svcca(x, y, k: int, allow_underdetermined: bool = False) -> jax.Array:
    """Mean canonical correlation of x `[n, p]` and y `[n, q]` each reduced to its k leading
    principal directions (k capped at the channels; directions past a layer's rank count as
    absent: the mean is over min(k, rank_x, rank_y) correlations), in [0, 1]. With k >= p, q
    it is `mean_cca`. Same input checks as `cca`; jit-compatible with `k` static (then the
    value checks are skipped).
    """
    k = _positive_int(k, "k")
    x, y = _checked(x, y, allow_underdetermined, "k_svcca")
    value, status = _k_svcca_jit(x, y, k)
    if not nm.is_traced(x, y):
        nm.raise_for_status(status[jnp.array([0, 2, 1, 3])], _MESSAGES)
    return value


@functools.partial(jax.jit, static_argnums=(1, 2))
def _bases_per_batch(a, k: int, num_batches: int):
    """a `[B * R, p]` -> (bases [B, R, k'], ranks [B], status [B, 2]); batches run one after
    another inside one compile (lax.map: vmap is no faster on CPU and holds B SVDs at once)."""
    return jax.lax.map(lambda b: _basis(b, k), a.reshape(num_batches, -1, a.shape[1]))


@jax.jit
def _scores_per_batch(ux, nx, uy, ny):
    return jax.lax.map(lambda t: _basis_cca(*t), (ux, nx, uy, ny))


def layer_bases(rows: Mapping[str, np.ndarray], positions: int, batch_examples: int, k: int,
                name: str = "rows", allow_underdetermined: bool = False) -> dict:
    """{layer: (bases [num_batches, batch_examples * positions, k'], ranks [num_batches])} of
    one network's layers `rows` ({layer: `[n * positions, channels]`}, example-major, as
    `capture(..., mode="positions", positions_size=s)` returns with positions = s * s): each
    batch of `batch_examples` consecutive examples reduced to its k leading principal
    directions. n must be divisible by batch_examples (ValueError otherwise: trim the inputs
    rather than have a short last batch silently averaged in). Each batch must have more rows
    than channels unless `allow_underdetermined`; a NaN or constant layer in any batch raises
    ValueError naming it (`name` says whose rows in the messages)."""
    positions = _positive_int(positions, "positions")
    batch_examples = _positive_int(batch_examples, "batch_examples")
    k = _positive_int(k, "k")
    if not rows:
        raise ValueError(f"{name} is empty; nothing to compare")
    layers, n_examples = {}, {}
    for layer in rows:
        layers[layer], n_examples[layer] = _layer_rows(rows, layer, name, positions)
    if len(set(n_examples.values())) > 1:
        raise ValueError(f"{name}: layers hold different numbers of examples: {n_examples}")
    n = next(iter(n_examples.values()))
    if n % batch_examples:
        raise ValueError(f"{n} examples are not divisible into batches of {batch_examples}; "
                         f"trim the inputs to {n - n % batch_examples} examples")
    num_batches, rows_per_batch = n // batch_examples, batch_examples * positions
    for layer, a in layers.items():
        nm.require_overdetermined(_batch_shape(a, rows_per_batch), _batch_shape(a, rows_per_batch),
                                  allow_underdetermined, f"layer_bases {name}[{layer!r}]")
    # Dispatch every layer before reading any status back.
    results = {layer: _bases_per_batch(a, k, num_batches) for layer, a in layers.items()}
    out = {}
    for layer, (bases, ranks, status) in results.items():
        status = np.asarray(status)
        bad = np.flatnonzero(~status.all(axis=1))
        if bad.size:
            message = _MESSAGES[2 * int(np.flatnonzero(~status[bad[0]])[0])]
            raise ValueError(f"{name}[{layer!r}], batch {bad[0]}: {message.replace('x ', '')}")
        out[layer] = (bases, ranks)
    return out


def bases_similarity(bases_a: Mapping, bases_b: Mapping,
                     pairs: Sequence[tuple[str, str]]) -> dict:
    """Depth-matched similarity of two networks from their `layer_bases` (the same examples,
    batches and positions on both sides).

    Returns {"per_pair": np.ndarray [num_batches, len(pairs)] of the k-direction mean CCA
    (`k_svcca`) per batch; "per_batch": its mean over pairs, [num_batches]; "mean": mean of
    per_batch; "se": std(per_batch, ddof=1) / sqrt(num_batches), NaN for one batch;
    "pairs": the pairs}."""
    pairs = [tuple(pair) for pair in pairs]
    if not pairs:
        raise ValueError("pairs is empty; nothing to compare")
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"pairs must be (layer of a, layer of b) tuples, got {pairs}")
    for la, lb in pairs:
        for layer, bases, side in ((la, bases_a, "bases_a"), (lb, bases_b, "bases_b")):
            if layer not in bases:
                raise ValueError(f"layer {layer!r} is not in {side}; available: {sorted(bases)}")
        if bases_a[la][0].shape[:2] != bases_b[lb][0].shape[:2]:
            raise ValueError(f"pair ({la!r}, {lb!r}): batches x rows differ "
                             f"({bases_a[la][0].shape[:2]} vs {bases_b[lb][0].shape[:2]}): "
                             "the two networks must see the same examples and positions")
    scores = [_scores_per_batch(*bases_a[la], *bases_b[lb]) for la, lb in pairs]
    per_pair = np.stack([np.asarray(s) for s in scores], axis=1)
    per_batch = per_pair.mean(axis=1)
    num_batches = len(per_batch)
    se = float(per_batch.std(ddof=1) / math.sqrt(num_batches)) if num_batches > 1 else math.nan
    return {"per_pair": per_pair, "per_batch": per_batch, "mean": float(per_batch.mean()),
            "se": se, "pairs": pairs}


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
    """Depth-matched similarity of two networks, scored per batch of examples: `layer_bases`
    of each side's layers named in `pairs`, then `bases_similarity` (see both). To compare
    many networks, compute each one's `layer_bases` once instead."""
    pairs = [tuple(pair) for pair in pairs]
    if not pairs:
        raise ValueError("pairs is empty; nothing to compare")
    for (la, lb) in pairs:
        for layer, rows, side in ((la, rows_a, "rows_a"), (lb, rows_b, "rows_b")):
            if layer not in rows:
                raise ValueError(f"layer {layer!r} is not in {side}; available: {sorted(rows)}")
    sides = []
    for rows, side, i in ((rows_a, "rows_a", 0), (rows_b, "rows_b", 1)):
        wanted = {pair[i]: rows[pair[i]] for pair in pairs}
        sides.append(layer_bases(wanted, positions, batch_examples, k, side,
                                 allow_underdetermined))
    return bases_similarity(*sides, pairs)
