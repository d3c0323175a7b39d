"""The task bank (ssl_jax/methods/task_bank.py) and its held-out scoring
(ssl_jax/evaluation/task_quality.py, the task_quality evaluator): corruptions, losses and
metrics against numpy / sklearn references, the trivial baselines, and two tasks trained
end to end by the trainer on `shapes_textures/densetiny`."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
import tensorflow as tf

from ssl_jax.evaluation import task_quality as tq
from ssl_jax.methods import task_bank as tb


def test_every_task_has_a_metric_and_a_group():
    assert set(tq.METRICS) == set(tb.TASKS)
    assert len(tb.TASKS) >= 12
    assert {t.group for t in tb.TASKS.values()} == set(tb.GROUPS)
    with pytest.raises(ValueError, match="unknown task_bank.task 'depth'; valid: class"):
        tb.get_task("depth")


def test_corruptions():
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    key = jax.random.key(1)
    np.testing.assert_array_equal(tb.corrupt(x, "", key, 0.2, 12), x)
    noisy = np.asarray(tb.corrupt(x, "noise", key, 0.2, 12))
    assert noisy.min() >= 0 and noisy.max() <= 1 and 0.1 < np.std(noisy - x) < 0.2
    hole = np.asarray(tb.corrupt(x, "hole", key, 0.2, 12))
    inside = np.zeros((32, 32), bool)
    inside[10:22, 10:22] = True  # (32 - 12) // 2 = 10
    np.testing.assert_array_equal(hole[:, inside], 0.5)
    np.testing.assert_array_equal(hole[:, ~inside], np.asarray(x)[:, ~inside])
    grey = np.asarray(tb.corrupt(x, "grey", key, 0.2, 12))
    np.testing.assert_allclose(grey[..., 0], np.asarray(x) @ [0.299, 0.587, 0.114], rtol=1e-6)
    assert (grey[..., 0] == grey[..., 2]).all()


def test_losses_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    y = (rng.random((3, 8, 8, 1)) > 0.7).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(tb.task_loss("occlusion_edges", logits, y, 12), bce,
                               rtol=1e-5)
    pred, target = rng.random((3, 8, 8, 3)), rng.random((3, 8, 8, 3))
    np.testing.assert_allclose(tb.task_loss("autoencoding", pred, target, 4),
                               ((pred - target) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(tb.task_loss("reshading", pred[..., :1], target[..., :1], 4),
                               np.abs(pred - target)[..., 0].mean(), rtol=1e-5)
    m = np.zeros((8, 8))
    m[2:6, 2:6] = 1
    np.testing.assert_allclose(tb.task_loss("inpainting", pred, target, 4),
                               ((pred - target) ** 2)[:, m > 0].mean(), rtol=1e-5)
    # Normals: 1 - cos of the angle between the prediction (any length) and the unit target.
    normals = rng.normal(size=(3, 8, 8, 3))
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    raw = 2.5 * rng.normal(size=(3, 8, 8, 3))
    cos = np.sum(raw * normals, -1) / np.linalg.norm(raw, axis=-1)
    np.testing.assert_allclose(tb.task_loss("normals", raw.astype(np.float32),
                                            normals.astype(np.float32), 4),
                               np.mean(1 - cos), rtol=1e-4)


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.random(2000) > 0.8
    for scores in (rng.random(2000) + y, np.round(rng.random(2000) * 4) + y,
                   np.tile(rng.random(50), 40)):
        np.testing.assert_allclose(tq.average_precision(scores, y),
                                   100 * sklearn.metrics.average_precision_score(y, scores),
                                   rtol=1e-9)


def test_iou_psnr_angular_and_keypoint_metrics():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, (5, 6, 6)), rng.integers(0, 4, (5, 6, 6))
    np.testing.assert_allclose(
        tq.mean_iou(a, b, 4), 100 * sklearn.metrics.jaccard_score(b.ravel(), a.ravel(),
                                                                  average="macro"))
    np.testing.assert_allclose(tq.binary_iou(a > 1, b > 1),
                               100 * sklearn.metrics.jaccard_score((b > 1).ravel(),
                                                                   (a > 1).ravel()))
    x = rng.random((2, 4, 4, 3))
    assert tq.psnr(x + 0.1, x, None) == pytest.approx(20.0, abs=0.5)  # clipped at 1
    np.testing.assert_allclose(tq.psnr(x * 0 + 0.5, x * 0 + 0.6), 20.0)
    n = np.array([[0.0, 0.0, 1.0]])
    assert tq.angular_error(np.array([[1.0, 0.0, 1.0]]), n) == pytest.approx(45.0)


def test_baselines_are_the_training_statistics():
    rng = np.random.default_rng(3)
    labels = rng.choice(3, 100, p=[0.2, 0.5, 0.3])
    stats = tq.TargetStats("class", 3)
    stats.update(labels[:40])
    stats.update(labels[40:])
    preds = tq.baseline_predictions("class", stats, 7)
    assert set(preds) == {"mean"}
    pred = preds["mean"]
    assert pred.shape == (7, 3) and (np.argmax(pred, -1) == np.bincount(labels).argmax()).all()
    maps = rng.random((10, 4, 4, 1))
    stats = tq.TargetStats("distance", 1)
    stats.update(maps[:4])
    stats.update(maps[4:])
    preds = tq.baseline_predictions("distance", stats, 2)
    np.testing.assert_allclose(preds["mean"][1], maps.mean(0))
    np.testing.assert_allclose(preds["median"][1], np.median(maps, 0))
    normals = rng.normal(size=(9, 2, 2, 3))
    stats = tq.TargetStats("normals", 3)
    stats.update(normals)
    preds = tq.baseline_predictions("normals", stats, 1)
    median = np.median(normals, 0)
    np.testing.assert_allclose(preds["median"][0],
                               median / np.linalg.norm(median, axis=-1, keepdims=True))


def test_median_baseline_wins_on_mostly_flat_normals():
    """A map that is flat (0, 0, 1) at a pixel in most images: the per-pixel median answers
    "flat" and beats the renormalised mean, which tilts towards the minority."""
    rng = np.random.default_rng(0)
    n = np.zeros((200, 3, 3, 3))
    n[..., 2] = 1.0
    tilted = rng.random((200, 3, 3)) < 0.3
    n[tilted] = [0.6, 0.0, 0.8]
    stats = tq.TargetStats("normals", 3)
    stats.update(n[:100])
    preds = tq.baseline_predictions("normals", stats, 100)
    assert (tq.score("normals", preds["median"], n[100:])
            < tq.score("normals", preds["mean"], n[100:]))


def test_keypoint_heatmap_against_a_loop():
    rng = np.random.default_rng(5)
    points = rng.random((2, 9, 2)).astype(np.float32)
    visible = rng.random((2, 9)) > 0.3
    got = np.asarray(tb.keypoint_heatmap(points, visible, 16))[..., 0]
    want = np.zeros((2, 16, 16))
    for b in range(2):
        for i in range(16):
            for j in range(16):
                for k in range(9):
                    if visible[b, k]:
                        d2 = ((j + 0.5) / 16 - points[b, k, 0]) ** 2 + (
                            (i + 0.5) / 16 - points[b, k, 1]) ** 2
                        want[b, i, j] = max(want[b, i, j], np.exp(-d2 * 256 / 2))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A keypoint at a pixel centre peaks there at 1; an invisible one leaves no trace.
    one = np.asarray(tb.keypoint_heatmap(np.array([[[2.5 / 16, 5.5 / 16], [0.5, 0.5]]]),
                                         np.array([[True, False]]), 16))[0, ..., 0]
    assert one[5, 2] == pytest.approx(1.0) and one[8, 8] < 1e-6


def test_whole_image_view_is_the_image():
    from ssl_jax.data import augment, crop

    image = tf.constant(np.random.default_rng(4).integers(0, 256, (32, 32, 3)), tf.uint8)
    view = augment.get_preset("dense").views[0]
    np.testing.assert_array_equal(crop.crop_view(image, None, 32, view).numpy(), image.numpy())


def test_cropping_preset_is_refused():
    from ssl_jax import train
    from ssl_jax.data import augment

    with pytest.raises(ValueError, match="use --config.augment.preset=dense"):
        train.check_whole_image_views(augment.get_preset("supervised"), "task_bank")


@pytest.mark.parametrize("task", ["class", "scene", "keypoints",
                                  pytest.param("segment_class", marks=pytest.mark.slow),
                                  pytest.param("inpainting", marks=pytest.mark.slow)])
def test_every_head_kind_initialises_and_predicts(task):
    from configs import task_bank as config_file

    c = config_file.get_config(f"smoke,task={task}")
    method = tb.Method(c)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    params, state = method.init(jax.random.key(1), x)
    pred, seen = tb.predict(method.net, {"params": params, **state}, x, jax.random.key(2))
    want = {"class": (2, 10), "scene": (2, 4), "segment_class": (2, 32, 32, 11), "keypoints": (2, 32, 32, 1),
            "inpainting": (2, 32, 32, 3)}[task]
    assert pred.shape == want
    assert (np.asarray(seen) != np.asarray(x)).any() == (task == "inpainting")
    feats = method.features(params, state, x)
    assert feats.shape == (2, method.net.backbone.num_features)
    assert jnp.isfinite(pred).all()


@pytest.fixture(scope="module")
def dense_data_dir(tmp_path_factory):
    """A TFDS data_dir with `shapes_textures/densetiny`, built once for this module."""
    import tensorflow_datasets as tfds

    import ssl_jax.data.builtin  # noqa: F401

    path = str(tmp_path_factory.mktemp("tfds_dense"))
    tfds.builder("shapes_textures/densetiny", data_dir=path).download_and_prepare()
    return path


@pytest.mark.parametrize("task", ["segment_fg",
                                  pytest.param("scene", marks=pytest.mark.slow),
                                  pytest.param("denoising", marks=pytest.mark.slow)])
def test_trainer_runs_a_bank_task_and_scores_it(task, tmp_path, dense_data_dir):
    from configs import task_bank as config_file
    from ssl_jax import train

    c = config_file.get_config(f"smoke,task={task}")
    c.dataset.data_dir = dense_data_dir
    final = train.train(c, str(tmp_path / "run"))
    for key in ("task_score", "task_baseline", "task_gain"):
        assert np.isfinite(final[key])
    higher = tq.METRICS[task][2]
    assert final["task_gain"] == pytest.approx(
        (final["task_score"] - final["task_baseline"]) * (1 if higher else -1))
    with open(os.path.join(tmp_path / "run", "final_metrics.json")) as f:
        assert json.load(f)["task_score"] == pytest.approx(final["task_score"])
