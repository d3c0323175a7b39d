"""The numpy renderer of the built-in `shapes_textures` dataset (no TensorFlow).

Shapes (the class), textures (what fills a shape) and backgrounds (what surrounds it),
rendered for a batch of images at once with numpy, and `generate_chunk`, which turns a
config into finished examples. It imports no TensorFlow so that the builder's worker
processes start fast ('spawn', which is safe next to JAX's threads, unlike 'fork');
ssl_jax.data.builtin wraps it into the TFDS builder and re-exports the public names.

Every renderer takes all its randomness from the `np.random.Generator` it is given, so
a batch is a pure function of the generator's seed.

Conventions: masks and texture patterns are `[n, R, R]` (bool / intensity in [0, 1]),
backgrounds and images `[n, R, R, 3]` uint8; pixel (i, j) has its centre at
(x, y) = (j + 0.5, i + 0.5). Natural textures and photo backgrounds are cut from images
that ship inside scikit-image (`skimage.data`), so nothing is downloaded.
"""
from __future__ import annotations

import functools
import struct
import zlib
from typing import Protocol

import numpy as np

from ssl_jax.data import colour

TEXTURE_NAMES: tuple[str, ...] = (
    "stripes", "checker", "dots", "grid", "zigzag", "rings", "speckle",
    "brick", "grass", "gravel",
)
# The last three families are crops of these skimage.data images.
NATURAL_TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
BACKGROUND_NAMES: tuple[str, ...] = ("flat", "gradient", "noise", "natural")
# Colour photos shipped with scikit-image (no pooch download needed).
BACKGROUND_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
    "immunohistochemistry",
)

SHAPE_NAMES: tuple[str, ...] = (
    "circle", "triangle", "square", "star", "cross",
    "heart", "crescent", "arrow", "ell", "ring",
)
# Class -> its associated texture family (a bijection, deliberately not the identity so
# that mixing up `label` and `texture_label` shows up in tests).
CLASS_TEXTURE: dict[str, str] = {
    "circle": "checker", "triangle": "stripes", "square": "dots", "star": "grid",
    "cross": "rings", "heart": "zigzag", "crescent": "brick", "arrow": "grass",
    "ell": "gravel", "ring": "speckle",
}
# Class -> its associated background kind. Correlated backgrounds also take a class
# colour family (hue = class / 10) or, for `natural`, a class-specific photo, so the
# background style (not just one of 4 kinds) is a usable shortcut.
CLASS_BACKGROUND: dict[str, str] = {
    name: BACKGROUND_NAMES[c % len(BACKGROUND_NAMES)] for c, name in enumerate(SHAPE_NAMES)
}
SPLITS: tuple[str, ...] = ("train", "test", "cue_conflict")

# Index forms of the mappings above, used by the vectorised sampler.
_CLASS_TEXTURE_IDX = np.array([TEXTURE_NAMES.index(CLASS_TEXTURE[s]) for s in SHAPE_NAMES])
_TEXTURE_CLASS_IDX = np.argsort(_CLASS_TEXTURE_IDX)
_CLASS_BACKGROUND_IDX = np.array(
    [BACKGROUND_NAMES.index(CLASS_BACKGROUND[s]) for s in SHAPE_NAMES])
_CLASS_HUE = np.arange(len(SHAPE_NAMES), dtype=np.float32) / len(SHAPE_NAMES)
_CLASS_PHOTO = (np.arange(len(SHAPE_NAMES)) // len(BACKGROUND_NAMES)) % len(BACKGROUND_PHOTOS)
# Examples are generated in fixed-size chunks, each from its own seed, so the bytes do
# not depend on how many worker processes build them.
CHUNK = 512


# A natural texture source is resized so that its shorter side is this many output
# image sides: bricks then come out ~5 px wide at 32 px, about the procedural period.
_TEXTURE_SOURCE_SIDES = 4
# A photo is resized so its shorter side is 3 image sides: a crop shows 1/3..2/3 of it.
_PHOTO_SOURCE_SIDES = 3


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half up and clip a [0, 255] float array to uint8."""
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y pixel-centre coordinates, each [1, R, R] float32."""
    c = np.arange(resolution, dtype=np.float32) + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return x[None], y[None]


@functools.lru_cache(maxsize=None)
def _natural_source(name: str, short_side: int) -> np.ndarray:
    """A skimage.data image resized (anti-aliased) to the given shorter side.

    Returns float32 [h, w] in [0, 1] for greyscale textures (contrast-stretched to the
    2nd..98th percentile so every family spans the full tint range), or uint8
    [h, w, 3] for colour photos.
    """
    import skimage.data
    import skimage.transform

    img = getattr(skimage.data, name)()
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    scale = short_side / min(img.shape[:2])
    out_shape = (round(img.shape[0] * scale), round(img.shape[1] * scale))
    small = skimage.transform.resize(
        img.astype(np.float32), out_shape, anti_aliasing=True, preserve_range=True)
    if small.ndim == 2:
        lo, hi = np.percentile(small, [2, 98])
        return np.clip((small - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return _to_uint8(small)


def _rotated_crop(source: np.ndarray, n: int, resolution: int,
                  rng: np.random.Generator, zoom_range: tuple[float, float],
                  rotate: bool = True) -> np.ndarray:
    """n random rotated, zoomed crops of `source` sampled at R x R (nearest neighbour).
    `rotate=False` keeps the source upright (the angles are still drawn, so the other
    draws, hence every other factor, stay the same).

    source: [h, w] or [h, w, C]. Returns [n, R, R] or [n, R, R, C].
    zoom: source pixels per output pixel; the crop centre is chosen so that the whole
    rotated window lies inside the source.
    """
    h, w = source.shape[:2]
    angle = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32) * np.float32(rotate)
    zoom = rng.uniform(*zoom_range, n).astype(np.float32)
    # Half-diagonal of the rotated window bounds how far the centre is from an edge.
    reach = zoom * resolution * np.float32(np.sqrt(0.5)) + 1.0
    cy = rng.uniform(reach, h - reach).astype(np.float32)
    cx = rng.uniform(reach, w - reach).astype(np.float32)
    x, y = _pixel_grid(resolution)
    x = x - resolution / 2
    y = y - resolution / 2
    cos = np.cos(angle)[:, None, None] * zoom[:, None, None]
    sin = np.sin(angle)[:, None, None] * zoom[:, None, None]
    sx = cx[:, None, None] + cos * x - sin * y
    sy = cy[:, None, None] + sin * x + cos * y
    ix = np.clip(sx.astype(np.int32), 0, w - 1)
    iy = np.clip(sy.astype(np.int32), 0, h - 1)
    return source[iy, ix]


def _procedural(name: str, tx: np.ndarray, ty: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Binary pattern of family `name` in texture coordinates (units of one period)."""
    fx, fy = tx - np.floor(tx), ty - np.floor(ty)
    if name == "stripes":
        return fx < 0.5
    if name == "checker":
        return (np.floor(tx) + np.floor(ty)) % 2 == 0
    if name == "dots":
        return (fx - 0.5) ** 2 + (fy - 0.5) ** 2 < 0.3 ** 2
    if name == "grid":
        return (fx < 0.25) | (fy < 0.25)
    if name == "zigzag":
        # Stripes along ty, displaced by a triangle wave of tx: chevrons.
        tri = np.abs(2 * fx - 1)
        shifted = ty + 0.8 * tri
        return shifted - np.floor(shifted) < 0.5
    if name == "rings":
        r = np.sqrt(tx ** 2 + ty ** 2)
        return r - np.floor(r) < 0.5
    if name == "speckle":
        return rng.integers(0, 2, tx.shape, dtype=np.uint8)
    raise ValueError(f"unknown procedural texture {name!r}; valid: {TEXTURE_NAMES[:7]}")


def render_textures(family: np.ndarray, resolution: int,
                    rng: np.random.Generator, rotate: bool = True) -> np.ndarray:
    """Pattern intensity of each example's texture family, [n, R, R] float32 in [0, 1].
    `rotate=False`: every pattern at orientation 0 (the draws are unchanged otherwise).

    family: [n] int indices into TEXTURE_NAMES. Every texture gets a random
    orientation, period (R/9..R/5 pixels, or a random zoom for natural crops) and
    phase, so the family (not a particular layout) is what stays constant.
    """
    family = np.asarray(family)
    if family.size and (family.min() < 0 or family.max() >= len(TEXTURE_NAMES)):
        raise ValueError(f"texture family out of range: {family.min()}..{family.max()}, "
                         f"valid 0..{len(TEXTURE_NAMES) - 1}")
    n = family.shape[0]
    # Per-example parameters are drawn for the whole batch first, so the draws do not
    # depend on how examples split into families.
    angle = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32) * np.float32(rotate)
    period = rng.uniform(resolution / 9, resolution / 5, n).astype(np.float32)
    # Phase offset in pixels; for rings it is the (possibly off-image) centre.
    offset = rng.uniform(-resolution, resolution, (n, 2)).astype(np.float32)
    x, y = _pixel_grid(resolution)
    out = np.empty((n, resolution, resolution), np.float32)
    for f, name in enumerate(TEXTURE_NAMES):
        idx = np.flatnonzero(family == f)
        if idx.size == 0:
            continue
        if name in NATURAL_TEXTURES:
            src = _natural_source(name, _TEXTURE_SOURCE_SIDES * resolution)
            out[idx] = _rotated_crop(src, idx.size, resolution, rng, (0.8, 1.25), rotate)
            continue
        cos = np.cos(angle[idx])[:, None, None]
        sin = np.sin(angle[idx])[:, None, None]
        p = period[idx][:, None, None]
        xs = x - resolution / 2 + offset[idx, 0][:, None, None]
        ys = y - resolution / 2 + offset[idx, 1][:, None, None]
        tx = (cos * xs + sin * ys) / p
        ty = (-sin * xs + cos * ys) / p
        out[idx] = _procedural(name, tx, ty, rng)
    return out


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB (colour.hsv_to_rgb); h, s, v in [0, 1] (h wraps), any equal
    shapes. Returns [..., 3] float32 in [0, 255].
    """
    hsv = np.stack([np.asarray(a, np.float32) for a in (h, s, v)], axis=-1)
    return (255.0 * colour.hsv_to_rgb(hsv, np)).astype(np.float32)


def _background_colours(n: int, k: int, hue: np.ndarray | None,
                        rng: np.random.Generator) -> np.ndarray:
    """k colours per example, [n, k, 3] in [0, 255].

    hue: [n] in [0, 1] or NaN; where given, all colours of that example stay within
    +-0.04 of it (a class-associated colour family), else hue is uniform.
    """
    h = rng.random((n, k), dtype=np.float32)
    s = rng.uniform(0.3, 1.0, (n, k)).astype(np.float32)
    v = rng.uniform(0.3, 1.0, (n, k)).astype(np.float32)
    if hue is not None:
        fixed = ~np.isnan(hue)
        h[fixed] = hue[fixed, None] + (h[fixed] - 0.5) * 0.08
    return hsv_to_rgb(h, s, v)


def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] matrix that bilinearly upsamples a length-src signal (edge-clamped)."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((dst, src), np.float32)
    m[np.arange(dst), lo] += 1 - frac
    m[np.arange(dst), hi] += frac
    return m


def render_backgrounds(kind: np.ndarray, resolution: int, rng: np.random.Generator,
                       hue: np.ndarray | None = None,
                       photo: np.ndarray | None = None, rotate: bool = True) -> np.ndarray:
    """Backgrounds of the given kinds, [n, R, R, 3] uint8 (`rotate=False`: photo crops
    upright; gradient directions stay random either way).

    kind: [n] indices into BACKGROUND_NAMES. flat = one colour; gradient = linear ramp
    between two colours in a random direction; noise = smooth 4x4 colour field plus
    per-pixel uniform noise (sd 25); natural = rotated, zoomed crop of a BACKGROUND_PHOTOS image.
    hue: optional [n] colour family for flat/gradient/noise (NaN = free).
    photo: optional [n] photo index for natural backgrounds (-1 = random).
    """
    kind = np.asarray(kind)
    if kind.size and (kind.min() < 0 or kind.max() >= len(BACKGROUND_NAMES)):
        raise ValueError(f"background kind out of range: {kind.min()}..{kind.max()}, "
                         f"valid 0..{len(BACKGROUND_NAMES) - 1}")
    n, r = kind.shape[0], resolution
    colours = _background_colours(n, 2, hue, rng)
    direction = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32)
    random_photo = rng.integers(0, len(BACKGROUND_PHOTOS), n)
    if photo is not None:
        random_photo = np.where(np.asarray(photo) >= 0, photo, random_photo)
    # Work in uint8 per kind: generation is memory-bound, float passes cost most.
    out = np.empty((n, r, r, 3), np.uint8)
    x, y = _pixel_grid(r)

    idx = np.flatnonzero(kind == 0)
    out[idx] = _to_uint8(colours[idx, 0, None, None, :])

    idx = np.flatnonzero(kind == 1)
    if idx.size:
        # t = projection of (pixel - centre) on the direction / (R sqrt 2) + 1/2, which
        # is separable in x and y and stays inside [0, 1] on the square (no clip).
        c = np.arange(r, dtype=np.float32) + 0.5 - r / 2
        a = (np.cos(direction[idx]) / (r * np.sqrt(2))).astype(np.float32)
        b = (np.sin(direction[idx]) / (r * np.sqrt(2))).astype(np.float32)
        t = a[:, None, None] * c[None, None, :] + (b[:, None, None] * c[None, :, None] + 0.5)
        c0, c1 = colours[idx, 0, None, None, :], colours[idx, 1, None, None, :]
        # Colours are in [0, 255], so c0 + 0.5 + t (c1 - c0) truncates to a rounded uint8.
        out[idx] = ((c0 + 0.5) + t[..., None] * (c1 - c0)).astype(np.uint8)

    idx = np.flatnonzero(kind == 2)
    if idx.size:
        grid_hue = None if hue is None else hue[idx]
        grid = _background_colours(idx.size, 16, grid_hue, rng).reshape(idx.size, 4, 4, 3)
        up = _bilinear_matrix(4, r)
        smooth = np.einsum("yi,nijc,xj->nyxc", up, grid, up, optimize=True)
        # Uniform on -43..43 has sd 25 and is several times cheaper than a normal;
        # int16 arithmetic halves the memory traffic of the float version.
        noise = rng.integers(-43, 44, (idx.size, r, r, 3), dtype=np.int16)
        noise += (smooth + 0.5).astype(np.int16)
        out[idx] = np.clip(noise, 0, 255).astype(np.uint8)

    idx = np.flatnonzero(kind == 3)
    for p, name in enumerate(BACKGROUND_PHOTOS):
        sub = idx[random_photo[idx] == p]
        if sub.size:
            src = _natural_source(name, _PHOTO_SOURCE_SIDES * r)
            out[sub] = _rotated_crop(src, sub.size, r, rng, (1.0, 2.0), rotate)
    return out


# --------------------------------------------------------------------------- shapes
def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, radius: float) -> np.ndarray:
    """Inside test for a regular polygon with circumradius `radius`, a vertex at -v."""
    apothem = radius * np.cos(np.pi / sides)
    inside = np.ones(u.shape, bool)
    for k in range(sides):
        phi = np.pi / 2 + (2 * k + 1) * np.pi / sides  # outward normal of edge k
        inside &= u * np.cos(phi) - v * np.sin(phi) <= apothem
    return inside


def _shape_inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside test in the shape's unit frame; every shape lies in the unit disk."""
    au, av = np.abs(u), np.abs(v)
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 0.9 ** 2
    if name == "triangle":
        return _regular_polygon(u, v + 0.15, 3, 0.85)
    if name == "square":
        return np.maximum(au, av) <= 0.68
    if name == "star":
        # Polar star: radius falls linearly from 0.95 at a tip to 0.42 between tips.
        theta = np.arctan2(u, -v) % (2 * np.pi / 5)
        tri = np.abs(theta / (np.pi / 5) - 1.0)
        return np.sqrt(r2) <= 0.42 + 0.53 * tri
    if name == "cross":
        return ((au <= 0.28) & (av <= 0.92)) | ((av <= 0.28) & (au <= 0.92))
    if name == "heart":
        # Classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled into the disk.
        # Its extent is y in [-1, 1.2] with lobe tops ~1.25 from (0, 0.1); centre it
        # there and scale by 0.72 so it stays inside the unit disk.
        x, y = u / 0.72, 0.1 - v / 0.72
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if name == "crescent":
        return (r2 <= 0.9 ** 2) & ((u - 0.45) ** 2 + v * v > 0.72 ** 2)
    if name == "arrow":
        shaft = (u >= -0.9) & (u <= 0.05) & (av <= 0.2)
        head = (u >= 0.05) & (u <= 0.9) & (av <= 0.65 * (0.9 - u) / 0.85)
        return shaft | head
    if name == "ell":
        return ((u >= -0.65) & (u <= -0.2) & (av <= 0.68)) | (
            (u >= -0.65) & (u <= 0.65) & (v >= 0.23) & (v <= 0.68))
    if name == "ring":
        return (r2 <= 0.92 ** 2) & (r2 >= 0.5 ** 2)
    raise ValueError(f"unknown shape {name!r}; valid: {SHAPE_NAMES}")


def render_masks(label: np.ndarray, resolution: int,
                 rng: np.random.Generator, scale_range: tuple[float, float],
                 rotate: bool = True) -> np.ndarray:
    """Foreground masks of the given shape classes, [n, R, R] bool (`rotate=False`: every
    shape upright, e.g. triangles point the same way).

    Each shape gets a random rotation, a diameter of scale_range * R pixels, and a
    centre chosen so the whole unit disk (hence the shape) stays inside the image.
    """
    return place_shapes(label, resolution, rng, scale_range, rotate)[0]


def place_shapes(label: np.ndarray, resolution: int,
                 rng: np.random.Generator, scale_range: tuple[float, float],
                 rotate: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """render_masks, also returning each shape's placement (same draws, same masks).

    The placement maps the shape's unit frame (u, v) to pixel coordinates:
    x = cx + half (cos u - sin v), y = cy + half (sin u + cos v); it is a dict of [n]
    float32 arrays `angle`, `half` (radius in pixels), `cx`, `cy`, and `u`, `v`, the
    frame coordinates of every pixel centre ([n, R, R]). The dense targets
    (builtin_dense) are computed from it, so they share the image's geometry.
    """
    n, r = label.shape[0], resolution
    angle = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32) * np.float32(rotate)
    half = (rng.uniform(*scale_range, n) * r / 2).astype(np.float32)
    cx = rng.uniform(half, r - half).astype(np.float32)
    cy = rng.uniform(half, r - half).astype(np.float32)
    c = np.arange(r, dtype=np.float32) + 0.5
    dx = (c[None, None, :] - cx[:, None, None]) / half[:, None, None]
    dy = (c[None, :, None] - cy[:, None, None]) / half[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    out = np.zeros((n, r, r), bool)
    for k, name in enumerate(SHAPE_NAMES):
        idx = np.flatnonzero(label == k)
        if idx.size:
            out[idx] = _shape_inside(name, u[idx], v[idx])
    return out, dict(angle=angle, half=half, cx=cx, cy=cy, u=u, v=v)


def mask_to_bbox(mask: np.ndarray) -> np.ndarray:
    """Normalised (ymin, xmin, ymax, xmax) of each mask's extent, [n, 4] float32.

    mask: [n, R, R] bool, each non-empty. Box edges are pixel edges: ymin = first row / R,
    ymax = (last row + 1) / R, so a full-image mask gives (0, 0, 1, 1).
    """
    r = mask.shape[1]
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    first = lambda a: a.argmax(axis=1)  # noqa: E731
    last = lambda a: r - 1 - a[:, ::-1].argmax(axis=1)  # noqa: E731
    box = np.stack([first(rows), first(cols), last(rows) + 1, last(cols) + 1], axis=1)
    return (box / r).astype(np.float32)


# ------------------------------------------------------------------------- sampling
class Recipe(Protocol):
    """The generation attributes of a ShapesTexturesConfig (which satisfies this)."""

    resolution: int
    num_train: int
    num_test: int
    num_cue_conflict: int
    texture_correlation: float
    background_correlation: float
    background_weights: tuple[float, float, float, float]
    scale_range: tuple[float, float]
    seed: int
    rotate: bool  # optional (default True): random orientation of shapes, textures, photos
    foreground_colour_correlation: float  # optional (default 0)
    texture_contrast: float  # optional (default 1): scales the two texture colours' distance
    grey: bool  # optional (default False): every image as its luminance, in all 3 channels
    dense: bool  # optional (default False): dense targets and a relief-shaded image


def split_size(config: Recipe, split: str) -> int:
    """Number of examples of `split` in `config`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
    return {"train": config.num_train, "test": config.num_test,
            "cue_conflict": config.num_cue_conflict}[split]


def _split_factors(config: Recipe, split: str, n: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Class, texture family, background kind/hue/photo of n examples of `split`."""
    k, t = len(SHAPE_NAMES), len(TEXTURE_NAMES)
    # Balanced classes within every chunk, in random order.
    label = rng.permutation(np.arange(n) % k)
    weights = np.asarray(config.background_weights, np.float64)
    free_kind = rng.choice(len(BACKGROUND_NAMES), size=n, p=weights / weights.sum())
    free_texture = rng.integers(0, t, n)
    u_texture, u_background = rng.random(n), rng.random(n)
    # j != i uniformly: shift the class by 1..k-1.
    other = (label + rng.integers(1, k, n)) % k
    hue = np.full(n, np.nan, np.float32)
    photo = np.full(n, -1)
    if split == "train":
        tied_tex = u_texture < config.texture_correlation
        texture = np.where(tied_tex, _CLASS_TEXTURE_IDX[label], free_texture)
        tied_bg = u_background < config.background_correlation
        kind = np.where(tied_bg, _CLASS_BACKGROUND_IDX[label], free_kind)
        hue[tied_bg] = _CLASS_HUE[label[tied_bg]]
        photo[tied_bg] = _CLASS_PHOTO[label[tied_bg]]
    elif split == "test":
        texture, kind = free_texture, free_kind
    elif split == "cue_conflict":
        texture, kind = _CLASS_TEXTURE_IDX[other], free_kind
    else:
        raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
    return dict(label=label, texture=texture, kind=kind, hue=hue, photo=photo)


def _class_foreground_colours(config: Recipe, chunk: int, label: np.ndarray,
                              c1: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two foreground colours of `train` examples: with probability
    `foreground_colour_correlation` both from the class's hue family (hue = class / 10 +- 0.04,
    as for tied backgrounds) and told apart by brightness (value 0.7-1 vs 0.15-0.45, so the
    texture still shows); else the free (c1, c2). Drawn from a stream of their own so that the
    variants without the option keep their bytes."""
    n = len(label)
    rng = np.random.default_rng([config.seed, SPLITS.index("train"), chunk, 1])
    tied = (rng.random(n) < config.foreground_colour_correlation)[:, None]
    hue = _CLASS_HUE[label][:, None] + (rng.random((n, 2)) - 0.5) * 0.08
    sat = rng.uniform(0.5, 1.0, (n, 2))
    val = np.stack([rng.uniform(0.7, 1.0, n), rng.uniform(0.15, 0.45, n)], 1)
    tied_colours = hsv_to_rgb(hue, sat, val)  # [n, 2, 3]
    return (np.where(tied, tied_colours[:, 0], c1), np.where(tied, tied_colours[:, 1], c2))


def generate_chunk(config: Recipe, split: str, chunk: int) -> dict[str, np.ndarray]:
    """Examples [chunk * CHUNK, (chunk + 1) * CHUNK) of `split`, deterministic.

    config: a ShapesTexturesConfig, or any object with the attributes of `Recipe`.

    Returns image [n, R, R, 3] uint8, mask [n, R, R, 1] uint8 (0/1), bbox [n, 4] float32
    (normalised ymin, xmin, ymax, xmax), label, texture_label, texture_class,
    background: [n] int64; with `config.dense` also the targets of
    builtin_dense.dense_targets, and the image is shaded by the relief.
    """
    total = split_size(config, split)
    n = min(CHUNK, total - chunk * CHUNK)
    if chunk < 0 or n <= 0:
        raise ValueError(f"chunk={chunk} outside split {split!r}: valid 0.."
                         f"{-(-total // CHUNK) - 1} ({total} examples)")
    rng = np.random.default_rng([config.seed, SPLITS.index(split), chunk])
    r = config.resolution
    f = _split_factors(config, split, n, rng)
    # Objects without `rotate` (older Recipe-like configs) keep random orientations.
    rotate = bool(getattr(config, "rotate", True))
    mask, placement = place_shapes(f["label"], r, rng, config.scale_range, rotate)
    pattern = render_textures(f["texture"], r, rng, rotate)
    background = render_backgrounds(f["kind"], r, rng, hue=f["hue"], photo=f["photo"],
                                    rotate=rotate)
    # Two foreground colours per image, every channel 88..168 apart (mod 256), so each
    # texture shows with strong contrast whatever colours are drawn; `texture_contrast` < 1
    # scales that distance down (a faint texture: the shape's outline becomes the strongest
    # edge in the image). At 1 the arithmetic is the original's, so those variants keep
    # their bytes.
    c1 = rng.integers(0, 256, (n, 3)).astype(np.float32)
    offset = 128 + rng.integers(-40, 41, (n, 3))
    contrast = float(getattr(config, "texture_contrast", 1.0))
    if contrast == 1.0:
        c2 = (c1 + offset) % 256
    else:  # no wrap-around (it would turn a small step into a large one): step down instead
        offset = np.round(offset * contrast)
        c2 = np.where(c1 + offset <= 255, c1 + offset, c1 - offset)
    if split == "train" and getattr(config, "foreground_colour_correlation", 0.0) > 0:
        c1, c2 = _class_foreground_colours(config, chunk, f["label"], c1, c2)
    # Composite only the foreground pixels (memory-bound: skip full-size float passes).
    image = background
    which = np.nonzero(mask)[0]
    g = pattern[mask][:, None]
    image[mask] = np.floor(c2[which] + g * (c1 - c2)[which] + 0.5).astype(np.uint8)
    dense = {}
    if getattr(config, "dense", False):
        # Imported here: builtin_dense imports this module for the shapes.
        from ssl_jax.data import builtin_dense

        dense = builtin_dense.dense_targets(f["label"], mask, placement, image)
        image = dense.pop("image")
    if getattr(config, "grey", False):
        # ITU-R 601 luma (what PIL's "L" mode and tf.image.rgb_to_grayscale use).
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        image = np.repeat(np.floor(luma + 0.5).clip(0, 255).astype(np.uint8)[..., None], 3, -1)
    return dict(
        image=image,
        mask=mask[..., None].astype(np.uint8),
        bbox=mask_to_bbox(mask),
        label=f["label"].astype(np.int64),
        texture_label=f["texture"].astype(np.int64),
        texture_class=_TEXTURE_CLASS_IDX[f["texture"]].astype(np.int64),
        background=f["kind"].astype(np.int64),
        **dense,
    )


def encode_png(image: np.ndarray) -> bytes:
    """Minimal PNG (8-bit grey or RGB, no row filter, zlib level 1) of [H, W, 1|3] uint8.

    TFDS's own encoder runs a TF graph per image (~1 ms at 64 px) and dominated the
    build; this one costs one fast zlib call and compresses these textured images
    nearly as well (see docs/BUILTIN_DATASET.md).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"encode_png wants [H, W, 1|3] uint8, got {image.shape} {image.dtype}")
    h, w, c = image.shape
    rows = np.zeros((h, 1 + w * c), np.uint8)  # leading 0 per row = filter type None
    rows[:, 1:] = image.reshape(h, w * c)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data)))

    colour_type = 0 if c == 1 else 2
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b""))


def encoded_chunk(config: Recipe, split: str, chunk: int) -> dict:
    """generate_chunk with every uint8 map (image, mask, dense maps) PNG-encoded (runs in
    the worker processes)."""
    arrays = generate_chunk(config, split, chunk)
    for key, value in arrays.items():
        if value.dtype == np.uint8 and value.ndim == 4:
            arrays[key] = [encode_png(x) for x in value]
    return arrays
