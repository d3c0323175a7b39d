"""Tests of the dense targets of the built-in dataset (ssl_jax.data.builtin_dense).

A few dozen 32 px examples of `dense32`'s recipe, generated with numpy, checked against
independent computations (scipy erosion, per-pixel loops, finite differences, analytic
surfaces); one tiny TFDS build checks that the features survive storage.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssl_jax.data import builtin
from ssl_jax.data import builtin_dense as dense
from ssl_jax.data import builtin_textures as tex

N = 40
R = 32
OLD_KEYS = {"image", "mask", "bbox", "label", "texture_label", "texture_class", "background"}


def _config(**kwargs):
    return dataclasses.replace(builtin.ShapesTextures.builder_configs["dense32"],
                               **{"num_test": N, **kwargs})


@pytest.fixture(scope="module")
def pair():
    """(dense chunk, the same chunk without `dense`): the latter's image is the albedo."""
    config = _config()
    return (tex.generate_chunk(config, "test", 0),
            tex.generate_chunk(dataclasses.replace(config, dense=False), "test", 0))


def test_dense_adds_targets_and_changes_only_the_image(pair):
    d, plain = pair
    assert set(plain) == OLD_KEYS  # configs without `dense` keep their fields
    for key in OLD_KEYS - {"image"}:
        np.testing.assert_array_equal(d[key], plain[key], err_msg=key)
    shapes = dict(segmentation=((R, R, 1), np.uint8), occlusion_edges=((R, R, 1), np.uint8),
                  texture_edges=((R, R, 1), np.uint8), reshading=((R, R, 1), np.uint8),
                  keypoints=((9, 2), np.float32), keypoint_visible=((9,), np.bool_),
                  height=((R, R, 1), np.float16), depth=((R, R, 1), np.float16),
                  normals=((R, R, 3), np.float16), curvature=((R, R, 1), np.float16))
    for key, (shape, dtype) in shapes.items():
        assert d[key].shape == (N, *shape) and d[key].dtype == dtype, key
    # Where the surface is flat (the ground, a plateau) the shading is the ground's, so
    # the pixel is the albedo; on the relief's slopes the shading shows.
    hy, hx = np.gradient(d["height"][..., 0].astype(np.float32), axis=(1, 2))
    flat = (hx == 0) & (hy == 0)
    assert flat.mean() > 0.4
    np.testing.assert_array_equal(d["image"][flat], plain["image"][flat])
    inside = d["mask"][..., 0].astype(bool)
    assert (d["image"][inside & ~flat] != plain["image"][inside & ~flat]).mean() > 0.5


def test_segmentation_agrees_with_label_and_mask(pair):
    d, _ = pair
    seg, mask = d["segmentation"][..., 0], d["mask"][..., 0].astype(bool)
    assert (seg[~mask] == 0).all()
    for s, m, label in zip(seg, mask, d["label"]):
        assert (s[m] == label + 1).all()


def test_occlusion_edges_are_the_inner_outline_of_the_mask(pair):
    import scipy.ndimage

    d, _ = pair
    for mask, edges in zip(d["mask"][..., 0].astype(bool), d["occlusion_edges"][..., 0]):
        inner = scipy.ndimage.binary_erosion(mask, border_value=0)  # 4-connected cross
        np.testing.assert_array_equal(edges.astype(bool), mask & ~inner)


def test_texture_edges_are_colour_steps_between_same_side_neighbours(pair):
    """A per-pixel loop over the unshaded image (the chunk without `dense`)."""
    d, plain = pair
    step = dense.TEXTURE_EDGE_STEP
    for i in range(8):
        albedo, mask = plain["image"][i].astype(int), d["mask"][i, ..., 0].astype(bool)
        expect = np.zeros((R, R), bool)
        for y in range(R):
            for x in range(R):
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if (0 <= ny < R and 0 <= nx < R and mask[ny, nx] == mask[y, x]
                            and np.abs(albedo[y, x] - albedo[ny, nx]).max() > step):
                        expect[y, x] = True
        np.testing.assert_array_equal(d["texture_edges"][i, ..., 0].astype(bool), expect)
    # Flat backgrounds have none; every texture (>= 88 levels between its colours) has some.
    mask = d["mask"][..., 0].astype(bool)
    edges = d["texture_edges"][..., 0].astype(bool)
    flat = d["background"] == 0
    assert flat.any() and not (edges & ~mask)[flat].any()
    assert (edges & mask).any(axis=(1, 2)).mean() > 0.9


def test_keypoints_lie_on_the_shape(pair):
    """Visible keypoints fall in a mask pixel or next to one (they are points of the
    continuous shape; the mask samples it at pixel centres); invisible ones are (0, 0)."""
    import scipy.ndimage

    d, _ = pair
    visible = d["keypoint_visible"]
    assert visible[:, 1:].mean() > 0.8 and visible.all(axis=0)[5:].all()
    for mask, points, vis in zip(d["mask"][..., 0].astype(bool), d["keypoints"], visible):
        near = scipy.ndimage.binary_dilation(mask, np.ones((3, 3), bool))
        cols, rows = np.floor(points[vis] * R).astype(int).T
        assert near[rows, cols].all()
        assert (points[~vis] == 0).all()
    # In the shape's unit frame every visible keypoint is inside the shape.
    table, table_visible = dense.keypoint_table()
    for k, name in enumerate(tex.SHAPE_NAMES):
        u, v = table[k, table_visible[k]].T
        assert tex._shape_inside(name, u, v).all(), name


def test_keypoints_turn_with_the_shape():
    """Upright shapes put keypoint 1 (the `up` ray) straight above the centre."""
    d = tex.generate_chunk(_config(rotate=False), "test", 0)
    centre, up = d["keypoints"][:, 0], d["keypoints"][:, 1]
    both = d["keypoint_visible"][:, 0] & d["keypoint_visible"][:, 1]
    assert both.sum() > N // 2
    np.testing.assert_allclose(up[both, 0], centre[both, 0], atol=1e-5)
    assert (up[both, 1] < centre[both, 1]).all()


def test_height_is_a_relief_inside_the_mask_only(pair):
    d, _ = pair
    height, mask = d["height"][..., 0].astype(np.float32), d["mask"][..., 0].astype(bool)
    assert (height[~mask] == 0).all() and (height[mask] > 0).all()
    # The peak scales with the shape: RELIEF_HEIGHT radii at most (radius <= 0.45 R).
    assert height.max() <= dense.RELIEF_HEIGHT * 0.45 + 1e-3


def test_normals_are_finite_difference_normals_of_the_height(pair):
    d, _ = pair
    h = d["height"][..., 0].astype(np.float32) * R  # pixels
    hy, hx = np.gradient(h, axis=(1, 2))
    n = np.stack([-hx, -hy, np.ones_like(h)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    np.testing.assert_allclose(d["normals"].astype(np.float32), n, atol=2e-3)


def test_reshading_is_lambertian(pair):
    d, _ = pair
    n = d["normals"].astype(np.float32)
    expect = np.maximum(0, n @ dense.LIGHT)
    np.testing.assert_allclose(d["reshading"][..., 0] / 255.0, expect, atol=4e-3)


def test_depth_is_the_distance_to_the_camera(pair):
    d, _ = pair
    c = (np.arange(R) + 0.5) / R - 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    h = d["height"][..., 0].astype(np.float64)
    expect = np.sqrt(xx ** 2 + yy ** 2 + (dense.CAMERA_HEIGHT - h) ** 2)
    np.testing.assert_allclose(d["depth"][..., 0].astype(np.float64), expect, atol=2e-3)


def test_relief_targets_of_a_sphere_cap():
    """On h = sqrt(rho^2 - r^2) the normal is (x, y, h) / rho and the mean curvature
    -1 / rho (domes negative), away from the rim where differences are accurate."""
    r, rho = 64, 50.0
    c = np.arange(r) - r / 2 + 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    h = np.sqrt(rho ** 2 - xx ** 2 - yy ** 2)[None]
    out = dense.relief_targets(h)
    core = (xx ** 2 + yy ** 2 < 25 ** 2)[None]
    expect = np.stack([xx, yy, h[0]], -1)[None] / rho
    np.testing.assert_allclose(out["normals"][core], expect[core], atol=1e-3)
    np.testing.assert_allclose(out["curvature"][core], -1 / rho, rtol=0.02)
    np.testing.assert_allclose(out["shading"], np.maximum(0, out["normals"] @ dense.LIGHT),
                               atol=1e-6)


def test_dense_targets_are_deterministic_and_seed_dependent(pair):
    d, _ = pair
    again = tex.generate_chunk(_config(), "test", 0)
    other = tex.generate_chunk(_config(seed=99), "test", 0)
    for key in d:
        assert d[key].tobytes() == again[key].tobytes(), key
    assert d["height"].tobytes() != other["height"].tobytes()


def test_dense_features_survive_a_tfds_build(tmp_path):
    """A 12-example build: every dense feature decodes to the generated array."""
    config = _config(name="dense_mini", num_train=12, num_test=0, num_cue_conflict=0,
                     num_workers=1)
    builder = builtin.ShapesTextures(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train", batch_size=-1, shuffle_files=False)
    stored = {k: np.asarray(v) for k, v in tfds.as_numpy(ds).items()}
    gen = tex.generate_chunk(config, "train", 0)
    assert set(stored) == set(gen)
    # TFDS shuffles examples: match them by image bytes.
    a = np.argsort([x.tobytes() for x in stored["image"]])
    b = np.argsort([x.tobytes() for x in gen["image"]])
    for key in gen:
        if key != "bbox":
            np.testing.assert_array_equal(stored[key][a], gen[key][b], err_msg=key)
