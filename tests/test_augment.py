"""Augmentations: device ops vs tf.image / scipy / numpy references, RNG and sharding
properties, presets; host crops vs numpy references and a torchvision-algorithm simulation."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.data import augment as aug
from ssl_jax.data import crop


def _images(n, h=8, w=8, seed=0):
    return np.random.default_rng(seed).random((n, h, w, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Deterministic device ops vs independent references
# ----------------------------------------------------------------------------------------------

def test_grayscale_matches_tf():
    x = _images(2, 9, 7)
    want = np.tile(tf.image.rgb_to_grayscale(x).numpy(), (1, 1, 1, 3))
    np.testing.assert_allclose(aug.to_grayscale(x), want, atol=1e-6)


def test_hsv_round_trip_and_matches_tf():
    x = _images(1, 6, 6)[0]
    x[0, 0] = 0.0  # black: value 0
    x[0, 1] = 0.5  # gray: chroma 0
    # Primaries, white, and ties for the max channel (sector boundaries).
    x[1, :6] = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0.7, 0.7, 0.2], [0.3, 0.8, 0.8]]
    hsv = np.asarray(aug.rgb_to_hsv(x))
    np.testing.assert_allclose(hsv, tf.image.rgb_to_hsv(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(aug.hsv_to_rgb(hsv), x, atol=1e-6)
    np.testing.assert_allclose(aug.adjust_hue(x, 0.25), tf.image.adjust_hue(x, 0.25).numpy(),
                               atol=1e-3)
    # The masked divisions must not leak NaN into gradients at gray/black pixels.
    grad = jax.grad(lambda t: aug.adjust_saturation_hue(t, 1.3, 0.1).sum())(jnp.asarray(x))
    assert np.isfinite(np.asarray(grad)).all()


def test_brightness_contrast_saturation_match_tf_and_numpy():
    x = _images(1, 10, 12, seed=1)[0]
    for factor in (0.2, 0.9, 1.0, 1.7):
        np.testing.assert_allclose(aug.adjust_brightness(x, factor), x * factor, atol=1e-6)
        # numpy formula of tf.image.adjust_contrast: per-channel spatial mean.
        mean = x.mean(axis=(0, 1), keepdims=True)
        np.testing.assert_allclose(aug.adjust_contrast(x, factor), (x - mean) * factor + mean,
                                   atol=1e-6)
        np.testing.assert_allclose(aug.adjust_contrast(x, factor),
                                   tf.image.adjust_contrast(x, factor).numpy(), atol=1e-5)
        np.testing.assert_allclose(aug.adjust_saturation(x, factor),
                                   tf.image.adjust_saturation(x, factor).numpy(), atol=1e-5)


@pytest.mark.parametrize("delta", [-0.5, -0.13, 0.0, 0.07, 0.31])
def test_hue_matches_tf(delta):
    x = _images(1, 10, 10, seed=2)[0]
    np.testing.assert_allclose(aug.adjust_hue(x, delta), tf.image.adjust_hue(x, delta).numpy(),
                               atol=1e-3)


def test_jitter_with_params_matches_tf_chain():
    """The random-order chain with clipping after each op, as SimCLR color_jitter_rand."""
    x = _images(1, 8, 8, seed=3)[0]
    rng = np.random.default_rng(0)
    chain = jax.jit(jax.vmap(aug.jitter_with_params, in_axes=(None, 0, 0, 0, 0, 0, None)),
                    static_argnums=6)
    for impl in ("multiplicative", "additive"):
        orders = np.stack([rng.permutation(4) for _ in range(3)])
        b = rng.uniform(0.2, 1.8, 3) if impl == "multiplicative" else rng.uniform(-0.4, 0.4, 3)
        c, s, h = rng.uniform(0.2, 1.8, 3), rng.uniform(0.2, 1.8, 3), rng.uniform(-0.2, 0.2, 3)
        got = chain(x, orders, b, c, s, h, impl)
        for i in range(3):
            ops = [(lambda t: t * b[i]) if impl == "multiplicative" else (lambda t: t + b[i]),
                   lambda t: tf.image.adjust_contrast(t, c[i]),
                   lambda t: tf.image.adjust_saturation(t, s[i]),
                   lambda t: tf.image.adjust_hue(t, h[i])]
            want = tf.constant(x)
            for op in orders[i]:
                want = tf.clip_by_value(ops[op](want), 0.0, 1.0)
            np.testing.assert_allclose(got[i], want.numpy(), atol=1e-3)


def test_color_jitter_single_op_factor_in_range():
    """Brightness only: out / in is one per-image factor inside [1 - b, 1 + b]."""
    x = 0.2 + 0.3 * _images(1, 6, 6, seed=4)[0]  # <= 0.5 so 1.5x never clips
    keys = jax.random.split(jax.random.key(0), 20)
    outs = jax.jit(jax.vmap(lambda k: aug.color_jitter(k, x, 0.5, 0.0, 0.0, 0.0)))(keys)
    factors = []
    for out in np.asarray(outs):
        ratio = out / x
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
        factors.append(ratio.flat[0])
    assert 0.5 <= min(factors) and max(factors) <= 1.5
    assert max(factors) - min(factors) > 0.3  # actually random


def test_color_jitter_hue_only_keeps_value_channel():
    x = _images(1, 6, 6, seed=5)[0]
    out = aug.color_jitter(jax.random.key(0), x, 0.0, 0.0, 0.0, 0.4)
    np.testing.assert_allclose(out.max(-1), x.max(-1), atol=1e-5)
    assert np.abs(np.asarray(out) - x).max() > 1e-3


@pytest.mark.parametrize("padding,scipy_mode", [("constant", "constant"), ("reflect", "mirror"),
                                                ("edge", "nearest")])
def test_blur_matches_scipy_separable(padding, scipy_mode):
    x = _images(1, 11, 9, seed=6)[0]
    sigma, kernel_size = 1.3, 7  # radius 3
    want = x
    for axis in (0, 1):
        want = scipy.ndimage.gaussian_filter1d(want, sigma, axis=axis, mode=scipy_mode, cval=0.0,
                                               truncate=3 / sigma)
    got = aug.blur_with_sigma(x, sigma, kernel_size, padding)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blur_padding_on_constant_image():
    """Edge/reflect padding keep a flat image flat; zero padding (TF 'SAME', SimCLR/BYOL)
    darkens the border."""
    x = np.full((10, 10, 3), 0.6, np.float32)
    for padding in ("reflect", "edge"):
        np.testing.assert_allclose(aug.blur_with_sigma(x, 2.0, 7, padding), x, atol=1e-6)
    zero = np.asarray(aug.blur_with_sigma(x, 2.0, 7, "constant"))
    np.testing.assert_allclose(zero[4:6, 4:6], 0.6, atol=1e-6)
    assert zero[0, 0, 0] < 0.6 * 0.5 + 1e-3  # corner: at most half the taps per axis in-image
    with pytest.raises(ValueError, match="padding"):
        aug.blur_with_sigma(x, 1.0, 3, "wrap")


def test_blur_even_kernel_rounds_up_and_random_sigma_in_range():
    x = _images(1, 12, 12, seed=7)[0]
    # Even size 6 -> 7 taps, like SimCLR / BYOL.
    np.testing.assert_allclose(aug.blur_with_sigma(x, 1.0, 6), aug.blur_with_sigma(x, 1.0, 7))
    assert aug.blur_kernel_size(224) == 22 and aug.blur_kernel_size(32) == 3
    # The random blur equals a fixed-sigma blur for some sigma in the requested range.
    grid = np.linspace(0.5, 1.5, 201)
    fixed = jax.vmap(lambda s: aug.blur_with_sigma(x, s, 7))(jnp.asarray(grid))
    out = aug.gaussian_blur(jax.random.key(3), x, (0.6, 1.4), kernel_size=7)
    err = np.abs(np.asarray(fixed) - np.asarray(out)[None]).max(axis=(1, 2, 3))
    assert err.min() < 2e-3 and 0.6 - 0.01 <= grid[err.argmin()] <= 1.4 + 0.01


def test_solarize_exact():
    x = _images(1, 5, 5, seed=8)[0]
    x[0, 0, 0] = 0.5
    np.testing.assert_array_equal(aug.solarize(x, 0.5), np.where(x < 0.5, x, 1 - x))


# ----------------------------------------------------------------------------------------------
# Batch level: probabilities, one RNG per image, sharding
# ----------------------------------------------------------------------------------------------

_ONLY = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
_augment = jax.jit(aug.augment_views, static_argnums=2)


@pytest.mark.parametrize("op,p", [("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5),
                                  ("solarize", 0.2)])
def test_probability_of_each_op(op, p):
    n = 2000
    x = _images(n, 4, 4, seed=9)
    # Brightness-only jitter: same coin flips, much smaller graph to compile.
    cfg = aug.ViewConfig(**{**_ONLY, f"{op}_prob": p}, blur_kernel_fraction=0.5,
                         jitter=(0.5, 0.0, 0.0, 0.0))
    out = np.asarray(_augment(jax.random.key(1), x, cfg))
    changed = np.abs(out - x).max(axis=(1, 2, 3)) > 1e-6
    if op == "grayscale":  # and make sure the change is the right one
        gray = np.ptp(out, axis=-1).max(axis=(1, 2)) < 1e-6
        np.testing.assert_array_equal(gray, changed)
    tol = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(changed.mean() - p) < tol, (op, changed.mean(), p)


def test_one_rng_per_image_and_determinism():
    # jitter_prob=1 so no two images can both be left untouched.
    cfg = dataclasses.replace(aug.SIMCLR_IMAGENET.views[0], jitter_prob=1.0)
    x = np.repeat(_images(1, 16, 16, seed=10), 8, axis=0)
    out1 = np.asarray(_augment(jax.random.key(5), x, cfg))
    out2 = np.asarray(_augment(jax.random.key(5), x, cfg))
    out3 = np.asarray(_augment(jax.random.key(6), x, cfg))
    np.testing.assert_array_equal(out1, out2)
    flat = out1.reshape(8, -1)
    dists = np.abs(flat[:, None] - flat[None]).max(-1) + np.eye(8)
    assert dists.min() > 1e-3, "identical inputs got identical augmentations"
    assert np.abs(out1 - out3).max() > 1e-3
    assert out1.min() >= 0.0 and out1.max() <= 1.0 and out1.dtype == np.float32


def test_sharded_batch_equals_unsharded():
    # BYOL view 2 minus saturation/hue (compile time): blur + solarize + jitter coin flips.
    cfg = dataclasses.replace(aug.BYOL.views[1], jitter=(0.4, 0.4, 0.0, 0.0), blur_prob=0.5)
    x = _images(16, 20, 20, seed=11)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    key = jax.random.key(7)
    want = _augment(key, x, cfg)
    got = _augment(key, x_sharded, cfg)
    assert got.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


def test_uint8_input_and_identity_views():
    x8 = (np.random.default_rng(12).random((2, 4, 4, 3)) * 255).astype(np.uint8)
    out = aug.augment_views(jax.random.key(0), x8, aug.EVAL.views[0])
    np.testing.assert_allclose(out, x8 / 255.0, atol=1e-7)
    assert out.dtype == jnp.float32
    with pytest.raises(ValueError, match="N, H, W, 3"):
        aug.augment_views(jax.random.key(0), x8[0], aug.EVAL.views[0])


def test_augment_preset_views_differ():
    x = _images(4, 8, 8, seed=13)
    view = aug.ViewConfig(**{**_ONLY, "jitter_prob": 1.0}, jitter=(0.5, 0.0, 0.0, 0.0))
    preset = aug.Preset("test", (view, view))
    v1, v2 = jax.jit(aug.augment_preset, static_argnums=2)(jax.random.key(0), (x, x), preset)
    assert np.abs(np.asarray(v1) - np.asarray(v2)).max() > 1e-3
    with pytest.raises(ValueError, match="views"):
        aug.augment_preset(jax.random.key(0), (x,), aug.SIMCLR_CIFAR)


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------

def test_preset_parameters():
    simclr = aug.get_preset("SimCLR_ImageNet").views
    assert len(simclr) == 2 and simclr[0] == simclr[1]
    np.testing.assert_allclose(simclr[0].jitter, (0.8, 0.8, 0.8, 0.2))
    assert (simclr[0].jitter_prob, simclr[0].grayscale_prob, simclr[0].blur_prob) == (
        0.8, 0.2, 0.5)
    assert simclr[0].crop_scale == (0.08, 1.0) and simclr[0].flip
    cifar = aug.SIMCLR_CIFAR.views[0]
    np.testing.assert_allclose(cifar.jitter, (0.4, 0.4, 0.4, 0.1))
    assert cifar.blur_prob == 0.0 and cifar.crop == "random_resized"
    b1, b2 = aug.BYOL.views
    assert (b1.blur_prob, b1.solarize_prob, b2.blur_prob, b2.solarize_prob) == (
        1.0, 0.0, 0.1, 0.2)
    assert b1.jitter == b2.jitter == (0.4, 0.4, 0.2, 0.1) and b1.jitter_prob == 0.8
    moco = aug.MOCO_V2.views[0]
    assert moco.crop_scale == (0.2, 1.0) and moco.jitter == (0.4, 0.4, 0.4, 0.1)
    assert (moco.grayscale_prob, moco.blur_prob, moco.blur_sigma) == (0.2, 0.5, (0.1, 2.0))
    ev = aug.EVAL.views
    assert len(ev) == 1 and ev[0].crop == "center" and ev[0].center_crop_fraction == 0.875
    assert not ev[0].flip and ev[0].is_identity_on_device


def test_get_preset_overrides_and_errors():
    toy = aug.get_preset("simclr_cifar", min_crop_scale=0.5, jitter_strength=1.0, blur=False)
    assert all(v.crop_scale == (0.5, 1.0) for v in toy.views)
    np.testing.assert_allclose(toy.views[0].jitter, (0.8, 0.8, 0.8, 0.2))
    byol = aug.get_preset("byol", blur=False, crop_ratio=[0.5, 2.0])
    assert [v.blur_prob for v in byol.views] == [0.0, 0.0]
    assert byol.views[1].solarize_prob == 0.2 and byol.views[0].crop_ratio == (0.5, 2.0)
    hash(byol)  # usable as a jit static argument
    assert aug.get_preset("byol") == aug.BYOL  # the registry itself is untouched
    with pytest.raises(ValueError, match="simclr_imagenet"):
        aug.get_preset("simclr")
    with pytest.raises(ValueError, match="min_crop_scale"):
        aug.get_preset("byol", min_scale=0.5)
    with pytest.raises(ValueError, match="blur_padding"):
        dataclasses.replace(aug.BYOL.views[0], blur_padding="wrap")
    listy = dataclasses.replace(aug.BYOL.views[0], blur_sigma=[0.5, 1], jitter=[0.1, 0, 0, 0])
    assert listy.blur_sigma == (0.5, 1.0) and hash(listy) == hash(
        dataclasses.replace(listy, jitter=(0.1, 0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="grayscale_prob"):
        aug.ViewConfig(grayscale_prob=1.5)


# ----------------------------------------------------------------------------------------------
# Host-side crops (TensorFlow)
# ----------------------------------------------------------------------------------------------

def _torchvision_boxes(height, width, scale, ratio, n, rng):
    """Independent numpy simulation of torchvision RandomResizedCrop.get_params."""
    boxes = []
    for _ in range(n):
        for _ in range(10):
            area = height * width * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w = int(round(math.sqrt(area * aspect)))
            h = int(round(math.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                boxes.append((h, w))
                break
        else:
            boxes.append((height, width))
    return np.array(boxes, dtype=np.float64)


def test_sample_crop_box_distribution_matches_torchvision_algorithm():
    height, width, scale, ratio, n = 40, 60, (0.08, 1.0), (3 / 4, 4 / 3), 1500
    seeds = tf.stack([tf.range(n), tf.fill([n], 17)], axis=1)
    sample = tf.function(lambda s: tf.map_fn(
        lambda sd: crop.sample_crop_box(tf.constant([height, width]), sd, scale, ratio), s))
    boxes = sample(seeds).numpy()
    oy, ox, h, w = boxes.T
    assert (oy >= 0).all() and (ox >= 0).all()
    assert (oy + h <= height).all() and (ox + w <= width).all()
    area = h * w / (height * width)
    assert area.min() >= 0.07 and area.max() <= 1.0
    # Rounding h and w moves the aspect ratio a little for small crops.
    assert (w / h >= 3 / 4 * 0.85).all() and (w / h <= 4 / 3 / 0.85).all()
    ref = _torchvision_boxes(height, width, scale, ratio, 6000, np.random.default_rng(0))
    ref_area = ref[:, 0] * ref[:, 1] / (height * width)
    assert scipy.stats.ks_2samp(area, ref_area).pvalue > 1e-3
    assert scipy.stats.ks_2samp(np.log(w / h), np.log(ref[:, 1] / ref[:, 0])).pvalue > 1e-3
    # Offsets are uniform over the valid range: mean relative position ~ 0.5.
    slack = height - h
    rel = oy[slack > 4] / slack[slack > 4]
    assert abs(rel.mean() - 0.5) < 0.05


def test_sample_crop_box_fallback_is_central():
    # No candidate with aspect >= 3 and area >= 0.9 fits a square: torchvision's fallback
    # is the full width with h = round(w / 3), centred.
    box = crop.sample_crop_box(tf.constant([30, 30]), tf.constant([1, 2]), (0.9, 1.0), (3.0, 4.0))
    np.testing.assert_array_equal(box.numpy(), [(30 - 10) // 2, 0, 10, 30])
    with pytest.raises(ValueError, match="scale"):
        crop.sample_crop_box(tf.constant([30, 30]), None, (0.0, 1.0))
    # seed=None: fresh random seed, still a valid box.
    oy, ox, h, w = crop.sample_crop_box(tf.constant([30, 20]), None).numpy()
    assert 0 <= oy <= 30 - h and 0 <= ox <= 20 - w and h > 0 and w > 0


def test_random_resized_crop_in_tf_data_is_deterministic():
    image = (np.random.default_rng(14).random((20, 28, 3)) * 255).astype(np.uint8)

    def run(seed):
        ds = tf.data.Dataset.from_tensors(image).repeat(3)
        ds = ds.enumerate().map(lambda i, im: crop.random_resized_crop(
            im, tf.stack([tf.cast(i, tf.int32), seed]), size=8))
        return np.stack(list(ds.as_numpy_iterator()))

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 0
    assert np.abs(a[0].astype(int) - a[1].astype(int)).max() > 0  # per-example seeds differ


def test_random_resized_crop_resizes_the_sampled_box():
    image = np.random.default_rng(15).random((24, 18, 3)).astype(np.float32)
    seed = tf.constant([3, 4])
    oy, ox, h, w = crop.sample_crop_box(tf.constant([24, 18]), seed).numpy()
    out = crop.random_resized_crop(image, seed, size=10, dtype=tf.float32).numpy()
    want = tf.image.resize(image[oy:oy + h, ox:ox + w], [10, 10], method="bicubic").numpy()
    np.testing.assert_allclose(out, np.clip(want, 0, 1), atol=1e-6)
    assert out.dtype == np.float32


def test_center_crop_matches_numpy():
    for (height, width) in [(32, 32), (40, 30), (25, 41)]:
        image = (np.random.default_rng(height).random((height, width, 3)) * 255).astype(np.uint8)
        side = int(np.rint(0.875 * min(height, width)))
        top, left = (height - side + 1) // 2, (width - side + 1) // 2
        # Output size == crop side: the bicubic resize is the identity, so the crop is exact.
        out = crop.center_crop(image, side, 0.875).numpy()
        np.testing.assert_array_equal(out, image[top:top + side, left:left + side])
    const = np.full((30, 40, 3), 0.25, np.float32)
    np.testing.assert_allclose(crop.center_crop(const, 16, dtype=tf.float32), 0.25, atol=1e-6)


def test_random_flip():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    outs = [crop.random_flip(image, tf.constant([i, 0])).numpy() for i in range(60)]
    flipped = [np.array_equal(o, image[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, image) for f, o in zip(flipped, outs))
    assert 15 <= sum(flipped) <= 45
    np.testing.assert_array_equal(crop.random_flip(image, tf.constant([5, 0])), outs[5])


def test_crop_view_unknown_shape_graph_mode():
    """Decoded JPEGs have unknown static shape: the crops must trace with [None, None, 3]."""
    image = (np.random.default_rng(16).random((21, 33, 3)) * 255).astype(np.uint8)
    seed = tf.constant([7, 8])
    for view, flip_possible in ((aug.SIMCLR_CIFAR.views[0], True), (aug.EVAL.views[0], False)):
        fn = tf.function(lambda im, sd, v=view: crop.crop_view(im, sd, 12, v),
                         input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                          tf.TensorSpec([2], tf.int32)])
        out = fn(image, seed).numpy()
        assert out.shape == (12, 12, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, fn(image, seed).numpy())
        if not flip_possible:
            np.testing.assert_array_equal(out, crop.center_crop(image, 12).numpy())
    narrow = dataclasses.replace(aug.SIMCLR_CIFAR.views[0], crop_scale=(0.99, 1.0),
                                 crop_ratio=(33 / 21, 33 / 21), flip=False)
    # Near-full-image crop with the image's own aspect ratio: ~ a plain resize.
    out = crop.crop_view(image, seed, 12, narrow, dtype=tf.float32).numpy()
    full = np.clip(tf.image.resize(image / 255.0, [12, 12], method="bicubic").numpy(), 0, 1)
    assert np.abs(out - full).mean() < 0.05
