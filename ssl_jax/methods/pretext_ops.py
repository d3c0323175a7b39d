"""Pure pieces of the pretext tasks (rotation, jigsaw, counting, colorization).

Everything here is a plain function of arrays; the method modules (rotation.py, jigsaw.py,
counting.py, colorization.py) compose them inside their jitted losses.

Conventions: images are float NHWC (per-image functions: HWC) in [0, 1]; square images.
Lab follows scikit-image's `rgb2lab` exactly (sRGB, D65 white, 2-degree observer):
L in [0, 100], a and b roughly in [-128, 128].
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ---------------------------------------------------------------------------------------------
# Rotation (Gidaris et al. 2018)
# ---------------------------------------------------------------------------------------------


def rotations(images: Array) -> tuple[Array, Array]:
    """[B, S, S, C] -> (all four rotations [4B, S, S, C], labels [4B]).

    Row r * B + i is image i rotated by r * 90 degrees counter-clockwise (np.rot90's
    direction) and has label r, so every image of the batch appears in all four rotations."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"rotation needs square images, got {images.shape[1:3]}")
    b = images.shape[0]
    rotated = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)], axis=0)
    return rotated, jnp.repeat(jnp.arange(4, dtype=jnp.int32), b)


# ---------------------------------------------------------------------------------------------
# Jigsaw (Noroozi & Favaro 2016)
# ---------------------------------------------------------------------------------------------


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances: a [n, k], b [m, k] -> [n, m] (positions that differ)."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def max_hamming_permutations(num: int, num_tiles: int = 9, seed: int = 0) -> np.ndarray:
    """`num` distinct permutations of range(num_tiles) [num, num_tiles], chosen greedily for a
    large minimum pairwise Hamming distance.

    Start from one random permutation (numpy seed `seed`); then repeatedly add the permutation
    whose minimum distance to the chosen ones is largest, ties broken by the largest mean
    distance, then by lexicographic order. Noroozi & Favaro's Algorithm 1 picks by mean distance
    only; max-min is what "maximal Hamming distance" asks for and keeps the classes far apart.
    Deterministic for a given (num, num_tiles, seed)."""
    return _greedy_permutations(int(num), int(num_tiles), int(seed)).copy()


@functools.lru_cache(maxsize=8)  # ~1 s for 100 of 9! permutations; methods and tests reuse it
def _greedy_permutations(num: int, num_tiles: int, seed: int) -> np.ndarray:
    every = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    if not 1 <= num <= len(every):
        raise ValueError(f"num_permutations={num} must be in [1, {len(every)}] for "
                         f"{num_tiles} tiles")
    first = np.random.default_rng(seed).integers(len(every))
    chosen = [first]
    min_d = hamming(every[first:first + 1], every)[0].astype(np.int32)
    sum_d = min_d.copy()
    for _ in range(num - 1):
        # Max-min first, then max-sum (sum < (num_tiles + 1) * num); argmax takes the first,
        # i.e. lexicographically smallest, of equals. Chosen ones have min_d 0: never again.
        best = int(np.argmax(min_d.astype(np.int64) * ((num_tiles + 1) * num) + sum_d))
        chosen.append(best)
        d = hamming(every[best:best + 1], every)[0]
        min_d = np.minimum(min_d, d)
        sum_d += d
    return every[np.array(chosen)].astype(np.int32)


def min_pairwise_hamming(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two different rows of `perms` [n, k]."""
    d = hamming(perms, perms)
    return int(d[~np.eye(len(perms), dtype=bool)].min())


def tile_geometry(image_size: int, grid: int, tile_fraction: float) -> tuple[int, int]:
    """(cell side, tile side) for a `grid` x `grid` split of an `image_size` image whose tiles
    cover `tile_fraction` of their cell's side (Noroozi: 64 px tiles in 75 px cells = 0.85),
    leaving on average (cell - tile) px of gap between neighbouring tiles."""
    cell = image_size // grid
    tile = int(round(cell * tile_fraction))
    if not 1 <= tile <= cell:
        raise ValueError(f"tile_fraction={tile_fraction} gives {tile} px tiles in {cell} px cells;"
                         " need 0 < tile_fraction <= 1 and cells of >= 1 px")
    return cell, tile


def extract_tiles(image: Array, offsets: Array, grid: int, cell: int, tile: int) -> Array:
    """Tiles of one image [S, S, C] -> [grid * grid, tile, tile, C], row-major cell order.

    offsets: int [grid * grid, C, 2], the (y, x) position of each tile's channel inside its
    cell, in [0, cell - tile]: per-tile offsets are the jitter (random gaps), per-channel
    differences within a tile the chromatic-aberration jitter. Channel c of tile k is
    image[y0 + oy : y0 + oy + tile, x0 + ox : x0 + ox + tile, c] with (y0, x0) the cell corner,
    so a tile never leaves its cell and neighbouring tiles never overlap."""
    corners = jnp.array([(i * cell, j * cell) for i in range(grid) for j in range(grid)],
                        jnp.int32)
    offsets = jnp.clip(offsets, 0, cell - tile)

    def one_channel(corner, off, c):
        plane = image[..., c]
        return jax.lax.dynamic_slice(plane, (corner[0] + off[0], corner[1] + off[1]), (tile, tile))

    def one_tile(corner, offs):  # offs [C, 2]
        return jnp.stack([one_channel(corner, offs[c], c) for c in range(image.shape[-1])], -1)

    return jax.vmap(one_tile)(corners, offsets)


def sample_tile_offsets(key: Array, num_tiles: int, channels: int, cell: int, tile: int,
                        channel_jitter: int) -> Array:
    """int [num_tiles, channels, 2]: a uniform tile position in [0, cell - tile] per tile, plus
    an independent per-channel shift in [-channel_jitter, channel_jitter] (clipped to the cell
    by `extract_tiles`)."""
    k_tile, k_chan = jax.random.split(key)
    pos = jax.random.randint(k_tile, (num_tiles, 1, 2), 0, cell - tile + 1)
    shift = jax.random.randint(k_chan, (num_tiles, channels, 2), -channel_jitter,
                               channel_jitter + 1)
    return pos + shift


def standardize(x: Array, axes=(-3, -2, -1), eps: float = 1e-5) -> Array:
    """Zero mean, unit standard deviation over `axes` (default: each image or tile over its
    pixels and channels): Noroozi's per-tile normalisation, so tiles cannot be matched by
    their mean brightness or contrast."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    std = jnp.std(x, axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(std ** 2 + eps)


# ---------------------------------------------------------------------------------------------
# Counting (Noroozi et al. 2017)
# ---------------------------------------------------------------------------------------------


# Noroozi et al. 2017 pick the downsampling operator at random (bicubic, bilinear, Lanczos,
# area) so that the network cannot tell the downsampled whole image from the tiles by how it
# was resampled; ours are the same four families ("area" = box filter: block means when
# shrinking by an integer factor, pixel repetition when enlarging by one).
RESAMPLING_METHODS = ("area", "linear", "cubic", "lanczos3")


def resize(images: Array, size: int, method: str = "linear") -> Array:
    """[..., H, W, C] -> [..., size, size, C] with one resampling `method` (RESAMPLING_METHODS),
    antialiased when shrinking; the identity when already that size."""
    *lead, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    if method != "area":
        return jax.image.resize(images, (*lead, size, size, c), method=method, antialias=True)
    if h % size == 0 and w % size == 0:
        blocks = images.reshape(*lead, size, h // size, size, w // size, c)
        return blocks.mean(axis=(-4, -2))
    if size % h == 0 and size % w == 0:
        return jnp.repeat(jnp.repeat(images, size // h, axis=-3), size // w, axis=-2)
    raise ValueError(f"area resampling needs an integer factor between {h}x{w} and {size}")


def random_resize(key: Array, images: Array, size: int,
                  methods: tuple[str, ...] = RESAMPLING_METHODS) -> Array:
    """`resize`, each image [N, H, W, C] with its own method drawn uniformly from `methods`.
    All variants are computed and one is gathered per image: at pretext sizes resampling is
    cheap next to the network, and it keeps the choice a traced value."""
    if images.shape[1:3] == (size, size):
        return images
    variants = jnp.stack([resize(images, size, m) for m in methods])  # [M, N, ...]
    pick = jax.random.randint(key, (images.shape[0],), 0, len(methods))
    return variants[pick, jnp.arange(images.shape[0])]


def count_views(key: Array, images: Array, tile_size: int,
                methods: tuple[str, ...] = RESAMPLING_METHODS) -> tuple[Array, Array]:
    """[B, S, S, C] (S even) -> (the 2 x 2 tiles [B, 4, t, t, C], the whole image [B, t, t, C]),
    t = tile_size. The whole image is first downsampled to the tiles' scale (S / 2), so both
    show the scene at one scale; then all five views are resized to t (AlexNet needs 64 px
    inputs on a 64 px dataset). Every resampling draws its method per view from `methods`."""
    b, s = images.shape[0], images.shape[1]
    if s % 2 or images.shape[2] != s:
        raise ValueError(f"counting needs square images of even side, got {images.shape[1:3]}")
    h = s // 2
    k_down, k_up = jax.random.split(key)
    tiles = images.reshape(b, 2, h, 2, h, -1).transpose(0, 1, 3, 2, 4, 5).reshape(4 * b, h, h, -1)
    whole = random_resize(k_down, images, h, methods)
    views = random_resize(k_up, jnp.concatenate([tiles, whole]), tile_size, methods)
    return views[:4 * b].reshape(b, 4, *views.shape[1:]), views[4 * b:]


def counting_loss(tile_feats: Array, whole_feats: Array, other_feats: Array,
                  margin: float) -> tuple[Array, Array]:
    """Noroozi et al. 2017, eq. 5, averaged over the batch:

        |phi(D x) - sum_j phi(T_j x)|^2 + max(0, M - |phi(D y) - sum_j phi(T_j x)|^2)

    tile_feats [B, 4, K] = phi(T_j x); whole_feats [B, K] = phi(D x); other_feats [B, K] =
    phi(D y) of another image y. The second (contrastive) term rules out phi = 0.
    Returns (loss, accuracy): accuracy = fraction of images whose own whole image is closer to
    the tile sum than the other image's (chance 0.5)."""
    total = tile_feats.sum(axis=1)
    pos = jnp.sum((whole_feats - total) ** 2, axis=-1)
    neg = jnp.sum((other_feats - total) ** 2, axis=-1)
    loss = jnp.mean(pos + jnp.maximum(0.0, margin - neg))
    return loss, jnp.mean(pos < neg)


# ---------------------------------------------------------------------------------------------
# Colorization (Zhang et al. 2016): Lab, ab bins, soft encoding, rebalancing, decoding
# ---------------------------------------------------------------------------------------------

# skimage.color's sRGB -> XYZ matrix and D65 (2 degree) white point.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: Array) -> Array:
    """[..., 3] sRGB in [0, 1] -> [..., 3] CIE Lab (skimage.color.rgb2lab)."""
    rgb = jnp.asarray(rgb, jnp.float32)
    linear = jnp.where(rgb > 0.04045, ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4,
                       rgb / 12.92)
    xyz = linear @ jnp.asarray(_XYZ_FROM_RGB.T / _WHITE_D65[None, :], jnp.float32)
    f = jnp.where(xyz > 0.008856, jnp.cbrt(jnp.maximum(xyz, 0.008856)), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: Array) -> Array:
    """[..., 3] Lab -> [..., 3] sRGB clipped to [0, 1] (skimage.color.lab2rgb)."""
    lab = jnp.asarray(lab, jnp.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    fz = jnp.maximum(fy - lab[..., 2] / 200.0, 0.0)  # skimage clips negative z to 0
    f = jnp.stack([fx, fy, fz], axis=-1)
    xyz = jnp.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    linear = (xyz * jnp.asarray(_WHITE_D65, jnp.float32)) @ jnp.asarray(_RGB_FROM_XYZ.T,
                                                                         jnp.float32)
    rgb = jnp.where(linear > 0.0031308,
                    1.055 * jnp.maximum(linear, 0.0031308) ** (1 / 2.4) - 0.055, linear * 12.92)
    return jnp.clip(rgb, 0.0, 1.0)


def in_gamut_bins(grid: float = 10.0, samples_per_channel: int = 64) -> np.ndarray:
    """ab centres [Q, 2] (multiples of `grid`) of the cells that some sRGB colour falls in,
    found by converting a dense RGB cube (`samples_per_channel`^3 colours) to Lab and rounding
    ab / grid. Zhang et al.'s 10-unit grid gives their 313 bins from ImageNet's colours; this
    gamut-based count is close to it (see docs/PRETEXT.md). Sorted by (a, b)."""
    v = np.linspace(0.0, 1.0, samples_per_channel)
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    ab = np.asarray(rgb_to_lab(cube))[:, 1:]
    cells = np.unique(np.round(ab / grid).astype(np.int64), axis=0)
    return (cells * grid).astype(np.float32)


def _squared_distances(ab: Array, centres: Array) -> Array:
    """[..., 2] x [Q, 2] -> [..., Q]."""
    return jnp.sum((ab[..., None, :] - centres) ** 2, axis=-1)


def quantize_ab(ab: Array, centres: Array) -> Array:
    """Nearest bin index [...] of each ab value [..., 2] among `centres` [Q, 2]."""
    return jnp.argmin(_squared_distances(ab, centres), axis=-1)


def soft_encode(ab: Array, centres: Array, neighbours: int = 5, sigma: float = 5.0) -> Array:
    """Zhang et al.'s soft target [..., Q]: Gaussian (sigma, in ab units) weights on the
    `neighbours` nearest bins of each ab value, normalised to sum to 1."""
    d2 = _squared_distances(ab, centres)
    neg_d2, idx = jax.lax.top_k(-d2, neighbours)
    w = jnp.exp(neg_d2 / (2 * sigma ** 2))
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    one_hot = jax.nn.one_hot(idx, centres.shape[0], dtype=w.dtype)  # [..., n, Q]
    return jnp.einsum("...n,...nq->...q", w, one_hot)


def rebalancing_weights(counts: Array, centres: Array, lam: float = 0.5,
                        sigma: float = 5.0) -> Array:
    """Zhang et al.'s class-rebalancing weights [Q] from bin counts [Q]:
    w ∝ ((1 - lam) p~ + lam / Q)^-1 with p~ the empirical distribution smoothed by a Gaussian
    (sigma, ab units) over the bins, normalised so that E_{p~}[w] = 1."""
    p = counts / jnp.sum(counts)
    kernel = jnp.exp(-_squared_distances(centres, centres) / (2 * sigma ** 2))
    smooth = kernel @ p
    smooth = smooth / jnp.sum(smooth)
    w = 1.0 / ((1 - lam) * smooth + lam / centres.shape[0])
    return w / jnp.sum(smooth * w)


def annealed_mean(probs: Array, centres: Array, temperature: float = 0.38) -> Array:
    """Zhang et al.'s point estimate of ab [..., 2] from bin probabilities [..., Q]: the mean of
    the distribution re-normalised at `temperature` (1 = mean, -> 0 = mode)."""
    logp = jnp.log(jnp.maximum(probs, 1e-12)) / temperature
    return jax.nn.softmax(logp, axis=-1) @ centres
