"""Tests of the built-in `shapes_textures` TFDS dataset (ssl_jax.data.builtin).

The `tiny` config is built once per module into a temp dir and read back through TFDS;
the other tests check properties of that data against independent numpy / sklearn /
skimage computations.
"""
import dataclasses
import glob
import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssl_jax.data import builtin
from ssl_jax.data import builtin_textures as tex

K = len(builtin.SHAPE_NAMES)
T = len(builtin.TEXTURE_NAMES)


def _tiny_config() -> builtin.ShapesTexturesConfig:
    return next(c for c in builtin.ShapesTextures.BUILDER_CONFIGS if c.name == "tiny")


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
    ds = builder.as_dataset(split=split, batch_size=-1)
    return {k: np.asarray(v) for k, v in tfds.as_numpy(ds).items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(data_dir, builder, {split: arrays}) of `tiny` built through tfds.builder by name."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds.builder("shapes_textures/tiny", data_dir=data_dir)
    builder.download_and_prepare()
    return data_dir, builder, {s: _read_split(builder, s) for s in builtin.SPLITS}


def test_builder_info_and_split_sizes(built):
    _, builder, data = built
    config = _tiny_config()
    assert builder.info.supervised_keys == ("image", "label")
    assert builder.info.features["label"].names == list(builtin.SHAPE_NAMES)
    assert builder.info.features["texture_label"].names == list(builtin.TEXTURE_NAMES)
    assert builder.info.features["background"].names == ["flat", "gradient", "noise", "natural"]
    for split in builtin.SPLITS:
        arrays = data[split]
        n = config.split_size(split)
        assert builder.info.splits[split].num_examples == n
        assert arrays["image"].shape == (n, 32, 32, 3) and arrays["image"].dtype == np.uint8
        assert arrays["mask"].shape == (n, 32, 32, 1) and arrays["mask"].dtype == np.uint8
        assert set(np.unique(arrays["mask"])) == {0, 1}
        assert arrays["label"].min() >= 0 and arrays["label"].max() < K
        assert arrays["texture_label"].min() >= 0 and arrays["texture_label"].max() < T
        assert arrays["background"].min() >= 0 and arrays["background"].max() < 4
    # The generation parameters travel with the data (metadata.json), read back here.
    reloaded = tfds.builder("shapes_textures/tiny", data_dir=built[0])
    assert reloaded.info.metadata["generation"]["texture_correlation"] == 0.5
    assert reloaded.info.metadata["class_texture"] == builtin.CLASS_TEXTURE
    supervised = builder.as_dataset(split="test", as_supervised=True).take(1)
    (image, label), = tfds.as_numpy(supervised)
    assert image.shape == (32, 32, 3) and 0 <= label < K


def test_tfds_data_equals_generator_output(built):
    """What TFDS stores (PNG, shuffled) decodes back to exactly the generated arrays."""
    _, _, data = built
    config = _tiny_config()
    for split in ("train", "cue_conflict"):
        chunks = [builtin.generate_chunk(config, split, c)
                  for c in range(-(-config.split_size(split) // tex.CHUNK))]
        gen = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        # Match examples by image bytes, since TFDS shuffles the order.
        key = lambda d: np.argsort([x.tobytes() for x in d["image"]])  # noqa: E731
        a, b = key(data[split]), key(gen)
        for field in ("image", "mask", "label", "texture_label", "texture_class", "background"):
            np.testing.assert_array_equal(data[split][field][a], gen[field][b], err_msg=field)
        np.testing.assert_allclose(data[split]["bbox"][a], gen["bbox"][b], atol=1e-6)


def test_rebuild_in_worker_processes_gives_identical_bytes(built, tmp_path, monkeypatch):
    """A second build of `train`, by 2 spawned workers, writes the same record bytes."""
    data_dir, _, _ = built
    monkeypatch.setattr(builtin, "_MIN_CHUNKS_FOR_POOL", 1)  # tiny is below the default
    # Same generation parameters, only the train split (to keep the test short).
    config = dataclasses.replace(_tiny_config(), name="tiny_pool", num_workers=2,
                                 num_test=0, num_cue_conflict=0)
    builtin.ShapesTextures(config=config, data_dir=str(tmp_path)).download_and_prepare()
    pattern = "shapes_textures/{}/*/*-train.tfrecord*"
    first = sorted(glob.glob(os.path.join(data_dir, pattern.format("tiny"))))
    second = sorted(glob.glob(os.path.join(tmp_path, pattern.format("tiny_pool"))))
    assert len(first) == len(second) >= 1
    for f, s in zip(first, second):
        assert os.path.basename(f) == os.path.basename(s)
        assert open(f, "rb").read() == open(s, "rb").read(), f


def test_records_have_sorted_feature_maps_and_patch_is_scoped(built):
    """Byte-identical builds across processes need process-independent proto map order:
    every record lists its features in sorted key order. The serializer patch that does
    this must not outlive the build."""
    data_dir, _, _ = built
    path, = glob.glob(os.path.join(data_dir, "shapes_textures/tiny/*/*-test.tfrecord*"))
    keys = [b"background", b"bbox", b"image", b"label", b"mask", b"texture_class",
            b"texture_label"]
    for i, record in enumerate(tf_records(path)):
        # Each key is a length-prefixed string inside its map entry; find "\n<len><key>".
        where = [record.find(b"\n" + bytes([len(k)]) + k) for k in keys]
        assert min(where) >= 0 and where == sorted(where), (i, where)
    serializer = tfds.core.example_serializer.ExampleSerializer.serialize_example
    assert serializer.__qualname__ == "ExampleSerializer.serialize_example"


def tf_records(path: str) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def test_every_class_and_texture_present_and_classes_balanced(built):
    _, _, data = built
    for split in ("train", "test"):
        counts = np.bincount(data[split]["label"], minlength=K)
        # Balanced within each 512-example chunk: totals differ by at most #chunks.
        assert counts.min() > 0 and counts.max() - counts.min() <= 2, counts
        assert set(np.unique(data[split]["texture_label"])) == set(range(T)), split
    assert set(np.unique(data["test"]["background"])) == {0, 1, 2, 3}


def test_bbox_equals_mask_extent(built):
    _, _, data = built
    for split in builtin.SPLITS:
        masks, boxes = data[split]["mask"][..., 0], data[split]["bbox"]
        for m, box in zip(masks, boxes):
            rows, cols = np.nonzero(m)
            expect = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / 32
            np.testing.assert_allclose(box, expect, atol=1e-6)


def test_mask_matches_image_on_flat_backgrounds(built):
    """Flat background: outside the mask is one colour, inside it mostly is not."""
    _, _, data = built
    arrays = data["test"]
    flat = np.flatnonzero(arrays["background"] == 0)
    assert flat.size > 50
    for i in flat:
        img, m = arrays["image"][i].astype(int), arrays["mask"][i, ..., 0].astype(bool)
        outside = img[~m]
        assert (outside == outside[0]).all(), i
        same_as_bg = (img[m] == outside[0]).all(axis=1).mean()
        assert same_as_bg < 0.2, (i, same_as_bg)


def test_cue_conflict_texture_belongs_to_another_class(built):
    _, _, data = built
    arrays = data["cue_conflict"]
    class_texture = np.array([builtin.TEXTURE_NAMES.index(builtin.CLASS_TEXTURE[s])
                              for s in builtin.SHAPE_NAMES])
    assert (arrays["texture_label"] != class_texture[arrays["label"]]).all()
    assert (arrays["texture_class"] != arrays["label"]).all()
    np.testing.assert_array_equal(class_texture[arrays["texture_class"]],
                                  arrays["texture_label"])
    # The conflicting class j is spread over all other classes.
    for c in range(K):
        others = arrays["texture_class"][arrays["label"] == c]
        assert len(set(others)) >= K - 3, (c, np.bincount(others, minlength=K))


def _within_binomial(hits: int, n: int, p: float, z: float = 4.0) -> bool:
    return abs(hits - n * p) <= z * np.sqrt(n * p * (1 - p))


def test_texture_and_background_correlation_match_config(built):
    _, _, data = built
    config = _tiny_config()
    class_texture = np.array([builtin.TEXTURE_NAMES.index(builtin.CLASS_TEXTURE[s])
                              for s in builtin.SHAPE_NAMES])
    class_bg = np.array([builtin.BACKGROUND_NAMES.index(builtin.CLASS_BACKGROUND[s])
                         for s in builtin.SHAPE_NAMES])
    train, test = data["train"], data["test"]
    n = len(train["label"])
    p = config.texture_correlation
    hits = (train["texture_label"] == class_texture[train["label"]]).sum()
    assert _within_binomial(hits, n, p + (1 - p) / T), hits
    q = config.background_correlation  # uniform weights: a free kind matches w.p. 1/4
    hits = (train["background"] == class_bg[train["label"]]).sum()
    assert _within_binomial(hits, n, q + (1 - q) / 4), hits
    # In `test` texture and background are independent of the class.
    m = len(test["label"])
    assert _within_binomial((test["texture_label"] == class_texture[test["label"]]).sum(), m, 1 / T)
    assert _within_binomial((test["background"] == class_bg[test["label"]]).sum(), m, 1 / 4)


def test_labels_are_carried_by_shape_not_by_pixels(built):
    """Honest data: linear on raw pixels ~ chance; shape moments of the mask ~ perfect."""
    import skimage.measure
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import RidgeClassifier

    _, _, data = built
    train, test = data["train"], data["test"]
    pixels = lambda d: d["image"].reshape(len(d["image"]), -1) / 255.0  # noqa: E731
    linear = RidgeClassifier(alpha=10.0).fit(pixels(train), train["label"])
    pixel_acc = linear.score(pixels(test), test["label"])

    def hu(d):  # rotation / scale / translation invariant shape moments
        h = np.array([skimage.measure.moments_hu(skimage.measure.moments_normalized(
            skimage.measure.moments_central(m[..., 0].astype(float)), 3)) for m in d["mask"]])
        return -np.sign(h) * np.log10(np.abs(h) + 1e-12)

    forest = RandomForestClassifier(100, random_state=0).fit(hu(train), train["label"])
    shape_acc = forest.score(hu(test), test["label"])
    assert pixel_acc < 0.3, pixel_acc
    assert shape_acc > 0.85, shape_acc


def test_natural_texture_is_a_crop_of_skimage_brick():
    """Template search (all rotations) finds a brick crop in skimage's brick, not grass."""
    import skimage.data
    import skimage.feature
    import skimage.transform

    r = 32
    crop = tex.render_textures(np.array([tex.TEXTURE_NAMES.index("brick")]), r,
                               np.random.default_rng(3))[0]

    def best_match(name: str) -> float:
        src = skimage.transform.resize(getattr(skimage.data, name)().astype(np.float32),
                                       (4 * r, 4 * r), anti_aliasing=True)
        best = 0.0
        for zoom in (0.9, 1.12):
            scaled = skimage.transform.rescale(src, 1 / zoom, order=0)
            for angle in range(0, 360, 5):
                view = skimage.transform.rotate(scaled, angle, order=0)
                best = max(best, float(skimage.feature.match_template(view, crop).max()))
        return best

    brick, grass = best_match("brick"), best_match("grass")
    assert brick > 0.55 and brick > grass + 0.2, (brick, grass)


def test_encode_png_round_trips_through_pil():
    from PIL import Image

    rng = np.random.default_rng(0)
    for shape in [(5, 7, 3), (4, 9, 1)]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(builtin.encode_png(x))))
        np.testing.assert_array_equal(decoded.reshape(shape), x)
    with pytest.raises(ValueError, match="uint8"):
        builtin.encode_png(np.zeros((4, 4, 3), np.float32))


def test_hsv_to_rgb_matches_colorsys():
    import colorsys

    rng = np.random.default_rng(1)
    h, s, v = rng.random((3, 50))
    ours = tex.hsv_to_rgb(h, s, v)
    ref = np.array([colorsys.hsv_to_rgb(*t) for t in zip(h, s, v)]) * 255
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_generate_chunk_is_deterministic_and_seed_dependent():
    config = _tiny_config()
    a = builtin.generate_chunk(config, "test", 0)
    b = builtin.generate_chunk(config, "test", 0)
    c = builtin.generate_chunk(dataclasses.replace(config, seed=1), "test", 0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert (a["image"] != c["image"]).any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(texture_correlation=1.5), "texture_correlation"),
    (dict(background_weights=(1.0, 0.0, 0.0)), "background_weights"),
    (dict(scale_range=(0.9, 0.5)), "scale_range"),
    (dict(resolution=8), "resolution"),
    (dict(num_test=-1), "num_test"),
    (dict(num_workers=-2), "num_workers"),
    (dict(texture_contrast=0.0), "texture_contrast"),
    (dict(texture_contrast=1.5), "texture_contrast"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        builtin.ShapesTexturesConfig(name="bad", **kwargs)


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="cue_conflict"):
        builtin.generate_chunk(_tiny_config(), "validation", 0)


def test_every_shape_fits_the_unit_disk_and_is_distinct():
    """Placement keeps the unit disk inside the image, so no shape may leave it."""
    c = np.linspace(-1.5, 1.5, 301)
    v, u = np.meshgrid(c, c, indexing="ij")
    masks = {}
    for name in builtin.SHAPE_NAMES:
        inside = tex._shape_inside(name, u, v)
        assert inside.sum() > 0.2 * np.pi / 9 * c.size ** 2, name  # >= 20% of the disk
        assert (u[inside] ** 2 + v[inside] ** 2).max() <= 1.0, name
        masks[name] = inside
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.9, (a, b, iou)


def test_backgrounds_flat_gradient_noise_have_their_statistics():
    """Flat: one colour; gradient: a plane in (x, y) up to rounding; noise: sd ~25."""
    r, n = 32, 6
    rng = np.random.default_rng(2)
    flat = tex.render_backgrounds(np.zeros(n, int), r, rng).astype(float)
    assert (flat == flat[:, :1, :1]).all()
    grad = tex.render_backgrounds(np.ones(n, int), r, rng).astype(float)
    yy, xx = np.mgrid[0:r, 0:r]
    design = np.stack([xx.ravel(), yy.ravel(), np.ones(r * r)], axis=1)
    for img in grad:
        coef, *_ = np.linalg.lstsq(design, img.reshape(r * r, 3), rcond=None)
        # Rounding to uint8 leaves <= 0.5 from the true plane; the fit adds a little.
        assert np.abs(design @ coef - img.reshape(r * r, 3)).max() <= 1.0
    assert grad.std(axis=(1, 2)).max() > 5  # not accidentally flat
    noise = tex.render_backgrounds(np.full(200, 2), r, rng).astype(float)
    # Neighbour differences cancel the smooth 4x4 field; uniform noise of sd 25 leaves
    # sd 25 * sqrt(2) (a little less where clipping at 0 / 255 bites).
    diff = np.diff(noise, axis=2)
    assert 30 < diff.std() < 37, diff.std()


def test_chunk_out_of_range_raises():
    config = _tiny_config()
    for chunk in (-1, 2):
        with pytest.raises(ValueError, match="outside split"):
            builtin.generate_chunk(config, "train", chunk)


def test_biased_background_is_a_shortcut_in_train_only():
    """Background colour statistics (mask excluded) predict the class in biased32's
    train split (background_correlation 0.9) and are at chance in its test split."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    config = next(c for c in builtin.ShapesTextures.BUILDER_CONFIGS if c.name == "biased32")

    def background_stats(d):
        outside = np.where(d["mask"].astype(bool), np.nan, d["image"].astype(float))
        return np.concatenate([np.nanmean(outside, (1, 2)), np.nanstd(outside, (1, 2))], 1)

    acc = {}
    for split in ("train", "test"):
        d = builtin.generate_chunk(config, split, 0)
        forest = RandomForestClassifier(50, random_state=0)
        acc[split] = cross_val_score(forest, background_stats(d), d["label"], cv=4).mean()
    assert acc["train"] > 0.6 and acc["test"] < 0.25, acc


def test_foreground_colour_follows_class_in_train_only():
    """uprightfg64 (foreground_colour_correlation 0.9) changes only the foreground colours of
    train, and there their statistics predict the class; in test they are at chance."""
    import dataclasses

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    config = dataclasses.replace(builtin.ShapesTextures.builder_configs["uprightfg64"],
                                 resolution=32, num_train=512, num_test=512)
    free = dataclasses.replace(config, foreground_colour_correlation=0.0)

    def foreground_stats(d):
        inside = np.where(d["mask"].astype(bool), d["image"].astype(float), np.nan)
        return np.concatenate([np.nanmean(inside, (1, 2)), np.nanstd(inside, (1, 2))], 1)

    acc = {}
    for split in ("train", "test"):
        d, d0 = (builtin.generate_chunk(c, split, 0) for c in (config, free))
        for key in ("label", "texture_label", "background", "mask"):
            np.testing.assert_array_equal(d[key], d0[key])
        outside = ~d["mask"].astype(bool)[..., 0]
        np.testing.assert_array_equal(d["image"][outside], d0["image"][outside])
        forest = RandomForestClassifier(50, random_state=0)
        acc[split] = cross_val_score(forest, foreground_stats(d), d["label"], cv=4).mean()
    assert acc["train"] > 0.6 and acc["test"] < 0.25, acc


def test_texture_family_is_recognisable_inside_the_mask(built):
    """Textures are distinct: rotation-invariant LBP histograms of the pixels inside the
    mask predict `texture_label` far above chance (10%), whatever the random colours."""
    import skimage.feature
    from sklearn.ensemble import RandomForestClassifier

    _, _, data = built

    def lbp_features(d):
        rows = []
        for img, m in zip(d["image"], d["mask"][..., 0].astype(bool)):
            grey = np.round(img.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8)
            # Interior pixels only, so the neighbourhoods do not see the background.
            inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            feats = []
            for radius in (1, 2):
                lbp = skimage.feature.local_binary_pattern(grey, 8, radius, method="uniform")
                feats += list(np.bincount(lbp[inner].astype(int), minlength=10)
                              / max(inner.sum(), 1))
            rows.append(feats)
        return np.array(rows)

    forest = RandomForestClassifier(100, random_state=0)
    forest.fit(lbp_features(data["train"]), data["train"]["texture_label"])
    acc = forest.score(lbp_features(data["test"]), data["test"]["texture_label"])
    assert acc > 0.5, acc


def test_partial_last_chunk_has_the_remaining_examples():
    config = dataclasses.replace(_tiny_config(), num_test=tex.CHUNK + 30)
    last = builtin.generate_chunk(config, "test", 1)
    assert last["image"].shape == (30, 32, 32, 3)
    assert np.bincount(last["label"], minlength=K).tolist() == [3] * K  # balanced
    # The first chunk does not depend on how many examples follow it.
    np.testing.assert_array_equal(builtin.generate_chunk(config, "test", 0)["image"],
                                  builtin.generate_chunk(_tiny_config(), "test", 0)["image"])


def test_faint_texture_changes_only_the_foreground_and_narrows_its_colour_range():
    """texture_contrast < 1 (faint32: 0.25) leaves every other factor as it was and puts a
    texture's two colours at most 0.25 x 168 apart per channel, with no mod-256 wrap-around
    (a wrap would turn a small step into a large one)."""
    import dataclasses

    config = dataclasses.replace(builtin.ShapesTextures.builder_configs["faint32"],
                                 num_train=512)
    full = dataclasses.replace(config, texture_contrast=1.0)
    d, d1 = (builtin.generate_chunk(c, "train", 0) for c in (config, full))
    for key in ("label", "texture_label", "background", "mask"):
        np.testing.assert_array_equal(d[key], d1[key])
    inside = d["mask"].astype(bool)[..., 0]
    np.testing.assert_array_equal(d["image"][~inside], d1["image"][~inside])
    # Per image and channel, the spread of foreground values is the colour distance.
    spread = [np.ptp(img[m], axis=0) for img, m in zip(d["image"], inside)]
    spread1 = [np.ptp(img[m], axis=0) for img, m in zip(d1["image"], inside)]
    assert max(s.max() for s in spread) <= round(0.25 * 168) + 1
    assert np.median([s.max() for s in spread]) > 15  # the texture is still there
    assert np.median([s.max() for s in spread1]) > 80  # full contrast, for comparison


def test_grey_variant_is_the_luminance_of_the_colour_image():
    """faintgrey32 (grey=True) stores each image as the ITU-R 601 luma of the colour image
    it would otherwise be (checked against PIL's "L" conversion), in all three channels."""
    import dataclasses

    from PIL import Image

    config = dataclasses.replace(builtin.ShapesTextures.builder_configs["faintgrey32"],
                                 num_train=512)
    d, colour = (builtin.generate_chunk(c, "train", 0)
                 for c in (config, dataclasses.replace(config, grey=False)))
    for key in ("label", "texture_label", "background", "mask"):
        np.testing.assert_array_equal(d[key], colour[key])
    assert (d["image"][..., 0] == d["image"][..., 1]).all()
    assert (d["image"][..., 0] == d["image"][..., 2]).all()
    pil = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in colour["image"]])
    assert np.abs(d["image"][..., 0].astype(int) - pil).max() <= 1
