"""Copy-paste background augmentation: the pieces against numpy/scipy, and the pipeline."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from ssl_jax.data import augment, copy_paste, pipeline

VIEWS = augment.get_preset("moco_v2").views
TEXTURES = np.zeros((1, 1, 1, 3), np.uint8)


def _image(seed=0, size=16):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _view(image, mask, cfg, seed=(1, 2), other=None, other_mask=None):
    other = image if other is None else other
    other_mask = mask if other_mask is None else other_mask
    return copy_paste.copy_paste_view(
        tf.constant(image), tf.constant(mask, tf.float32), tf.constant(other),
        tf.constant(other_mask, tf.float32), tf.constant(seed, tf.int64), cfg,
        tf.constant(copy_paste.texture_bank(copy_paste.CopyPasteConfig(num_textures=4), 16)),
        image.shape[0]).numpy()


@pytest.fixture(scope="module")
def tiny(tiny_data_dir):
    return pipeline.load_builder("shapes_textures/tiny", tiny_data_dir)


def test_prob_zero_is_identity():
    image, mask = _image(), np.zeros((16, 16, 1))
    cfg = copy_paste.CopyPasteConfig(prob=0.0)
    for s in range(5):
        np.testing.assert_array_equal(_view(image, mask, cfg, seed=(s, 7)), image)


@pytest.mark.parametrize("blend", copy_paste.BLENDS)
@pytest.mark.parametrize("background", copy_paste.BACKGROUNDS)
def test_mask_of_ones_returns_the_foreground(blend, background):
    image = _image(1)
    cfg = copy_paste.CopyPasteConfig(prob=1.0, blend=blend, backgrounds=(background,))
    for s in range(3):
        np.testing.assert_array_equal(_view(image, np.ones((16, 16, 1)), cfg, seed=(s, 0)), image)


def test_mask_of_zeros_returns_a_grey_background():
    image = _image(2)
    cfg = copy_paste.CopyPasteConfig(prob=1.0, blend="mix", backgrounds=("grey",))
    levels = []
    for s in range(8):
        out = _view(image, np.zeros((16, 16, 1)), cfg, seed=(s, 3))
        assert (out == out[0, 0, 0]).all()  # one level, all channels
        levels.append(out[0, 0, 0])
    assert len(set(levels)) > 4  # U(0, 1) per view, not a constant


def test_image_background_is_the_least_salient_crop_of_the_other_image():
    # Other image: 4 flat quadrants; its mask covers all but the bottom-right quadrant, so the
    # saliency-free half-size crop is that quadrant: a flat background of its colour.
    colours = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [200, 150, 100]], np.uint8)
    other = np.zeros((16, 16, 3), np.uint8)
    for q, (y, x) in enumerate(((0, 0), (0, 8), (8, 0), (8, 8))):
        other[y:y + 8, x:x + 8] = colours[q]
    other_mask = np.ones((16, 16, 1))
    other_mask[8:, 8:] = 0
    cfg = copy_paste.CopyPasteConfig(prob=1.0, blend="none", backgrounds=("image",))
    out = _view(_image(3), np.zeros((16, 16, 1)), cfg, other=other, other_mask=other_mask)
    np.testing.assert_array_equal(out, np.broadcast_to(colours[3], out.shape))


def test_hard_paste_keeps_the_object_and_replaces_the_rest():
    image = _image(4)
    mask = np.zeros((16, 16, 1))
    mask[4:12, 3:9] = 0.9  # soft values >= 0.5 count as foreground
    cfg = copy_paste.CopyPasteConfig(prob=1.0, blend="none", backgrounds=("grey",))
    out = _view(image, mask, cfg)
    inside = mask[..., 0] > 0
    np.testing.assert_array_equal(out[inside], image[inside])
    assert (out[~inside] == out[0, 0]).all() and not np.array_equal(out[~inside],
                                                                    image[~inside])


def test_gaussian_mask_matches_scipy_and_blend_stays_in_range():
    mask = np.zeros((12, 12, 1), np.float32)
    mask[3:8, 2:9] = 1
    blurred = copy_paste.gaussian_blur_mask(tf.constant(mask), 1.0).numpy()
    # Radius ceil(3 sigma) = 3 = scipy's int(truncate * sigma + 0.5); TF SYMMETRIC = 'reflect'.
    ref = ndimage.gaussian_filter(mask[..., 0].astype(np.float64), 1.0, mode="reflect",
                                  truncate=3.0)
    np.testing.assert_allclose(blurred[..., 0], ref, atol=1e-6)
    assert ((blurred > 0) & (blurred < 1)).any() and blurred.max() <= 1

    image, bg = np.random.default_rng(5).uniform(size=(2, 12, 12, 3)).astype(np.float32)
    out = copy_paste.paste(tf.constant(image), tf.constant(blurred), tf.constant(bg)).numpy()
    np.testing.assert_allclose(out, blurred * image + (1 - blurred) * bg, rtol=1e-6)
    assert (out >= np.minimum(image, bg) - 1e-6).all() and (out <= np.maximum(image, bg) + 1e-6).all()


def test_array_masks_pick_the_row_and_resize():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[1, :2] = 255
    provider = copy_paste.array_masks(masks)
    assert provider.needs == ("index",)
    same = provider({"image": tf.zeros((4, 4, 3), tf.uint8), "index": tf.constant(1)}).numpy()
    np.testing.assert_array_equal(same[..., 0], masks[1] / 255.0)
    big = provider({"image": tf.zeros((8, 8, 3), tf.uint8), "index": tf.constant(1)}).numpy()
    assert big.shape == (8, 8, 1) and big[0, 0, 0] == 1.0 and big[7, 7, 0] == 0.0


def test_function_masks_call_numpy():
    provider = copy_paste.function_masks(lambda im: (im[..., 0] > 100).astype(np.float32))
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0, 0] = 200
    m = provider({"image": tf.constant(image)}).numpy()
    assert m.shape == (4, 4, 1) and m.sum() == 1 and m[0, 0, 0] == 1


def test_pair_with_previous_gives_the_previous_element():
    ds = tf.data.Dataset.range(20).map(lambda i: {"x": i}).shuffle(20, seed=1).repeat(2)
    paired = list(pipeline.pair_with_previous(ds, {"x": tf.constant(-1, tf.int64)})
                  .as_numpy_iterator())
    xs = [p["x"] for p in paired]
    assert [p["other"]["x"] for p in paired] == [-1] + xs[:-1]


def test_bad_config_values_name_the_choices(tiny):
    with pytest.raises(ValueError, match="valid choices"):
        copy_paste.CopyPasteConfig(blend="soft")
    with pytest.raises(ValueError, match="subset of"):
        copy_paste.CopyPasteConfig(backgrounds="grey,sky")
    c = ml_collections.ConfigDict(dict(prob=0.3, masks="magic", mask_path="",
                                       backgrounds="grey", blend="mix", blur_prob=0.5,
                                       blur_sigma=0.02))
    with pytest.raises(ValueError, match="ground_truth"):
        copy_paste.from_config(c, tiny, "train")
    c.prob = 0.0
    assert copy_paste.from_config(c, tiny, "train") is None


def _first_batch(builder, paste, batch=128, with_index=False):
    it = pipeline.train_iterator(builder, "train", batch, VIEWS, 32, seed=5, copy_paste=paste,
                                 with_index=with_index)
    return next(it)


def test_pipeline_with_prob_zero_matches_no_copy_paste(tiny):
    paste = copy_paste.CopyPaste(copy_paste.CopyPasteConfig(prob=0.0),
                                 copy_paste.ground_truth_masks(), TEXTURES)
    a, b = _first_batch(tiny, paste, 32), _first_batch(tiny, None, 32)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_pipeline_pastes_each_view_independently(tiny, tmp_path):
    # Same seed: the crops are the same with and without copy-paste, so a view differs from
    # the plain pipeline's exactly when it was pasted.
    c = ml_collections.ConfigDict(dict(prob=0.5, masks="ground_truth", mask_path="",
                                       backgrounds="grey,texture,image", blend="mix",
                                       blur_prob=0.5, blur_sigma=5 / 224))
    paste = copy_paste.from_config(c, tiny, "train")
    pasted_batch, plain = _first_batch(tiny, paste), _first_batch(tiny, None)
    np.testing.assert_array_equal(pasted_batch["label"], plain["label"])
    pasted = (pasted_batch["image"] != plain["image"]).any(axis=(2, 3, 4))  # [B, V]
    frac = pasted.mean(0)
    assert ((frac > 0.35) & (frac < 0.65)).all(), frac
    both = (pasted[:, 0] & pasted[:, 1]).mean()
    assert 0.12 < both < 0.38, both  # ~0.25 if independent, ~0.5 if tied
    # File masks (keyed by example index) drive the same machinery: all-ones masks paste
    # nothing visible, so every view equals the plain pipeline's.
    ones = tmp_path / "ones.npy"
    np.save(ones, np.full((1024, 32, 32), 255, np.uint8))
    c.update(masks="file", mask_path=str(ones), prob=1.0)
    same = _first_batch(tiny, copy_paste.from_config(c, tiny, "train"), 32, with_index=True)
    np.testing.assert_array_equal(same["image"], _first_batch(tiny, None, 32)["image"])
    assert same["index"].shape == (32,)
