"""Silhouette and edge stimuli from shape masks, checked against scipy's binary erosion, and
their scoring (accuracy, error consistency) in ssl_jax.evaluation.behaviour."""
import numpy as np
import pytest
from scipy import ndimage

from ssl_jax.evaluation import behaviour
from ssl_jax.evaluation import stimuli as St

CROSS = ndimage.generate_binary_structure(2, 1)  # the 4-neighbourhood


def _masks(n=6, size=16, seed=0):
    """Random blobs, some touching the image border (their outline must run along it)."""
    rng = np.random.default_rng(seed)
    masks = ndimage.binary_opening(rng.uniform(size=(n, size, size)) < 0.6,
                                   structure=np.ones((1, 2, 2)))
    masks[0] = False                 # empty: no shape, no outline
    masks[1] = True                  # full image: the outline is the image's frame
    masks[2, 4:11, 3:9] = True       # a rectangle inside
    return masks


def _reference_boundary(mask, thickness):
    # Independent computation: scipy erosion with outside = unset (border_value=0).
    eroded = ndimage.binary_erosion(mask, CROSS, iterations=thickness, border_value=0)
    return mask & ~eroded


def test_silhouette_is_black_exactly_on_the_mask():
    masks = _masks()
    out = St.silhouette(masks)
    assert out.dtype == np.uint8 and out.shape == masks.shape + (3,)
    np.testing.assert_array_equal(out[masks], 0)
    np.testing.assert_array_equal(out[~masks], 255)


@pytest.mark.parametrize("thickness", [1, 2, 3])
def test_edge_is_black_exactly_on_the_mask_boundary(thickness):
    masks = _masks()
    out = St.edge(masks, thickness)
    assert out.dtype == np.uint8 and out.shape == masks.shape + (3,)
    for mask, img in zip(masks, out):
        want = _reference_boundary(mask, thickness)
        np.testing.assert_array_equal(img[..., 0] == 0, want)
        np.testing.assert_array_equal(img[~want], 255)
    assert not (out[0] == 0).any()  # empty mask: blank stimulus
    frame = np.ones((16, 16), bool)
    frame[1:-1, 1:-1] = False
    np.testing.assert_array_equal(out[1, ..., 0] == 0, frame if thickness == 1 else
                                  _reference_boundary(masks[1], thickness))


def test_stimulus_set_passes_labels_and_accepts_tfds_channel_axis():
    masks = _masks()
    labels = np.arange(len(masks)) % 3
    split = {"mask": masks[..., None].astype(np.uint8), "label": labels, "image": None}
    sil = St.stimulus_set(split, "silhouette")
    edge = St.stimulus_set(split, "edge", thickness=2)
    assert sil["image"].shape == edge["image"].shape == (6, 16, 16, 3)
    assert sil["image"].dtype == edge["image"].dtype == np.uint8
    np.testing.assert_array_equal(sil["label"], labels)
    np.testing.assert_array_equal(edge["label"], labels)
    np.testing.assert_array_equal(edge["image"], St.edge(masks, 2))
    with pytest.raises(ValueError, match="unknown stimulus kind 'outline'; valid: silhouette"):
        St.stimulus_set(split, "outline")
    with pytest.raises(ValueError, match="thickness must be >= 1"):
        St.boundary(masks, 0)


def test_stimulus_sets_from_the_tiny_dataset_follow_its_masks(tiny_data_dir):
    from ssl_jax.data import pipeline

    builder = pipeline.load_builder("shapes_textures/tiny", tiny_data_dir)
    split = behaviour.load_split(builder, "cue_conflict", 8)
    for kind in St.STIMULUS_KINDS:
        got = St.load_stimulus_set(builder, "cue_conflict", kind, 8)
        assert got["image"].shape == split["image"].shape and got["image"].dtype == np.uint8
        np.testing.assert_array_equal(got["label"], split["label"])
    sil = St.load_stimulus_set(builder, "cue_conflict", "silhouette", 8)
    np.testing.assert_array_equal(sil["image"][..., 0] == 0, split["mask"].astype(bool))


def test_scoring_stimuli_and_error_consistency_between_networks():
    masks = _masks(n=8)
    stim = St.stimulus_set({"mask": masks, "label": np.arange(8) % 2}, "edge")
    seen = []

    def predict_from(decide):
        def predict(x):
            seen.append((x.dtype, float(x.max())))
            return decide(x)
        return predict

    # "a" always answers 0 (right on even images), "b" the same, "c" always 1.
    results = {n: {"stimuli": {"edge": behaviour.score_stimuli(
        predict_from(lambda x, v=v: np.full(len(x), v)), stim, batch_size=3)}}
        for n, v in (("a", 0), ("b", 0), ("c", 1))}
    assert all(d == np.float32 and m == 1.0 for d, m in seen)  # floats in [0, 1]
    assert results["a"]["stimuli"]["edge"]["accuracy"] == 0.5
    assert results["a"]["stimuli"]["edge"]["correct"] == [True, False] * 4
    ec = behaviour.stimulus_error_consistency(results, "edge")
    assert ec["names"] == ["a", "b", "c"]
    np.testing.assert_allclose(ec["kappa"], [[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
