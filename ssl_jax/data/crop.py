"""Host-side geometric augmentations in TensorFlow (run inside `tf.data.Dataset.map`).

Only the geometry lives here: random-resized crop, horizontal flip and the eval centre crop.
Colour, blur and solarize run on the accelerator (`ssl_jax.data.augment`), one RNG per image.

Conventions
- Images are HWC, any numeric dtype (decoded JPEG/PNG is uint8 in [0, 255]).
- Every random function takes `seed`: an int32/int64 tensor of shape [2] for the stateless
  `tf.random.stateless_*` ops, so the pipeline is reproducible given its seed (derive one per
  example, e.g. from `tf.data.Dataset.random(seed)` or `tf.random.experimental.stateless_split`).
  `seed=None` draws a fresh seed from the global TF RNG (non-deterministic runs).
- Resizing is **bicubic without antialiasing** (`tf.image.resize(method='bicubic')`), as in the
  SimCLR and BYOL TF pipelines. torchvision's RandomResizedCrop defaults to bilinear (with PIL
  antialias); bicubic keeps more high-frequency detail when upsampling small crops, which is
  the common case (a 0.08-area crop of a 224 image is ~63 px). Bicubic overshoots, so outputs
  are clipped back to the input range.
- Outputs are uint8 by default (4x less host->device traffic than float32); pass
  `dtype=tf.float32` to get floats in [0, 1].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import tensorflow as tf

if TYPE_CHECKING:  # only for the annotation: this module stays importable without jax
    from ssl_jax.data.augment import ViewConfig

_RESIZE_METHODS = ("bicubic", "bilinear")
_OUT_DTYPES = (tf.uint8, tf.float32)


def _check_range(name: str, bounds: Sequence[float], low: float, high: float) -> None:
    if len(bounds) != 2 or not (low < bounds[0] <= bounds[1] <= high):
        raise ValueError(
            f"{name}={tuple(bounds)} must be (lo, hi) with {low} < lo <= hi <= {high}")


def _seed_or_random(seed: Optional[tf.Tensor]) -> tf.Tensor:
    if seed is None:
        # Fresh seed from the global (stateful) RNG: non-reproducible by design.
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    return tf.convert_to_tensor(seed)


def sample_crop_box(
    image_hw: tf.Tensor,
    seed: Optional[tf.Tensor],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tf.Tensor:
    """Samples an Inception-style crop box (torchvision `RandomResizedCrop.get_params`).

    For each of `attempts` candidates: area fraction ~ U(scale), aspect ratio w/h ~
    log-uniform(ratio), h = round(sqrt(A / r)), w = round(sqrt(A * r)). The first candidate that
    fits inside the image is used, with a uniform top-left corner. If none fits, fall back to
    the centre crop of the whole image clamped to the ratio range. All candidates are drawn at
    once (vectorised) so this is a fixed graph: no data-dependent Python loop.

    Args:
      image_hw: int tensor [2] = (height, width) of the image (e.g. `tf.shape(image)[:2]`).
      seed: int tensor [2] for the stateless RNG, or None for a random one.
      scale: (min, max) fraction of the image area covered by the crop.
      ratio: (min, max) aspect ratio width / height of the crop.
      attempts: number of rejection-sampling candidates (torchvision and SimCLR-torch use 10).

    Returns:
      int32 tensor [4] = (offset_y, offset_x, crop_height, crop_width).
    """
    _check_range("scale", scale, 0.0, 1.0)
    _check_range("ratio", ratio, 0.0, math.inf)
    if attempts < 1:
        raise ValueError(f"attempts={attempts} must be >= 1")
    seed = _seed_or_random(seed)
    area_seed, ratio_seed, pos_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    height = tf.cast(image_hw[0], tf.int32)
    width = tf.cast(image_hw[1], tf.int32)
    height_f = tf.cast(height, tf.float32)
    width_f = tf.cast(width, tf.float32)

    area = height_f * width_f * tf.random.stateless_uniform(
        [attempts], area_seed, minval=scale[0], maxval=scale[1])
    log_ratio = tf.random.stateless_uniform(
        [attempts], ratio_seed, minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    # tf.round is round-half-to-even like Python's round() used by torchvision.
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    # argmax returns the first True; any() decides between it and the fallback.
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    any_fits = tf.reduce_any(fits)

    # Fallback: whole image, cropped centrally to the nearest allowed aspect ratio.
    in_ratio = width_f / height_f
    fb_w = tf.where(
        in_ratio > ratio[1], tf.cast(tf.round(height_f * ratio[1]), tf.int32), width)
    fb_h = tf.where(
        in_ratio < ratio[0], tf.cast(tf.round(width_f / ratio[0]), tf.int32), height)

    h = tf.where(any_fits, crop_h[first], fb_h)
    w = tf.where(any_fits, crop_w[first], fb_w)
    # Uniform integer offsets in [0, H - h] x [0, W - w]; fallback is centred.
    u = tf.random.stateless_uniform([2], pos_seed)
    rand_y = tf.minimum(tf.cast(u[0] * tf.cast(height - h + 1, tf.float32), tf.int32), height - h)
    rand_x = tf.minimum(tf.cast(u[1] * tf.cast(width - w + 1, tf.float32), tf.int32), width - w)
    off_y = tf.where(any_fits, rand_y, (height - h) // 2)
    off_x = tf.where(any_fits, rand_x, (width - w) // 2)
    return tf.stack([off_y, off_x, h, w])


def _resize(image: tf.Tensor, size: int, method: str, dtype: tf.DType) -> tf.Tensor:
    """Resizes HWC `image` to [size, size, C] and casts to `dtype` (uint8 or float [0, 1])."""
    if method not in _RESIZE_METHODS:
        raise ValueError(f"method={method!r}; valid choices: {_RESIZE_METHODS}")
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype={dtype!r}; valid choices: {_OUT_DTYPES}")
    in_uint8 = image.dtype == tf.uint8
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method=method,
                            antialias=False)
    if in_uint8:
        image = image / 255.0
    # Bicubic overshoots at edges; clip so downstream ops see the documented [0, 1] range.
    image = tf.clip_by_value(image, 0.0, 1.0)
    if dtype == tf.uint8:
        return tf.cast(tf.round(image * 255.0), tf.uint8)
    return image


def random_resized_crop(
    image: tf.Tensor,
    seed: Optional[tf.Tensor],
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    method: str = "bicubic",
    dtype: tf.DType = tf.uint8,
) -> tf.Tensor:
    """Random-resized crop of an HWC image to [size, size, C] (see `sample_crop_box`).

    `image` is uint8 in [0, 255] or float in [0, 1]. Returns `dtype` (uint8 [0, 255] or
    float32 [0, 1]). Works on small images too: SimCLR's CIFAR recipe uses this crop (not
    pad-and-crop) on 32 px inputs.
    """
    box = sample_crop_box(tf.shape(image)[:2], seed, scale=scale, ratio=ratio)
    crop = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], -1]))
    return _resize(crop, size, method, dtype)


def random_flip(image: tf.Tensor, seed: Optional[tf.Tensor], prob: float = 0.5) -> tf.Tensor:
    """Flips an HWC image left-right with probability `prob` (stateless given `seed`)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob={prob} must be in [0, 1]")
    image = tf.convert_to_tensor(image)
    seed = _seed_or_random(seed)
    flip = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def center_crop_box(image_hw: tf.Tensor, crop_fraction: float = 0.875) -> tf.Tensor:
    """Centred square box with side `round(crop_fraction * min(H, W))` (SimCLR eval).

    Returns int32 [4] = (offset_y, offset_x, side, side); odd slack goes to the top/left + 1
    as SimCLR's `(H - h + 1) // 2`.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction={crop_fraction} must be in (0, 1]")
    height = tf.cast(image_hw[0], tf.int32)
    width = tf.cast(image_hw[1], tf.int32)
    side = tf.cast(tf.math.rint(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32)),
                   tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def center_crop(
    image: tf.Tensor,
    size: int,
    crop_fraction: float = 0.875,
    method: str = "bicubic",
    dtype: tf.DType = tf.uint8,
) -> tf.Tensor:
    """Eval preprocessing: centred square crop of `crop_fraction` of the shorter side, resized
    to [size, size, C] (SimCLR `center_crop` with aspect 1; equivalent to torchvision's
    Resize(size / crop_fraction) + CenterCrop(size) up to resampling)."""
    box = center_crop_box(tf.shape(image)[:2], crop_fraction)
    crop = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], -1]))
    return _resize(crop, size, method, dtype)


def crop_view(image: tf.Tensor, seed: Optional[tf.Tensor], size: int, view: "ViewConfig",
              dtype: tf.DType = tf.uint8) -> tf.Tensor:
    """The host half of one view: `view.crop` ('random_resized' with `view.crop_scale`,
    `view.crop_ratio`, then a flip if `view.flip`; or 'center' with
    `view.center_crop_fraction`). Returns [size, size, C] `dtype`.

    The crop and the flip use independent sub-seeds of `seed`; for two SSL views of one image
    pass two different seeds (e.g. `stateless_split(example_seed, 2)`).
    """
    if view.crop == "center":
        return center_crop(image, size, view.center_crop_fraction, dtype=dtype)
    if view.crop != "random_resized":
        raise ValueError(f"view.crop={view.crop!r}; valid choices: ('random_resized', 'center')")
    crop_seed = flip_seed = None
    if seed is not None:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    out = random_resized_crop(image, crop_seed, size, view.crop_scale, view.crop_ratio,
                              dtype=dtype)
    return random_flip(out, flip_seed) if view.flip else out
