"""On-device image augmentations in JAX (colour jitter, grayscale, blur, solarize) and presets.

Geometry (random-resized crop, flip, eval centre crop) runs on the host in tf.data
(`ssl_jax.data.crop`); everything photometric runs here, jit-compiled on the global sharded
batch, with **one PRNG key per image** (BYOL-style): `augment_views` splits the batch key into N
keys and vmaps a per-image function, so every image draws its own order, factors, sigma and
coin flips. Probabilities are applied with `jnp.where` on per-image Bernoulli draws (no Python
branching on data); a branch is skipped statically only when its probability is exactly 0.

Conventions
- Images are float32 NHWC (per-image functions: HWC) with values in [0, 1]; `augment_views`
  also accepts uint8 [0, 255] (what the host pipeline ships) and converts it.
- Colour jitter follows the google-research/simclr `tf2/data_util.py` `color_jitter_rand`
  semantics, i.e. the `tf.image` ops, with brightness `impl='simclrv2'`:
    brightness: x * f, f ~ U(max(0, 1 - b), 1 + b)     (multiplicative, = torchvision)
                or x + d, d ~ U(-b, b) with `brightness_impl='additive'` (SimCLR v1 /
                deepmind BYOL `_random_brightness`; used by the BYOL preset for fidelity)
    contrast:   (x - mean_c) * f + mean_c, per-channel spatial mean (tf.image.adjust_contrast;
                torchvision blends with the grayscale mean instead), f ~ U(max(0, 1 - c), 1 + c)
    saturation: HSV s <- clip(s * f, 0, 1), f ~ U(max(0, 1 - s), 1 + s)
                (tf.image.adjust_saturation; torchvision blends with grayscale instead)
    hue:        HSV h <- (h + d) mod 1, d ~ U(-h, h)   (tf.image.adjust_hue = torchvision)
  applied in a random order per image, clipping to [0, 1] after each op as SimCLR and BYOL do.
  We keep the TF semantics because SimCLR and BYOL (the two recipes with exact parameters
  here) were tuned with them; MoCo v2 (torchvision) differs only in the contrast/saturation
  blends above, which we document rather than duplicate.
- Grayscale: ITU-R 601 luma 0.2989 R + 0.5870 G + 0.1140 B (tf.image.rgb_to_grayscale),
  replicated to 3 channels.
- Gaussian blur: separable, 2 * (kernel_size // 2) + 1 taps (SimCLR/BYOL round an even size
  up), sigma ~ U(sigma_range). Padding `constant` (zeros) reproduces the TF 'SAME' depthwise
  conv of SimCLR and BYOL exactly (it darkens a border of ~2 sigma px); `reflect` (mirror
  without repeating the edge, = scipy 'mirror') and `edge` (repeat the edge pixel, = scipy
  'nearest', closest to PIL's GaussianBlur used by MoCo v2) avoid that artifact.
- Solarize: x if x < threshold else 1 - x.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import colour

Array = jax.Array

_BRIGHTNESS_IMPLS = ("multiplicative", "additive")
_BLUR_PADDINGS = ("constant", "reflect", "edge")
_CROPS = ("random_resized", "center")
# ITU-R BT.601 luma weights, exactly as tf.image.rgb_to_grayscale.
_LUMA = (0.2989, 0.5870, 0.1140)


# ----------------------------------------------------------------------------------------------
# Deterministic per-image ops (HWC float in [0, 1]; no clipping unless stated)
# ----------------------------------------------------------------------------------------------

def to_grayscale(img: Array) -> Array:
    """[..., 3] RGB -> [..., 3] luma replicated to 3 channels (tf.image.rgb_to_grayscale)."""
    luma = img[..., 0] * _LUMA[0] + img[..., 1] * _LUMA[1] + img[..., 2] * _LUMA[2]
    return jnp.repeat(luma[..., None], 3, axis=-1)


def _wrap(x: Array, period: float) -> Array:
    return colour.wrap(x, period, jnp)


def rgb_to_hsv(img: Array) -> Array:
    """[..., 3] RGB in [0, 1] -> [..., 3] HSV, all channels in [0, 1] (h = 0 for grays)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    # Elementwise max/min of the 3 planes: a size-3 minor-axis reduce is slow on XLA:CPU.
    value = jnp.maximum(jnp.maximum(r, g), b)
    chroma = value - jnp.minimum(jnp.minimum(r, g), b)
    # Safe denominators: the masked branches would otherwise produce inf/nan (and nan grads).
    safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
    safe_value = jnp.where(value > 0, value, 1.0)
    sat = jnp.where(value > 0, chroma / safe_value, 0.0)
    hue6 = jnp.where(
        value == r, _wrap((g - b) / safe_chroma, 6.0),
        jnp.where(value == g, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0))
    hue = jnp.where(chroma > 0, hue6 / 6.0, 0.0)
    return jnp.stack([hue, sat, value], axis=-1)


def hsv_to_rgb(hsv: Array) -> Array:
    """[..., 3] HSV in [0, 1] (hue taken mod 1) -> [..., 3] RGB."""
    return colour.hsv_to_rgb(hsv, jnp)


def adjust_brightness(img: Array, factor: Array) -> Array:
    """Multiplicative brightness: img * factor (SimCLR v2, torchvision)."""
    return img * factor


def adjust_contrast(img: Array, factor: Array) -> Array:
    """HWC: (img - mean) * factor + mean, mean per channel over H, W (tf.image.adjust_contrast)."""
    mean = jnp.mean(img, axis=(-3, -2), keepdims=True)
    return (img - mean) * factor + mean


def adjust_saturation_hue(img: Array, sat_factor: Array, hue_delta: Array) -> Array:
    """One HSV round trip: s <- clip(s * sat_factor, 0, 1), h <- (h + hue_delta) mod 1.

    With hue_delta = 0 this is tf.image.adjust_saturation; with sat_factor = 1 it is
    tf.image.adjust_hue.
    """
    hsv = rgb_to_hsv(img)
    hue = _wrap(hsv[..., 0] + hue_delta, 1.0)
    sat = jnp.clip(hsv[..., 1] * sat_factor, 0.0, 1.0)
    return hsv_to_rgb(jnp.stack([hue, sat, hsv[..., 2]], axis=-1))


def adjust_saturation(img: Array, factor: Array) -> Array:
    """HSV saturation scaling, clipped to [0, 1] (tf.image.adjust_saturation)."""
    return adjust_saturation_hue(img, factor, 0.0)


def adjust_hue(img: Array, delta: Array) -> Array:
    """HSV hue rotation by `delta` turns (in [-0.5, 0.5]) (tf.image.adjust_hue)."""
    return adjust_saturation_hue(img, 1.0, delta)


def solarize(img: Array, threshold: float = 0.5) -> Array:
    """Inverts pixels at or above `threshold`: x if x < threshold else 1 - x."""
    return jnp.where(img < threshold, img, 1.0 - img)


def gaussian_kernel1d(sigma: Any, radius: int, xp: Any = jnp, dtype: Any = np.float32) -> Any:
    """Normalised Gaussian taps [2 * radius + 1] at x = -radius..radius, in `dtype`, for a
    scalar sigma: traced (xp=jnp, this module's blur) or static (xp=np: the tf.data mask blur
    of copy_paste.py, the scipy-matching filter of evaluation/distortions.py). The one
    definition of the kernel in the package; each caller keeps its own radius rule.

    exp(-0.5 (x / sigma)^2) is torchvision's arithmetic (the same float32 taps); in float64 it
    differs from scipy.ndimage's taps by < 3e-15 relative, nothing once cast to float32."""
    x = xp.arange(-radius, radius + 1, dtype=dtype)
    taps = xp.exp(-0.5 * xp.square(x / sigma))
    return taps / xp.sum(taps)


def blur_with_sigma(img: Array, sigma: Array, kernel_size: int,
                    padding: str = "constant") -> Array:
    """Separable Gaussian blur of an HWC image with a fixed sigma (see module doc for padding).

    `kernel_size` is static; the filter has 2 * (kernel_size // 2) + 1 taps, so kernel_size <= 1
    is the identity.
    """
    if padding not in _BLUR_PADDINGS:
        raise ValueError(f"padding={padding!r}; valid choices: {_BLUR_PADDINGS}")
    radius = kernel_size // 2
    if radius == 0:
        return img
    taps = gaussian_kernel1d(sigma, radius)
    height, width = img.shape[-3], img.shape[-2]
    if radius >= min(height, width) and padding == "reflect":
        raise ValueError(
            f"kernel_size={kernel_size} too large for reflect padding of a {height}x{width} image")
    # A sum of shifted slices is a depthwise conv that vmaps over per-image sigmas without
    # turning into a grouped conv with a batched kernel; XLA fuses it into one loop.
    pad = [(0, 0)] * img.ndim
    pad_h = list(pad)
    pad_h[-3] = (radius, radius)
    padded = jnp.pad(img, pad_h, mode=padding)
    out = sum(taps[k] * padded[..., k:k + height, :, :] for k in range(2 * radius + 1))
    pad_w = list(pad)
    pad_w[-2] = (radius, radius)
    padded = jnp.pad(out, pad_w, mode=padding)
    return sum(taps[k] * padded[..., :, k:k + width, :] for k in range(2 * radius + 1))


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """Kernel size ~ `fraction` of the image side, as SimCLR (`height // 10`) and BYOL.

    224 -> 22 (23 taps), 96 -> 9 (9 taps), 32 -> 3 (3 taps).
    """
    return int(side * fraction)


# ----------------------------------------------------------------------------------------------
# Random per-image ops: one key per image
# ----------------------------------------------------------------------------------------------

def gaussian_blur(key: Array, img: Array, sigma_range: Sequence[float] = (0.1, 2.0),
                  kernel_size: int = 23, padding: str = "constant") -> Array:
    """Blurs one HWC image with sigma ~ U(sigma_range) (SimCLR / BYOL / MoCo v2 range)."""
    sigma = jax.random.uniform(key, (), minval=sigma_range[0], maxval=sigma_range[1])
    return blur_with_sigma(img, sigma, kernel_size, padding)


def jitter_with_params(img: Array, order: Array, brightness: Array, contrast: Array,
                       saturation: Array, hue: Array,
                       brightness_impl: str = "multiplicative",
                       enabled: tuple[bool, bool, bool, bool] = (True, True, True, True)
                       ) -> Array:
    """Deterministic colour jitter of one HWC image with given parameters.

    Args:
      order: int [4], a permutation of op ids 0=brightness, 1=contrast, 2=saturation, 3=hue.
      brightness: factor (multiplicative) or delta (additive), see `brightness_impl`.
      contrast, saturation: factors; hue: delta in turns.
      enabled: static per-op switches (a disabled op is skipped, keeping its slot in `order`).
    Ops run in `order`, clipping to [0, 1] after each. Under vmap the op at each position is
    a per-image `jnp.where`, so all candidates are computed; saturation and hue share one HSV
    round trip per position to keep that cheap.
    """
    if brightness_impl not in _BRIGHTNESS_IMPLS:
        raise ValueError(
            f"brightness_impl={brightness_impl!r}; valid choices: {_BRIGHTNESS_IMPLS}")
    def step(_, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        out, ops_left = carry
        op = ops_left[0]
        candidate = out
        if enabled[0]:
            bright = (adjust_brightness(out, brightness) if brightness_impl == "multiplicative"
                      else out + brightness)
            candidate = jnp.where(op == 0, bright, candidate)
        if enabled[1]:
            candidate = jnp.where(op == 1, adjust_contrast(out, contrast), candidate)
        if enabled[2] or enabled[3]:
            hsv_out = adjust_saturation_hue(out, jnp.where(op == 2, saturation, 1.0),
                                            jnp.where(op == 3, hue, 0.0))
            use_hsv = ((op == 2) & enabled[2]) | ((op == 3) & enabled[3])
            candidate = jnp.where(use_hsv, hsv_out, candidate)
        return jnp.clip(candidate, 0.0, 1.0), jnp.roll(ops_left, -1)

    # A loop (not 4 unrolled copies) keeps the XLA graph, hence compile time, ~4x smaller. The
    # op of each position is the first of the rotating `ops_left`, a static index: indexing
    # `order` by the loop counter put a dynamic slice inside XLA:CPU's fused loop over the
    # pixels, which then ran ~10x slower (not vectorised).
    out, _ = jax.lax.fori_loop(0, 4, step, (img, order))
    return out


def color_jitter(key: Array, img: Array, brightness: float, contrast: float,
                 saturation: float, hue: float, random_order: bool = True,
                 brightness_impl: str = "multiplicative") -> Array:
    """SimCLR `color_jitter_rand` on one HWC image in [0, 1] (factor ranges: module doc).

    A strength of 0 disables that op. The order of the four ops is a per-image random
    permutation when `random_order` (else brightness, contrast, saturation, hue); the result
    is clipped to [0, 1] after every op (`jitter_with_params`).
    """
    if brightness_impl not in _BRIGHTNESS_IMPLS:
        raise ValueError(
            f"brightness_impl={brightness_impl!r}; valid choices: {_BRIGHTNESS_IMPLS}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue={hue} must be in [0, 0.5]")
    if min(brightness, contrast, saturation) < 0:
        raise ValueError(
            f"jitter strengths must be >= 0, got {(brightness, contrast, saturation, hue)}")
    k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

    def uniform_factor(k: Array, strength: float) -> Array:
        # max(0, .) as torchvision: a negative factor would invert the image.
        return jax.random.uniform(k, (), minval=max(0.0, 1.0 - strength),
                                  maxval=1.0 + strength)

    if brightness_impl == "multiplicative":
        b_param = uniform_factor(k_b, brightness)
    else:
        b_param = jax.random.uniform(k_b, (), minval=-brightness, maxval=brightness)
    order = jax.random.permutation(k_perm, 4) if random_order else jnp.arange(4)
    return jitter_with_params(
        img, order, b_param, uniform_factor(k_c, contrast), uniform_factor(k_s, saturation),
        jax.random.uniform(k_h, (), minval=-hue, maxval=hue), brightness_impl,
        enabled=(brightness > 0, contrast > 0, saturation > 0, hue > 0))


# ----------------------------------------------------------------------------------------------
# Per-view configuration and presets
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Everything that makes one view: host crop/flip params and device photometric params.

    Frozen and made of tuples/scalars, so it is hashable and can be a jit static argument.
    Probabilities are per image. `jitter` = (brightness, contrast, saturation, hue) ranges.
    `blur_kernel_fraction` sets the kernel size from the image side (`blur_kernel_size`).
    """
    # Host side (ssl_jax.data.crop).
    crop: str = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    center_crop_fraction: float = 0.875
    flip: bool = True
    # Device side (this module).
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_prob: float = 0.8
    jitter_random_order: bool = True
    brightness_impl: str = "multiplicative"
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    blur_padding: str = "constant"
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        # Config files hand over lists; tuples of floats keep the config hashable (jit static).
        for name in ("crop_scale", "crop_ratio", "jitter", "blur_sigma"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.crop not in _CROPS:
            raise ValueError(f"crop={self.crop!r}; valid choices: {_CROPS}")
        if self.brightness_impl not in _BRIGHTNESS_IMPLS:
            raise ValueError(
                f"brightness_impl={self.brightness_impl!r}; valid choices: {_BRIGHTNESS_IMPLS}")
        if self.blur_padding not in _BLUR_PADDINGS:
            raise ValueError(
                f"blur_padding={self.blur_padding!r}; valid choices: {_BLUR_PADDINGS}")
        for name in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < lo <= hi <= 1")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio={self.crop_ratio} must satisfy 0 < lo <= hi")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(
                f"jitter={self.jitter} must be 4 values >= 0 (b, c, s, h) with h <= 0.5")
        if not 0.0 < self.center_crop_fraction <= 1.0:
            raise ValueError(
                f"center_crop_fraction={self.center_crop_fraction} must be in (0, 1]")
        if not 0.0 <= self.blur_kernel_fraction <= 1.0:
            raise ValueError(
                f"blur_kernel_fraction={self.blur_kernel_fraction} must be in [0, 1]")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma={self.blur_sigma} must satisfy 0 < lo <= hi")

    @property
    def is_identity_on_device(self) -> bool:
        """True when `augment_views` would only convert/clip (e.g. eval views)."""
        return (self.jitter_prob == 0 and self.grayscale_prob == 0 and self.blur_prob == 0
                and self.solarize_prob == 0)


def simclr_jitter(strength: float) -> tuple[float, float, float, float]:
    """SimCLR colour-jitter ranges for strength s: (0.8 s, 0.8 s, 0.8 s, 0.2 s)."""
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named augmentation recipe: one `ViewConfig` per view (2 for SSL, 1 for eval)."""
    name: str
    views: tuple[ViewConfig, ...]

    @property
    def num_views(self) -> int:
        return len(self.views)


_NO_COLOUR = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)

# SimCLR (google-research/simclr): s = 1, blur p = 0.5 with kernel 10% of the side.
_SIMCLR_IMAGENET_VIEW = ViewConfig(jitter=simclr_jitter(1.0), jitter_prob=0.8,
                                   grayscale_prob=0.2, blur_prob=0.5)
SIMCLR_IMAGENET = Preset("simclr_imagenet", (_SIMCLR_IMAGENET_VIEW, _SIMCLR_IMAGENET_VIEW))
# SimCLR CIFAR: s = 0.5, no blur, same random-resized crop (no pad-and-crop).
_SIMCLR_CIFAR_VIEW = dataclasses.replace(_SIMCLR_IMAGENET_VIEW, jitter=simclr_jitter(0.5),
                                         blur_prob=0.0)
SIMCLR_CIFAR = Preset("simclr_cifar", (_SIMCLR_CIFAR_VIEW, _SIMCLR_CIFAR_VIEW))
# BYOL (deepmind-research byol/utils/augmentations.py): asymmetric blur / solarize, additive
# brightness as in its `_random_brightness`.
_BYOL_VIEW1 = ViewConfig(jitter=(0.4, 0.4, 0.2, 0.1), jitter_prob=0.8, grayscale_prob=0.2,
                         brightness_impl="additive", blur_prob=1.0, solarize_prob=0.0)
_BYOL_VIEW2 = dataclasses.replace(_BYOL_VIEW1, blur_prob=0.1, solarize_prob=0.2)
BYOL = Preset("byol", (_BYOL_VIEW1, _BYOL_VIEW2))
# MoCo v2 (facebookresearch/moco main_moco.py --aug-plus): torchvision ops, PIL blur (edge pad).
_MOCO_V2_VIEW = ViewConfig(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8,
                           grayscale_prob=0.2, blur_prob=0.5, blur_padding="edge")
MOCO_V2 = Preset("moco_v2", (_MOCO_V2_VIEW, _MOCO_V2_VIEW))
# InsDis / NPID (zhirongw/lemniscate.pytorch main.py): crop scale (0.2, 1), jitter 0.4 on all
# four always, grayscale 0.2, flip; one view. (lemniscate applies grayscale before jitter;
# ssl_jax's fixed op order is jitter then grayscale, as SimCLR/BYOL/MoCo.)
INSDIS = Preset("insdis", (ViewConfig(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4),
                                      jitter_prob=1.0, grayscale_prob=0.2, blur_prob=0.0),))
# Supervised baseline (torchvision ImageNet recipe): crop + flip only.
SUPERVISED = Preset("supervised", (ViewConfig(**_NO_COLOUR),))
# Evaluation: centre crop of 0.875 of the shorter side, nothing random.
EVAL = Preset("eval", (ViewConfig(crop="center", flip=False, **_NO_COLOUR),))
# Dense targets (the task bank): the whole image, untouched, so pixel targets stay aligned.
DENSE = Preset("dense", (ViewConfig(crop="center", center_crop_fraction=1.0, flip=False,
                                    **_NO_COLOUR),))

_PRESETS = {p.name: p for p in (SIMCLR_IMAGENET, SIMCLR_CIFAR, BYOL, MOCO_V2, INSDIS, SUPERVISED,
                                EVAL, DENSE)}
_VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(ViewConfig))
_SHORTCUTS = ("min_crop_scale", "jitter_strength", "blur")


def override(preset: Preset, **overrides: Any) -> Preset:
    """Returns `preset` with fields replaced in EVERY view.

    Keys are `ViewConfig` field names, plus shortcuts:
      min_crop_scale=x   -> crop_scale = (x, current max)
      jitter_strength=s  -> jitter = simclr_jitter(s)
      blur=False         -> blur_prob = 0 (blur=True keeps the preset's probabilities)
    For per-view changes use `dataclasses.replace` on `preset.views[i]`.
    """
    unknown = sorted(set(overrides) - set(_VIEW_FIELDS) - set(_SHORTCUTS))
    if unknown:
        raise ValueError(f"unknown augmentation override(s) {unknown}; valid choices: "
                         f"{_SHORTCUTS + _VIEW_FIELDS}")
    views = []
    for view in preset.views:
        fields = {k: v for k, v in overrides.items() if k in _VIEW_FIELDS}
        if "min_crop_scale" in overrides:
            fields["crop_scale"] = (float(overrides["min_crop_scale"]), view.crop_scale[1])
        if "jitter_strength" in overrides:
            fields["jitter"] = simclr_jitter(float(overrides["jitter_strength"]))
        if "blur" in overrides and not overrides["blur"]:
            fields["blur_prob"] = 0.0
        views.append(dataclasses.replace(view, **fields))
    return dataclasses.replace(preset, views=tuple(views))


def get_preset(name: str, **overrides: Any) -> Preset:
    """Preset by (case-insensitive) name, optionally overridden (see `override`).

    e.g. `get_preset("simclr_cifar", min_crop_scale=0.5)` for 32 px toy data.
    """
    key = name.lower()
    if key not in _PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; valid choices: {sorted(_PRESETS)}")
    preset = _PRESETS[key]
    return override(preset, **overrides) if overrides else preset


# ----------------------------------------------------------------------------------------------
# Batch level
# ----------------------------------------------------------------------------------------------

def _augment_one(key: Array, img: Array, cfg: ViewConfig) -> Array:
    """All photometric ops on one HWC image, in SimCLR/BYOL order: jitter, gray, blur, solarize."""
    k_jitter, k_jitter_p, k_gray_p, k_blur, k_blur_p, k_sol_p = jax.random.split(key, 6)
    out = img
    if cfg.jitter_prob > 0 and max(cfg.jitter) > 0:
        jittered = color_jitter(k_jitter, out, *cfg.jitter, random_order=cfg.jitter_random_order,
                                brightness_impl=cfg.brightness_impl)
        out = jnp.where(jax.random.bernoulli(k_jitter_p, cfg.jitter_prob), jittered, out)
    if cfg.grayscale_prob > 0:
        out = jnp.where(jax.random.bernoulli(k_gray_p, cfg.grayscale_prob),
                        to_grayscale(out), out)
    kernel_size = blur_kernel_size(img.shape[0], cfg.blur_kernel_fraction)
    if cfg.blur_prob > 0 and kernel_size // 2 > 0:
        blurred = gaussian_blur(k_blur, out, cfg.blur_sigma, kernel_size, cfg.blur_padding)
        out = jnp.where(jax.random.bernoulli(k_blur_p, cfg.blur_prob), blurred, out)
    if cfg.solarize_prob > 0:
        out = jnp.where(jax.random.bernoulli(k_sol_p, cfg.solarize_prob),
                        solarize(out, cfg.solarize_threshold), out)
    return jnp.clip(out, 0.0, 1.0)


def augment_views(key: Array, images: Array, cfg: ViewConfig) -> Array:
    """Photometric augmentation of one view of a batch, one RNG per image.

    Args:
      key: a single PRNG key for the whole batch (split into one key per image).
      images: [N, H, W, 3] float in [0, 1] or uint8 in [0, 255]; may be sharded over 'data'.
      cfg: the view's config (static under jit: `jax.jit(augment_views, static_argnums=2)`).

    Returns:
      [N, H, W, 3] float32 in [0, 1]. The result for image i depends only on (key, i, image i),
      not on how the batch is sharded.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    images = images.astype(jnp.float32)
    if cfg.is_identity_on_device:
        return jnp.clip(images, 0.0, 1.0)
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: _augment_one(k, x, cfg))(keys, images)


def augment_preset(key: Array, views: Sequence[Array], preset: Preset) -> tuple[Array, ...]:
    """Applies `preset.views[i]` to `views[i]` (e.g. the two crops of an SSL batch).

    Each view gets `jax.random.fold_in(key, i)`, so views are augmented independently.
    """
    if len(views) != preset.num_views:
        raise ValueError(f"got {len(views)} views for preset {preset.name!r} which has "
                         f"{preset.num_views}")
    return tuple(augment_views(jax.random.fold_in(key, i), v, cfg)
                 for i, (v, cfg) in enumerate(zip(views, preset.views)))
