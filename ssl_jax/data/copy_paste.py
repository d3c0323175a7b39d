"""Copy-paste background augmentation (003, Zhao et al. "Distilling localization"; DiLo).

With probability `prob`, independently per view, the salient foreground of an image is pasted
onto a new background, before that view's crop/flip (and the device colour ops):

    view = m * image + (1 - m) * background

m: the example's saliency mask from a pluggable `MaskProvider` (the built-in dataset's true
masks, precomputed RBD masks from `ssl_jax.data.saliency`, any array or numpy function),
binarised at 0.5, then with `blend`: 'none' (hard edge), 'gaussian' (mask blurred with sigma
`blur_sigma` x side) or 'mix' (gaussian with probability `blur_prob`, DiLo's 0.5).
background (uniform over `backgrounds`): 'grey' (one level ~ U(0, 1) for all channels),
'texture' (a two-colour pattern of the built-in dataset's texture families) or 'image' (the
least salient half-size crop of ANOTHER training image, resized to full size: a
"saliency-free" crop).

It runs host side in tf.data (`pipeline.train_iterator`), not on device: the mask and the other
image are per-example host data, and it must come before the random-resized crop so that the
crop sees a full-frame new background, as in DiLo (paste, then the usual augmentations).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import tensorflow as tf

from ssl_jax.data import augment, builtin_textures

MASK_SOURCES = ("ground_truth", "rbd", "file")
BACKGROUNDS = ("grey", "texture", "image")
BLENDS = ("none", "gaussian", "mix")
# DiLo blurs with a radius-5 Gaussian at 224 px; as a fraction of the side it carries to 32 px.
DEFAULT_BLUR_SIGMA = 5 / 224


@dataclasses.dataclass(frozen=True)
class CopyPasteConfig:
    """prob: chance per view (0 = off; DiLo's default 0.3). See the module doc for the rest."""
    prob: float = 0.0
    backgrounds: tuple[str, ...] = BACKGROUNDS
    blend: str = "mix"
    blur_prob: float = 0.5
    blur_sigma: float = DEFAULT_BLUR_SIGMA
    num_textures: int = 256
    texture_seed: int = 0

    def __post_init__(self):
        if isinstance(self.backgrounds, str):
            object.__setattr__(self, "backgrounds",
                               tuple(b.strip() for b in self.backgrounds.split(",") if b.strip()))
        bad = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad or not self.backgrounds:
            raise ValueError(f"copy_paste backgrounds={self.backgrounds!r}; valid: a non-empty "
                             f"subset of {BACKGROUNDS}")
        if self.blend not in BLENDS:
            raise ValueError(f"copy_paste blend={self.blend!r}; valid choices: {BLENDS}")
        for name in ("prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"copy_paste {name}={getattr(self, name)} must be in [0, 1]")
        if self.blur_sigma <= 0:
            raise ValueError(f"copy_paste blur_sigma={self.blur_sigma} must be > 0")
        if self.num_textures < 1:
            raise ValueError(f"copy_paste num_textures={self.num_textures} must be >= 1")


# ---------------------------------------------------------------------------------------------
# Mask providers
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MaskProvider:
    """fn(example) -> float32 [H, W, 1] in [0, 1] (1 = foreground), run inside tf.data.
    `example` has the decoded "image" (uint8 [H, W, 3]) and the raw keys in `needs`:
    "index" (`pipeline.example_index`) and/or "mask" (the dataset's own mask feature)."""
    fn: Callable[[dict], tf.Tensor]
    needs: tuple[str, ...] = ()

    def __call__(self, example: dict) -> tf.Tensor:
        return self.fn(example)


def ground_truth_masks() -> MaskProvider:
    """The dataset's own `mask` feature (the built-in dataset stores one per example)."""
    return MaskProvider(lambda ex: tf.cast(ex["mask"] > 0, tf.float32), needs=("mask",))


def array_masks(masks: np.ndarray) -> MaskProvider:
    """Row `example_index` of masks [N, h, w] (uint8 0..255, bool, or float in [0, 1]),
    resized to the image when the sizes differ (e.g. RBD masks from `saliency`)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    # Held in memory (uint8 stays uint8: 4x smaller than float); fine for the built-in dataset,
    # ImageNet-sized masks would need a per-example store instead.
    scale = 255.0 if masks.dtype == np.uint8 else 1.0
    table = tf.constant(masks if masks.dtype == np.uint8 else masks.astype(np.float32))

    def fn(ex):
        m = tf.cast(tf.gather(table, ex["index"]), tf.float32)[..., None] / scale
        size = tf.shape(ex["image"])[:2]
        return tf.cond(tf.reduce_all(tf.shape(m)[:2] == size), lambda: m,
                       lambda: tf.image.resize(m, size, method="bilinear"))

    return MaskProvider(fn, needs=("index",))


def function_masks(fn: Callable[[np.ndarray], np.ndarray]) -> MaskProvider:
    """Any numpy function image uint8 [H, W, 3] -> saliency [H, W] in [0, 1], called per
    example (e.g. `saliency.rbd` online: slow, prefer precomputed `array_masks`)."""
    def run(image):
        return np.asarray(fn(image), np.float32)[..., None]

    def provider(ex):
        m = tf.numpy_function(run, [ex["image"]], tf.float32, stateful=False)
        return tf.ensure_shape(m, ex["image"].shape[:2] + (1,))

    return MaskProvider(provider)


# ---------------------------------------------------------------------------------------------
# Pieces (pure TF; the tests call them directly). Images are float32 [H, W, 3] in [0, 1].
# ---------------------------------------------------------------------------------------------

def paste(image: tf.Tensor, mask: tf.Tensor, background: tf.Tensor) -> tf.Tensor:
    """mask * image + (1 - mask) * background; mask [H, W, 1] in [0, 1]."""
    return mask * image + (1.0 - mask) * background


def gaussian_blur_mask(mask: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of [H, W, 1] with sigma in pixels, radius ceil(3 sigma),
    symmetric padding (a mask touching the border stays 1 there)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    # The blur runs in TensorFlow (inside tf.data); its taps, of a static sigma, are the shared
    # kernel computed with numpy when the graph is built.
    k = tf.constant(augment.gaussian_kernel1d(sigma, radius, xp=np))
    out = tf.pad(mask[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    out = tf.nn.conv2d(out, tf.reshape(k, [-1, 1, 1, 1]), 1, "VALID")
    out = tf.nn.conv2d(out, tf.reshape(k, [1, -1, 1, 1]), 1, "VALID")
    return tf.clip_by_value(out[0], 0.0, 1.0)


def blend_mask(mask: tf.Tensor, blur: tf.Tensor, sigma: float) -> tf.Tensor:
    """The mask actually used: binarised at 0.5, blurred where `blur` (bool scalar) is set."""
    hard = tf.cast(mask >= 0.5, tf.float32)
    return tf.cond(blur, lambda: gaussian_blur_mask(hard, sigma), lambda: hard)


def least_salient_crop(image: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """A "saliency-free" background from another image: of the 9 half-side boxes at offsets
    (0, 1/4, 1/2) x side on both axes, the one with the least mask mass, resized (bilinear)
    to the full image size. image: float [H, W, 3]; mask: [H, W, 1]."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    bh, bw = h // 2, w // 2
    corners = [(i * h // 4, j * w // 4) for i in range(3) for j in range(3)]
    mass = tf.stack([tf.reduce_sum(mask[y:y + bh, x:x + bw]) for y, x in corners])
    best = tf.argmin(mass, output_type=tf.int32)
    y, x = (best // 3) * h // 4, (best % 3) * w // 4
    box = tf.slice(image, tf.stack([y, x, 0]), tf.stack([bh, bw, 3]))
    return tf.image.resize(box, tf.stack([h, w]), method="bilinear")


def texture_bank(cfg: CopyPasteConfig, resolution: int) -> np.ndarray:
    """cfg.num_textures two-colour texture images, uint8 [T, R, R, 3], drawn from every family
    of the built-in dataset (procedural and natural), a pure function of cfg.texture_seed."""
    rng = np.random.default_rng(cfg.texture_seed)
    family = rng.integers(0, len(builtin_textures.TEXTURE_NAMES), cfg.num_textures)
    pattern = builtin_textures.render_textures(family, resolution, rng)[..., None]
    colours = rng.uniform(0, 255, (cfg.num_textures, 2, 3)).astype(np.float32)
    out = pattern * colours[:, None, None, 0] + (1 - pattern) * colours[:, None, None, 1]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw_background(kind: tf.Tensor, seed: tf.Tensor, image: tf.Tensor, other: tf.Tensor,
                    other_mask: tf.Tensor, textures: tf.Tensor,
                    backgrounds: tuple[str, ...]) -> tf.Tensor:
    """Background float [H, W, 3] of kind `backgrounds[kind]`; textures: uint8 [T, r, r, 3]."""
    size = tf.shape(image)[:2]
    grey_seed, tex_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def grey():
        return tf.ones_like(image) * tf.random.stateless_uniform([], grey_seed)

    def texture():
        t = tf.random.stateless_uniform([], tex_seed, 0, tf.shape(textures)[0], tf.int32)
        tex = tf.cast(tf.gather(textures, t), tf.float32) / 255.0
        return tf.image.resize(tex, size, method="bilinear")

    def other_image():
        return least_salient_crop(other, other_mask)

    makers = {"grey": grey, "texture": texture, "image": other_image}
    return tf.switch_case(kind, [makers[b] for b in backgrounds])


def copy_paste_view(image: tf.Tensor, mask: tf.Tensor, other: tf.Tensor, other_mask: tf.Tensor,
                    seed: tf.Tensor, cfg: CopyPasteConfig, textures: tf.Tensor,
                    side: int) -> tf.Tensor:
    """One view: with probability cfg.prob, `image` (uint8 [H, W, 3]) pasted onto a new
    background with its mask [H, W, 1]; else `image` unchanged. `other`/`other_mask`: another
    example (for 'image' backgrounds). `side`: the nominal image side in pixels, which sets the
    blur sigma (static: it fixes the kernel size). Returns uint8 [H, W, 3]."""
    apply_seed, kind_seed, blur_seed, bg_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    apply = tf.random.stateless_uniform([], apply_seed) < cfg.prob

    def pasted():
        x = tf.cast(image, tf.float32) / 255.0
        kind = tf.random.stateless_uniform([], kind_seed, 0, len(cfg.backgrounds), tf.int32)
        bg = draw_background(kind, bg_seed, x, tf.cast(other, tf.float32) / 255.0, other_mask,
                             textures, cfg.backgrounds)
        blur_p = {"none": 0.0, "gaussian": 1.0, "mix": cfg.blur_prob}[cfg.blend]
        blur = tf.random.stateless_uniform([], blur_seed) < blur_p
        m = blend_mask(mask, blur, cfg.blur_sigma * side)
        out = paste(x, m, bg)
        return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 1.0) * 255.0), tf.uint8)

    return tf.cond(apply, pasted, lambda: tf.convert_to_tensor(image, tf.uint8))


# ---------------------------------------------------------------------------------------------
# From a config (the trainer's `augment.copy_paste`)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class CopyPaste:
    """What `pipeline.train_iterator` needs: the config, the masks and the texture bank."""
    cfg: CopyPasteConfig
    masks: MaskProvider
    textures: np.ndarray  # uint8 [T, r, r, 3]


def rbd_cache_path(builder, split: str, cache_dir: str = "") -> str:
    """Default home of a split's RBD masks: next to the prepared TFDS data (versioned with
    it), or under `cache_dir`."""
    from ssl_jax.data import saliency
    return saliency.mask_cache_path(cache_dir or builder.data_dir, builder.info.full_name, split)


def from_config(c, builder, split: str, progress: bool = True) -> CopyPaste | None:
    """`augment.copy_paste` ConfigDict -> CopyPaste, or None when c.prob == 0 (off).
    masks: 'ground_truth' (the dataset's `mask` feature), 'rbd' (computed once for `split`
    and cached at `mask_path` or `rbd_cache_path`), 'file' (an .npy [N, H, W] at `mask_path`,
    rows keyed by `pipeline.example_index`)."""
    if not c.prob:
        return None
    cfg = CopyPasteConfig(prob=float(c.prob), backgrounds=c.backgrounds, blend=c.blend,
                          blur_prob=float(c.blur_prob), blur_sigma=float(c.blur_sigma))
    if c.masks == "ground_truth":
        if "mask" not in builder.info.features:
            raise ValueError(f"copy_paste masks='ground_truth' but {builder.info.full_name} has "
                             "no 'mask' feature; use masks='rbd' or 'file'")
        masks = ground_truth_masks()
    elif c.masks == "rbd":
        from ssl_jax.data import saliency
        path = c.mask_path or rbd_cache_path(builder, split)
        masks = array_masks(saliency.compute_split_masks(builder, split, path, progress))
    elif c.masks == "file":
        if not c.mask_path:
            raise ValueError("copy_paste masks='file' needs mask_path=<.npy of [N, H, W]>")
        masks = array_masks(np.load(c.mask_path))
    else:
        raise ValueError(f"copy_paste masks={c.masks!r}; valid choices: {MASK_SOURCES}")
    shape = builder.info.features["image"].shape
    textures = texture_bank(cfg, shape[0] or 64) if "texture" in cfg.backgrounds else \
        np.zeros((1, 1, 1, 3), np.uint8)
    return CopyPaste(cfg, masks, textures)
