"""Per-layer probes, confusion structure and retrieval (ssl_jax.evaluation) vs independent
numpy / sklearn references."""
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import ssl_jax.evaluation as ev
from ssl_jax.data.builtin_textures import SHAPE_NAMES
from ssl_jax.evaluation import confusion


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    np.testing.assert_array_equal(ev.confusion_matrix(y, p, 7),
                                  sk_confusion_matrix(y, p, labels=range(7)))
    acc = ev.per_class_accuracy(ev.confusion_matrix(y, p, 7))
    np.testing.assert_allclose(acc, [100 * np.mean(p[y == c] == c) for c in range(7)])
    with pytest.raises(ValueError, match="preds must lie in"):
        ev.confusion_matrix(y, p + 1, 7)


def test_within_group_top5_fraction_matches_loop():
    rng = np.random.default_rng(1)
    n, c = 300, 12
    logits, labels = rng.normal(size=(n, c)), rng.integers(0, c, n)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    wrong = same = 0
    for i in range(n):
        for j in np.argsort(-logits[i])[:5]:
            if j != labels[i]:
                wrong += 1
                same += groups[j] == groups[labels[i]]
    assert ev.within_group_top5_error_fraction(logits, labels, groups) == pytest.approx(same / wrong)
    # perfect group structure: every wrong top-5 class is in the true group
    grouping = [("a", list(range(6))), ("b", list(range(6, 12)))]
    g = confusion.group_ids(grouping, 12)
    structured = np.where(g[None, :] == g[labels][:, None], 1.0, -1.0) + rng.normal(0, .01, (n, c))
    assert ev.within_group_top5_error_fraction(structured, labels, g) == 1.0


def test_groupings_cover_every_class_once():
    imagenet = ev.imagenet_grouping()
    confusion.check_grouping(imagenet, 1000)
    assert dict(imagenet)["dog"] == list(range(151, 269))
    assert len(dict(imagenet)["other animal"]) + sum(
        hi - lo + 1 for _, lo, hi in confusion.IMAGENET_RANGES) == 398
    shapes = ev.shapes_textures_grouping(SHAPE_NAMES)
    confusion.check_grouping(shapes, 10)
    assert confusion.class_order(shapes)[:4].tolist() == [0, 9, 6, 5]  # circle ring crescent heart
    with pytest.raises(ValueError, match="exactly one group"):
        confusion.check_grouping([("a", [0, 1]), ("b", [1])], 3)
    parsed = confusion.parse_grouping("round:circle+ring;rest:1+2+3+4+5+6+7+8", SHAPE_NAMES)
    assert parsed == [("round", [0, 9]), ("rest", [1, 2, 3, 4, 5, 6, 7, 8])]
    with pytest.raises(ValueError, match="unknown class 'blob'"):
        confusion.parse_grouping("x:blob", SHAPE_NAMES)


def test_class_differences_rank_by_accuracy_gap():
    acc = np.array([90.0, 50.0, 70.0, 10.0])
    ref = np.array([80.0, 70.0, 70.0, 40.0])
    out = ev.class_differences(acc, ref, ["a", "b", "c", "d"], k=2)
    assert [r["class"] for r in out["strongest"]] == ["a", "c"]
    assert [r["class"] for r in out["weakest"]] == ["d", "b"]
    assert out["weakest"][0]["difference"] == -30.0


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(9, 16)), rng.normal(size=(200, 16))
    idx, sims = ev.nearest_neighbours(q, g, k=4, batch_size=4)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        g / np.linalg.norm(g, axis=1, keepdims=True)).T
    for i in range(9):
        ref = sorted(range(200), key=lambda j: -cos[i, j])[:4]
        assert idx[i].tolist() == ref
        np.testing.assert_allclose(sims[i], cos[i, ref], rtol=1e-5)
    with pytest.raises(ValueError, match="k must be in"):
        ev.nearest_neighbours(q, g, k=201)


def test_per_layer_probe_separable_layer_beats_noise_layer(tmp_path):
    rng = np.random.default_rng(3)
    n, m, c = 300, 200, 3
    ytr, yte = rng.integers(0, c, n), rng.integers(0, c, m)
    centres = 5.0 * np.eye(c, 8)
    train = {"separable": centres[ytr] + rng.normal(size=(n, 8)),
             "noise": rng.normal(size=(n, 8))}
    test = {"separable": centres[yte] + rng.normal(size=(m, 8)),
            "noise": rng.normal(size=(m, 8))}
    res = ev.per_layer_probe(train, ytr, test, yte, num_classes=c, probe_grid=5, progress=False)
    assert list(res) == ["separable", "noise"]
    assert res["separable"]["top1"] > 95.0
    assert res["noise"]["top1"] < 50.0  # chance is 33%
    ev.plot_per_layer({"model": res}, str(tmp_path / "layers.png"))
    assert (tmp_path / "layers.png").stat().st_size > 1000


def test_plots_write_pngs(tmp_path):
    cm = np.arange(100).reshape(10, 10)
    ev.plot_confusion(cm, ev.shapes_textures_grouping(SHAPE_NAMES), SHAPE_NAMES,
                      str(tmp_path / "cm.png"))
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    ev.plot_retrieval_grid(imgs, np.zeros((2, 3, 8, 8, 3), np.uint8), str(tmp_path / "r.png"),
                           ["a", "b"], [["a"] * 3] * 2, np.ones((2, 3)))
    assert (tmp_path / "cm.png").stat().st_size > 1000 and (tmp_path / "r.png").stat().st_size > 1000
