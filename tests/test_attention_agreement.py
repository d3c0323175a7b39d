"""Attention agreement between networks (ssl_jax.evaluation.attention_agreement) and 000
Figure 5's binarised top-k confusions (ssl_jax.evaluation.confusion) vs loop / numpy / scipy
references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ssl_jax.data.builtin_textures import SHAPE_NAMES
from ssl_jax.evaluation import attention_agreement as AA
from ssl_jax.evaluation import confusion


def _relu_maps(rng, n, h, w):
    """Grad-CAM-like maps: non-negative with many tied zeros."""
    return np.maximum(rng.normal(size=(n, h, w)), 0).astype(np.float32)


def _iou_ref(a, b):
    ba, bb = a > 0.5 * a.max(), b > 0.5 * b.max()
    union = (ba | bb).sum()
    return (ba & bb).sum() / union if union else 1.0


# ---------------------------------------------------------------------------------------------
# Binarised top-k confusion (000 Figure 5)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_confusion_counts_match_a_loop_with_ties(k):
    rng = np.random.default_rng(0)
    n, c = 300, 10
    logits = rng.integers(0, 4, (n, c)).astype(np.float32)  # many ties
    labels = rng.integers(0, c, n)
    ref = np.zeros((c, c), np.int64)
    for i in range(n):
        top = sorted(range(c), key=lambda j: -logits[i, j])[:k]  # stable: lower class first
        if labels[i] in top:
            ref[labels[i], labels[i]] += 1
        else:
            for j in top:
                ref[labels[i], j] += 1
    counts = confusion.topk_confusion_counts(logits, labels, k)
    np.testing.assert_array_equal(counts, ref)
    hits = np.diag(counts).sum()
    assert counts.sum() == hits + k * (n - hits)


def test_topk_confusion_counts_hand_cases():
    logits = np.array([[1.0, 3.0, 2.0],   # label 0 not in top-2 {1, 2}: cells (0, 1), (0, 2)
                       [1.0, 3.0, 2.0],   # label 2 in top-2: only (2, 2)
                       [5.0, 0.0, 0.0]])  # label 1 vs top-2 {0, 1} (tie -> lower): (1, 1)
    counts = confusion.topk_confusion_counts(logits, np.array([0, 2, 1]), 2)
    np.testing.assert_array_equal(counts, [[0, 1, 1], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion.topk_confusion_counts(logits, np.array([0, 2, 1]), 1),
                                  [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"k must lie in \[1, 3\]"):
        confusion.topk_confusion_counts(logits, np.array([0, 2, 1]), 4)
    with pytest.raises(ValueError, match="labels must lie in"):
        confusion.topk_confusion_counts(logits, np.array([0, 3, 1]), 2)
    with pytest.raises(ValueError, match="need logits"):
        confusion.topk_confusion_counts(logits, np.array([0, 1]), 2)


def test_block_diagonal_fraction_hand_example_and_loop():
    groups = np.array([0, 0, 1])
    counts = np.array([[3, 1, 1], [0, 2, 2], [1, 0, 4]])
    assert confusion.block_diagonal_fraction(counts, groups) == pytest.approx(10 / 14)
    # binarised: 7 activated cells, 4 of them in blocks
    assert confusion.block_diagonal_fraction(counts > 0, groups) == pytest.approx(4 / 7)
    assert np.isnan(confusion.block_diagonal_fraction(np.zeros((3, 3)), groups))
    with pytest.raises(ValueError, match="groups"):
        confusion.block_diagonal_fraction(counts, groups[:2])

    rng = np.random.default_rng(1)
    c = 10
    g = confusion.group_ids(confusion.shapes_textures_grouping(SHAPE_NAMES), c)
    counts = rng.integers(0, 5, (c, c))
    inside = sum(counts[i, j] for i in range(c) for j in range(c) if g[i] == g[j])
    assert confusion.block_diagonal_fraction(counts, g) == pytest.approx(inside / counts.sum())
    # a model whose top-k classes all lie in the true class's group: everything in blocks
    labels = rng.integers(0, c, 200)
    logits = np.where(g[None, :] == g[labels][:, None], 1.0, -1.0) + rng.normal(0, .01, (200, c))
    assert confusion.block_diagonal_fraction(
        confusion.topk_confusion_counts(logits, labels, 2), g) == 1.0


# ---------------------------------------------------------------------------------------------
# Attention agreement (000 section 6)
# ---------------------------------------------------------------------------------------------

def test_identical_maps_agree_perfectly():
    m = _relu_maps(np.random.default_rng(2), 5, 6, 6)
    res = AA.pairwise_agreement({"a": m, "b": m.copy(), "c": 2 * m}, size=6)
    assert res["names"] == ["a", "b", "c"]
    np.testing.assert_allclose(res["iou"], np.ones((3, 3)))
    np.testing.assert_allclose(res["spearman"], np.ones((3, 3)), atol=1e-6)
    assert set(res["per_image"]) == {"a~b", "a~c", "b~c"}


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_pairwise_agreement_matches_scipy_and_numpy_and_is_symmetric():
    rng = np.random.default_rng(3)
    n = 6
    maps = {"sup": _relu_maps(rng, n, 5, 5), "rot": _relu_maps(rng, n, 5, 5),
            "jig": _relu_maps(rng, n, 5, 5)}
    maps["jig"][0] = 0.0  # an all-zero map: Spearman undefined, IoU with non-empty = 0
    res = AA.pairwise_agreement(maps, size=5)
    names = res["names"]
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], start=i + 1):
            per = res["per_image"][AA.pair_key(a, b)]
            rho = [scipy.stats.spearmanr(maps[a][t].ravel(), maps[b][t].ravel()).statistic
                   for t in range(n)]
            np.testing.assert_allclose(per["spearman"], rho, atol=1e-5)  # NaN == NaN
            iou = [_iou_ref(maps[a][t], maps[b][t]) for t in range(n)]
            np.testing.assert_allclose(per["iou"], iou, atol=1e-6)
            assert res["iou"][i, j] == pytest.approx(np.mean(iou))
            assert res["spearman"][i, j] == pytest.approx(np.nanmean(rho), abs=1e-5)
    np.testing.assert_array_equal(res["iou"], res["iou"].T)
    np.testing.assert_array_equal(res["spearman"], res["spearman"].T)
    assert np.all(np.diag(res["iou"]) == 1) and np.all(np.diag(res["spearman"]) == 1)
    assert res["nan_counts"] == {"sup~rot": 0, "sup~jig": 1, "rot~jig": 1}


def test_maps_of_different_sizes_are_resized_bilinearly():
    coarse = np.zeros((2, 4, 4), np.float32)
    coarse[:, 0, 0] = 1.0  # top-left peak
    fine = np.zeros((2, 8, 8), np.float32)
    fine[:, :2, :2] = 1.0  # the same region at twice the resolution
    resized = AA.resize_maps({"coarse": coarse, "fine": fine}, (8, 8))
    assert resized["coarse"].shape == (2, 8, 8)
    np.testing.assert_array_equal(resized["fine"], fine)
    np.testing.assert_allclose(resized["coarse"],
                               jax.image.resize(jnp.asarray(coarse), (2, 8, 8), "bilinear"))
    # bilinear upsampling keeps the peak in the top-left corner: binarised, it lies inside
    # the fine map's top-left 2 x 2 block
    on = resized["coarse"][0] > 0.5 * resized["coarse"][0].max()
    assert on[:2, :2].any() and not on[2:].any() and not on[:, 2:].any()
    res = AA.pairwise_agreement({"coarse": coarse, "fine": fine}, size=8)
    assert 0 < res["iou"][0, 1] <= 1
    with pytest.raises(ValueError, match="same N images"):
        AA.pairwise_agreement({"a": coarse, "b": fine[:1]}, size=8)
    with pytest.raises(ValueError, match=r"must be \[N, h, w\]"):
        AA.pairwise_agreement({"a": coarse[0]}, size=8)


def test_agreement_table_matches_numpy_means_and_sds():
    rng = np.random.default_rng(4)
    n = 8
    maps = {"sup": _relu_maps(rng, n, 6, 6), "ssl": _relu_maps(rng, n, 3, 3)}
    rows = AA.agreement_table(maps, "sup", size=6)
    assert [r["network"] for r in rows] == ["sup", "ssl"]
    sup, ssl = maps["sup"], AA.resize_maps(maps, 6)["ssl"]
    iou = [_iou_ref(ssl[t], sup[t]) for t in range(n)]
    rho = [scipy.stats.spearmanr(ssl[t].ravel(), sup[t].ravel()).statistic for t in range(n)]
    sharp = [(ssl[t] < 0.5 * ssl[t].max()).mean() for t in range(n)]
    for metric, ref in (("iou", iou), ("spearman", rho), ("sharpness", sharp)):
        assert rows[1][metric]["mean"] == pytest.approx(np.mean(ref), abs=1e-5)
        assert rows[1][metric]["sd"] == pytest.approx(np.std(ref, ddof=1), abs=1e-5)
        assert rows[1][metric]["n"] == n
    assert rows[0]["is_reference"] and not rows[1]["is_reference"]
    assert rows[0]["iou"]["mean"] == 1 and rows[0]["iou"]["sd"] == 0
    assert rows[0]["spearman"]["mean"] == pytest.approx(1)
    assert rows[0]["sharpness"]["mean"] == pytest.approx(
        np.mean([(sup[t] < 0.5 * sup[t].max()).mean() for t in range(n)]))
    with pytest.raises(ValueError, match="unknown reference 'sv'"):
        AA.agreement_table(maps, "sv", size=6)
    md = AA.agreement_markdown(rows)
    assert "| *sup* | *1.000 ± 0.000* |" in md and "IoU with sup" in md
    assert f"| ssl | {np.mean(iou):.3f} ± {np.std(iou, ddof=1):.3f} |" in md


def test_per_class_agreement_matches_group_means():
    rng = np.random.default_rng(5)
    names = ["a", "b", "c", "d", "e"]
    labels = rng.integers(0, 4, 60)  # class "e" has no images
    values = rng.random(60)
    values[labels == 1] += 2.0  # b is best
    values[labels == 3] -= 2.0  # d is worst
    values[0] = np.nan
    res = AA.per_class_agreement(values, labels, names, top=2)
    ok = np.isfinite(values)
    means = [values[ok & (labels == c)].mean() for c in range(4)]
    np.testing.assert_allclose(res["mean"][:4], means)
    assert np.isnan(res["mean"][4]) and res["count"][4] == 0
    assert res["count"].sum() == 59
    order = np.argsort(means)
    assert [r["class"] for r in res["top"]] == [names[c] for c in order[::-1][:2]]
    assert [r["class"] for r in res["bottom"]] == [names[c] for c in order[:2]]
    assert res["top"][0]["class"] == "b" and res["bottom"][0]["class"] == "d"
    assert res["top"][0]["value"] == pytest.approx(means[1])
    tied = AA.per_class_agreement(np.ones(4), np.array([2, 0, 1, 2]), names[:3], top=3)
    assert [r["index"] for r in tied["top"]] == [0, 1, 2] == [r["index"] for r in tied["bottom"]]
    with pytest.raises(ValueError, match="labels must lie in"):
        AA.per_class_agreement(values, labels + 2, names)
    with pytest.raises(ValueError, match="must both be"):
        AA.per_class_agreement(values[:3], labels, names)
    md = AA.per_class_markdown({"ssl": {"iou": res}})
    assert md.splitlines()[2].startswith(f"| ssl | IoU | b ({means[1]:.3f}); ")


def test_plots_and_markdown_write_outputs(tmp_path):
    rng = np.random.default_rng(6)
    maps = {"supervised": _relu_maps(rng, 4, 4, 4), "rotation": _relu_maps(rng, 4, 2, 2),
            "jigsaw": _relu_maps(rng, 4, 4, 4)}
    res = AA.pairwise_agreement(maps, size=4)
    AA.plot_agreement({"IoU": res["iou"], "Spearman": res["spearman"]}, res["names"],
                      str(tmp_path / "fig7.png"), title="attention agreement")
    assert (tmp_path / "fig7.png").stat().st_size > 1000
    md = AA.pairwise_markdown(res)
    assert "| | supervised | rotation | jigsaw |" in md and "maps at 4x4" in md
    with pytest.raises(ValueError, match="expected \\(3, 3\\)"):
        AA.plot_agreement({"IoU": res["iou"][:2]}, res["names"], str(tmp_path / "x.png"))

    c = len(SHAPE_NAMES)
    grouping = confusion.shapes_textures_grouping(SHAPE_NAMES)
    labels = rng.integers(0, c, 100)
    counts = {name: confusion.topk_confusion_counts(rng.normal(size=(100, c)), labels, 2)
              for name in ("supervised", "rotation")}
    confusion.plot_binarised_confusions(counts, grouping, SHAPE_NAMES, str(tmp_path / "fig5.png"))
    assert (tmp_path / "fig5.png").stat().st_size > 1000
