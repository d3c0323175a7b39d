"""Dense targets of the built-in dataset's `dense` configs (numpy only, no TensorFlow).

A task bank in the spirit of Taskonomy needs, for every image, targets of several kinds:
semantic (segmentation), 2D (occlusion and texture edges, keypoints) and 2.5D/3D (a
relief's height, depth, surface normals, curvature and shading). They are computed here
from what builtin_textures.generate_chunk already has for an example (its class, mask,
placement and unshaded image), so they share the image's geometry exactly and draw no
random numbers: a config without `dense` keeps its bytes, and one with it is as
deterministic as the images.

The relief: each shape is raised from the ground plane as a plinth with a rounded bevel
(a height field inside the mask, 0 outside), and the image is shaded by it under a fixed
light (Lambertian, plus ambient light), so the 3D cues are visible in the pixels.

Coordinates as in builtin_textures: pixel (i, j) has its centre at (x, y) = (j + 0.5,
i + 0.5), x to the right, y down; z (height) points up, towards the camera.
"""
from __future__ import annotations

import functools

import numpy as np

# Keypoints: 0 is the shape's centre, 1..8 the shape's extreme points along 8 rays from
# the centre, in the shape's own frame: up, up-right, right, ..., clockwise by 45 degrees
# (before the shape is rotated, so each keypoint turns with its shape).
NUM_KEYPOINTS = 9
# Unit vector towards the light: from the upper left, 45 degrees above the plane.
LIGHT = np.array([-1.0, -1.0, np.sqrt(2.0)], np.float32) / 2.0
# Fraction of the light that is ambient (reaches every pixel whatever its normal), so
# that slopes facing away from the light stay dark but not black.
AMBIENT = 0.35
# The relief: a plinth of PLINTH x the peak height with a bevel on top, rising over about
# two BEVEL_SIGMA shape radii from the outline; the peak is RELIEF_HEIGHT shape radii.
RELIEF_HEIGHT = 0.35
PLINTH = 0.25
BEVEL_SIGMA = 0.2
# The camera for `depth`: a point this many image sides above the image centre.
CAMERA_HEIGHT = 1.5
# Two 4-neighbours on the same side of the outline are a texture edge when some colour
# channel of the unshaded image differs by more than this (uint8 levels): a texture's
# two colours always do (88..168 apart at full contrast), smooth gradients never do.
TEXTURE_EDGE_STEP = 32


@functools.lru_cache(maxsize=None)
def keypoint_table() -> tuple[np.ndarray, np.ndarray]:
    """Each class's keypoints in its unit frame: (u, v) [K, 9, 2] float32, visible [K, 9].

    A ray's keypoint is the farthest point of the shape along it (sampled every 0.001 of
    the unit radius, so it lies inside the shape); it is invisible (and (0, 0)) where the
    ray misses the shape, e.g. the crescent's hollow side. The centre is invisible where
    it is not on the shape (ring, crescent).
    """
    from ssl_jax.data.builtin_textures import SHAPE_NAMES, _shape_inside

    t = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    angles = np.arange(8) * np.pi / 4
    # Clockwise on screen from up (-v), since y (and v) point down.
    rays = np.stack([np.sin(angles), -np.cos(angles)], 1).astype(np.float32)
    points = np.zeros((len(SHAPE_NAMES), NUM_KEYPOINTS, 2), np.float32)
    visible = np.zeros((len(SHAPE_NAMES), NUM_KEYPOINTS), bool)
    for k, name in enumerate(SHAPE_NAMES):
        zero = np.zeros(1, np.float32)
        visible[k, 0] = _shape_inside(name, zero, zero)[0]
        for d, (du, dv) in enumerate(rays):
            inside = np.flatnonzero(_shape_inside(name, t * du, t * dv))
            if inside.size:
                points[k, d + 1] = t[inside[-1]] * du, t[inside[-1]] * dv
                visible[k, d + 1] = True
    return points, visible


def place_keypoints(label: np.ndarray, placement: dict[str, np.ndarray],
                    resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of each example in normalised image coordinates (x / R, y / R).

    Returns [n, 9, 2] float32 (invisible ones (0, 0)) and visible [n, 9] bool.
    """
    table, table_visible = keypoint_table()
    u, v = table[label, :, 0], table[label, :, 1]  # [n, 9]
    cos = np.cos(placement["angle"])[:, None]
    sin = np.sin(placement["angle"])[:, None]
    half = placement["half"][:, None]
    # The inverse of the frame map in builtin_textures.place_shapes.
    x = placement["cx"][:, None] + half * (cos * u - sin * v)
    y = placement["cy"][:, None] + half * (sin * u + cos * v)
    visible = table_visible[label]
    points = np.stack([x, y], -1) / resolution * visible[..., None]
    return points.astype(np.float32), visible


def occlusion_edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (beyond the image counts as
    outside): the inner outline of the shape. mask [n, R, R] bool -> same shape bool."""
    m = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    interior = m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]
    return mask & ~interior


def texture_edges(albedo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Both pixels of every pair of 4-neighbours on the same side of the outline whose
    colours differ by more than TEXTURE_EDGE_STEP in some channel: the texture's own
    edges inside the shape and the background's outside, never the outline itself.

    albedo: [n, R, R, 3] uint8 (the unshaded image); mask [n, R, R] bool.
    """
    a = albedo.astype(np.int16)
    out = np.zeros(mask.shape, bool)
    for axis in (1, 2):
        step = np.abs(np.diff(a, axis=axis)).max(-1) > TEXTURE_EDGE_STEP
        same_side = np.diff(mask.astype(np.int8), axis=axis) == 0
        pair = step & same_side
        first = [slice(None)] * 3
        first[axis] = slice(None, -1)
        second = [slice(None)] * 3
        second[axis] = slice(1, None)
        out[tuple(first)] |= pair
        out[tuple(second)] |= pair
    return out


def relief_height(mask: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Height field of each shape in pixels, [n, R, R] float32 (0 outside the mask).

    A plinth plus a bevel: the mask blurred with a Gaussian of BEVEL_SIGMA shape radii is
    0.5 on the outline and 1 deep inside, so clip(2 blur - 1, 0, 1) rises from the
    outline inwards; a smoothstep rounds its foot and top. Thin parts (a ring, a cross's
    arms) never reach the peak, like a pillow. Sizes scale with the shape, so the relief
    looks the same at every resolution.
    """
    r = mask.shape[1]
    sigma = BEVEL_SIGMA * half.astype(np.float32)
    k = np.arange(r, dtype=np.float32)
    g = np.exp(-0.5 * ((k[:, None] - k[None, :])[None] / sigma[:, None, None]) ** 2)
    # Normalised as on an unbounded grid: beyond the image there is no shape (zero padding).
    t = np.arange(-r, r + 1, dtype=np.float32)
    g /= np.exp(-0.5 * (t[None] / sigma[:, None]) ** 2).sum(1)[:, None, None]
    blur = g @ mask.astype(np.float32) @ g  # g is symmetric: g M g^T, batched in BLAS
    bevel = np.clip(2 * blur - 1, 0, 1)
    bevel = bevel * bevel * (3 - 2 * bevel)
    peak = RELIEF_HEIGHT * half.astype(np.float32)[:, None, None]
    return np.where(mask, peak * (PLINTH + (1 - PLINTH) * bevel), 0).astype(np.float32)


def relief_targets(height: np.ndarray) -> dict[str, np.ndarray]:
    """Normals, mean curvature and Lambertian shading of height fields [n, R, R] (pixels).

    normals [n, R, R, 3]: (-dh/dx, -dh/dy, 1) normalised, derivatives by np.gradient
    (central differences, one-sided at the image border). curvature [n, R, R]: mean
    curvature of the surface z = h(x, y) in 1/pixels, negative on domes and ridges,
    positive in hollows. shading [n, R, R]: max(0, n . LIGHT). All float32.
    """
    h = height.astype(np.float32)
    hy, hx = np.gradient(h, axis=(1, 2))
    hyy, hyx = np.gradient(hy, axis=(1, 2))
    hxx = np.gradient(hx, axis=2)
    normals = np.stack([-hx, -hy, np.ones_like(h)], -1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    grad2 = 1 + hx * hx + hy * hy
    curvature = ((1 + hx * hx) * hyy - 2 * hx * hy * hyx + (1 + hy * hy) * hxx) / (
        2 * grad2 ** 1.5)
    shading = np.maximum(0, normals @ LIGHT)
    return dict(normals=normals, curvature=curvature, shading=shading)


def dense_targets(label: np.ndarray, mask: np.ndarray, placement: dict[str, np.ndarray],
                  albedo: np.ndarray) -> dict[str, np.ndarray]:
    """All dense targets of a batch, and `image`: the albedo shaded by the relief.

    label [n] int, mask [n, R, R] bool, placement from builtin_textures.place_shapes,
    albedo [n, R, R, 3] uint8 (the composited image before shading). Float maps are
    stored as float16 in image sides (height, depth) or 1/image sides (curvature); every
    other target is computed from the float16 height, so it agrees with the stored one.
    """
    n, r = mask.shape[:2]
    height = (relief_height(mask, placement["half"]) / r).astype(np.float16)
    relief = relief_targets(height.astype(np.float32) * r)
    # Distance from the camera point (R/2, R/2, CAMERA_HEIGHT R) to the surface point.
    c = (np.arange(r, dtype=np.float32) + 0.5) / r - 0.5
    depth = np.sqrt(c[None, :, None] ** 2 + c[None, None, :] ** 2
                    + (CAMERA_HEIGHT - height.astype(np.float32)) ** 2)
    # Ambient plus diffuse light, relative to the flat ground's, so that the ground keeps
    # its colour (the ratio is exactly 1 there) and the image stays comparable.
    light = AMBIENT + (1 - AMBIENT) * relief["shading"]
    flat = AMBIENT + (1 - AMBIENT) * LIGHT[2]
    shaded = albedo.astype(np.float32) * (light / flat)[..., None]
    keypoints, visible = place_keypoints(label, placement, r)
    as_map = lambda x: x[..., None]  # noqa: E731  [n, R, R] -> [n, R, R, 1]
    return dict(
        image=np.clip(np.floor(shaded + 0.5), 0, 255).astype(np.uint8),
        segmentation=as_map(np.where(mask, label[:, None, None] + 1, 0).astype(np.uint8)),
        occlusion_edges=as_map(occlusion_edges(mask).astype(np.uint8)),
        texture_edges=as_map(texture_edges(albedo, mask).astype(np.uint8)),
        keypoints=keypoints,
        keypoint_visible=visible,
        height=as_map(height),
        depth=as_map(depth.astype(np.float16)),
        normals=relief["normals"].astype(np.float16),
        curvature=as_map((relief["curvature"] * r).astype(np.float16)),
        reshading=as_map(np.floor(255 * relief["shading"] + 0.5).astype(np.uint8)),
    )
