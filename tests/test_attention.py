"""Attention maps (Grad-CAM, guided backprop, saliency, occlusion) and their scores, each
checked against an analytic / hand / numpy / scipy reference."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ssl_jax import models
from ssl_jax.evaluation import attention as A
from ssl_jax.models.taps import tap


class ConvGapDense(nn.Module):
    """conv -> ReLU -> (tapped "feat") -> global average pool -> dense: linear in "feat"."""
    num_classes: int = 3
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool):
        a = self.activation(nn.Conv(4, (3, 3), padding="SAME", name="conv")(x))
        a = tap(self, "feat", a)
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(a, axis=(1, 2)))


class TinyReLU(nn.Module):
    """dense -> ReLU -> dense on flat inputs, for a hand computation of guided backprop."""
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(2, name="out")(self.activation(nn.Dense(5, name="hidden")(x)))


def _conv_gap_dense(seed=0, size=6):
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, size, size, 3))
    model = ConvGapDense()
    return model, model.init(jax.random.PRNGKey(seed + 1), x, train=False), x


def test_grad_cam_equals_analytic_map_of_a_model_linear_in_its_conv_features():
    model, variables, x = _conv_gap_dense()
    target = jnp.array([2, 0])
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    act = np.asarray(state["intermediates"]["feat"][0])  # [N, h, w, K]
    kernel = np.asarray(variables["params"]["fc"]["kernel"])  # [K, classes]
    h, w = act.shape[1:3]
    # dS/dA = dense column / (h w) everywhere, so the channel weights are exactly that.
    expected = np.stack([np.maximum(act[n] @ (kernel[:, t] / (h * w)), 0)
                         for n, t in enumerate(np.asarray(target))])
    cam = A.grad_cam(model, variables, x, "feat", target, upsample=False)
    np.testing.assert_allclose(np.asarray(cam), expected, rtol=1e-5, atol=1e-7)
    assert expected.max() > 0  # not a vacuous all-zero comparison
    # Same size conv output: upsampling to the input is the identity; jit-able as documented.
    up = jax.jit(lambda v, x: A.grad_cam(model, v, x, "feat", target))(variables, x)
    np.testing.assert_allclose(np.asarray(up), expected, rtol=1e-5, atol=1e-6)


def test_grad_cam_defaults_to_predicted_class_and_rejects_unknown_layers():
    model, variables, x = _conv_gap_dense()
    pred = jnp.argmax(model.apply(variables, x, train=False), -1)
    np.testing.assert_allclose(A.grad_cam(model, variables, x, "feat"),
                               A.grad_cam(model, variables, x, "feat", pred), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown layer 'conv5'; valid layers: feat"):
        A.grad_cam(model, variables, x, "conv5")


def test_grad_cam_on_a_zoo_resnet_upsamples_to_the_input():
    model = models.get_model("resnet18", num_classes=4, width=0.125, cifar_stem=True)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    assert "perturbations" not in variables  # tap keeps init unchanged
    cam = A.grad_cam(model, variables, x, "layer3")
    assert cam.shape == (2, 16, 16) and bool(jnp.all(cam >= 0))
    with pytest.raises(ValueError, match="conv layer"):
        A.grad_cam(model, variables, x, "pool")


def test_guided_backprop_equals_hand_computation():
    model = TinyReLU()
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
    variables = model.init(jax.random.PRNGKey(4), x, train=False)
    k1 = np.asarray(variables["params"]["hidden"]["kernel"])
    b1 = np.asarray(variables["params"]["hidden"]["bias"])
    k2 = np.asarray(variables["params"]["out"]["kernel"])
    target = np.array([0, 1, 1, 0])
    expected, plain = [], []
    for xi, t in zip(np.asarray(x), target):
        pre = xi @ k1 + b1
        g_a = k2[:, t]  # d logit_t / d relu output
        expected.append(k1 @ (g_a * (pre > 0) * (g_a > 0)))  # guided: positive grads only
        plain.append(k1 @ (g_a * (pre > 0)))
    got = A.guided_backprop(model, variables, x, jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(got), np.stack(expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(A.input_gradient(model, variables, x, target)),
                               np.stack(plain), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.stack(expected), np.stack(plain))  # the test can tell them apart


def test_guided_grad_cam_is_the_elementwise_product_and_needs_an_activation_field():
    model, variables, x = _conv_gap_dense()
    target = jnp.array([1, 2])
    gg = A.guided_grad_cam(model, variables, x, "feat", target)
    ref = (A.guided_backprop(model, variables, x, target)
           * A.grad_cam(model, variables, x, "feat", target)[..., None])
    np.testing.assert_allclose(np.asarray(gg), np.asarray(ref), rtol=1e-6)
    with pytest.raises(ValueError, match="no `activation` field"):
        A.with_activation(nn.Dense(3), A.guided_relu)


def test_with_activation_reaches_a_wrapped_backbone():
    from ssl_jax.methods.supervised import ClassifierNet
    net = ClassifierNet(models.get_model("resnet18", width=0.125, cifar_stem=True), 3)
    assert A.with_activation(net, A.guided_relu).backbone.activation is A.guided_relu


def test_vanilla_saliency_through_a_linear_head_on_features():
    # features = x flattened; logits = features @ w: the saliency is |w column| reshaped.
    w = jax.random.normal(jax.random.PRNGKey(0), (4 * 4 * 2, 3))
    head = A.FittedLinearReadout(w, jnp.zeros(3))
    feats = lambda variables, x, train: x.reshape(x.shape[0], -1)  # noqa: E731
    x = jnp.ones((1, 4, 4, 2))
    sal = A.vanilla_saliency(feats, {}, x, jnp.array([1]), head)
    expected = np.abs(np.asarray(w[:, 1]).reshape(4, 4, 2)).max(-1)
    np.testing.assert_allclose(np.asarray(sal[0]), expected, rtol=1e-6)


def test_occlusion_finds_a_planted_patch():
    # Features respond only to a 4x4 bright square planted at rows 8..11, cols 4..7.
    x = np.full((1, 16, 16, 3), 0.2, np.float32)
    x[:, 8:12, 4:8] = 1.0
    feats = lambda x: jnp.sum(jnp.maximum(x - 0.5, 0.0), axis=(1, 2))  # noqa: E731
    m = np.asarray(A.occlusion_map(feats, jnp.asarray(x), patch=4, stride=2, fill=0.2))
    assert m.shape == (1, 16, 16)
    peak = np.unravel_index(np.argmax(m[0]), m[0].shape)
    assert 8 <= peak[0] < 12 and 4 <= peak[1] < 8
    planted = np.zeros((16, 16), bool)
    planted[8:12, 4:8] = True
    assert m[0, 0, 15] == 0.0  # far-away patches leave the features unchanged
    # Brute-force reference: every 4x4 patch at stride 2 (starts 0, 2, ..., 12), averaged.
    total, count = np.zeros((16, 16)), np.zeros((16, 16))
    clean = np.asarray(feats(jnp.asarray(x)))
    for top in range(0, 13, 2):
        for left in range(0, 13, 2):
            occ = x.copy()
            occ[:, top:top + 4, left:left + 4] = 0.2
            d = np.linalg.norm(np.asarray(feats(jnp.asarray(occ))) - clean)
            total[top:top + 4, left:left + 4] += d
            count[top:top + 4, left:left + 4] += 1
    np.testing.assert_allclose(m[0], total / count, rtol=1e-5, atol=1e-6)
    assert m[0][planted].min() > 0 and m[0][~planted].mean() < m[0][planted].mean()


def test_occlusion_mean_fill_and_cosine():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
    feats = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    m = A.occlusion_map(feats, x, patch=8, stride=8, fill="mean")
    # One patch covering everything: the map is the distance to the mean image everywhere.
    mean_img = jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    d = np.linalg.norm(np.asarray(feats(mean_img) - feats(x)), axis=1)
    np.testing.assert_allclose(np.asarray(m), np.broadcast_to(d[:, None, None], m.shape),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="distance"):
        A.occlusion_map(feats, x, 4, 4, distance="l1")


def test_map_iou_matches_numpy_reference():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 9, 9)), rng.random((3, 9, 9))
    ba, bb = a > 0.5 * a.max(axis=(1, 2), keepdims=True), b > 0.5 * b.max(axis=(1, 2),
                                                                           keepdims=True)
    ref = (ba & bb).sum((1, 2)) / (ba | bb).sum((1, 2))
    np.testing.assert_allclose(np.asarray(A.map_iou(jnp.asarray(a), jnp.asarray(b))), ref,
                               rtol=1e-6)
    np.testing.assert_allclose(A.map_iou(jnp.asarray(a), jnp.asarray(a)), 1.0)
    # Two all-zero maps: both binarise to empty masks, which agree.
    assert float(A.map_iou(jnp.zeros((1, 3, 3)), jnp.zeros((1, 3, 3)))[0]) == 1.0


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, (3, 7, 7)).astype(np.float32)  # many ties
    b = a + rng.normal(0, 2, a.shape).astype(np.float32)
    got = np.asarray(A.spearman(jnp.asarray(a), jnp.asarray(b)))
    ref = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(A.average_ranks(jnp.array([[3.0, 1.0, 3.0, 2.0]])),
                               [[3.5, 1.0, 3.5, 2.0]])


def test_sharpness_is_fraction_below_half_of_max():
    m = jnp.array([[[1.0, 0.6, 0.4, 0.1]], [[0.0, 0.0, 0.0, 0.0]]])
    s = np.asarray(A.sharpness(m))
    assert s[0] == pytest.approx(0.5) and np.isnan(s[1])  # 0.4 and 0.1 are < 0.5 * 1.0


def test_localisation_iou_of_a_map_equal_to_the_mask_is_one(tiny_data_dir):
    import tensorflow_datasets as tfds

    import ssl_jax.data.builtin  # noqa: F401
    ds = tfds.builder("shapes_textures/tiny", data_dir=tiny_data_dir).as_dataset(split="test")
    masks = np.stack([ex["mask"] for ex in tfds.as_numpy(ds.take(4))])  # uint8 [4, R, R, 1]
    maps = masks[..., 0].astype(np.float32) * 3.0  # any positive scale
    np.testing.assert_allclose(np.asarray(A.localisation_iou(jnp.asarray(maps),
                                                             jnp.asarray(masks))), 1.0)
    # Shift the map by a few pixels: reference IoU from numpy.
    shifted = np.roll(maps, 3, axis=2) > 0
    ref = ((shifted & (masks[..., 0] > 0)).sum((1, 2))
           / (shifted | (masks[..., 0] > 0)).sum((1, 2)))
    np.testing.assert_allclose(
        np.asarray(A.localisation_iou(jnp.asarray(np.roll(maps, 3, axis=2)), jnp.asarray(masks))),
        ref, rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        A.localisation_iou(jnp.asarray(maps[:, :-1]), jnp.asarray(masks))


def test_fit_linear_head_folds_standardisation_into_the_weights():
    from ssl_jax.evaluation.attention_report import fit_linear_head
    from ssl_jax.evaluation.linear_probe import fit_logistic_regression
    rng = np.random.default_rng(0)
    f = rng.normal(5.0, 3.0, (60, 4)).astype(np.float32)
    y = (f[:, 0] > 5.0).astype(np.int32)
    w, b = fit_linear_head(f, y, 2)
    mu, sd = f.mean(0), f.std(0) + 1e-6
    p, _ = fit_logistic_regression((f - mu) / sd, y, 1.0, num_classes=2)
    np.testing.assert_allclose(np.asarray(f @ w + b), np.asarray(((f - mu) / sd) @ p.w + p.b),
                               rtol=1e-4, atol=1e-4)


def test_evaluate_attention_writes_json_png_and_markdown(tmp_path):
    import json

    from ssl_jax.evaluation.attention_report import evaluate_attention
    model, variables, x = _conv_gap_dense(size=8)
    x = jax.nn.sigmoid(x)
    mask = np.zeros((2, 8, 8, 1), np.uint8)
    mask[:, 2:6, 2:6] = 1
    batches = [{"image": np.asarray(x), "label": np.array([0, 1]), "mask": mask,
                "valid": np.array([True, True])}]
    record = evaluate_attention(model, variables, batches, str(tmp_path), head=None,
                                num_overlays=2, title="toy")
    assert record["layer"] == "feat" and record["num_examples"] == 2
    assert (record["patch"], record["stride"]) == (2, 1)
    saved = json.loads((tmp_path / "attention.json").read_text())
    m = saved["metrics"]
    for name in ("grad_cam", "guided_grad_cam", "saliency", "occlusion"):
        assert 0.0 <= m[f"localisation_iou/{name}"] <= 1.0
    assert -1.0 <= m["spearman/grad_cam~occlusion"] <= 1.0
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert "| grad_cam ~ occlusion |" in (tmp_path / "attention.md").read_text()


def test_networks_of_one_architecture_share_one_compiled_attention_program(tmp_path):
    """Weights and the linear head are arguments of the jitted maps, not constants: a second
    network with other weights and another head reuses the first one's program, and its maps
    are its own (equal to an un-shared jit of the same maps)."""
    from ssl_jax.evaluation.attention_report import attention_maps, evaluate_attention
    model, _, x = _conv_gap_dense(size=8)
    x = jax.nn.sigmoid(x)
    batches = [{"image": np.asarray(x), "label": np.array([0, 1])}]
    before = attention_maps._cache_size()
    for seed in (3, 4):
        variables = model.init(jax.random.PRNGKey(seed), x, train=False)
        out_dim = variables["params"]["fc"]["kernel"].shape[1]
        head = A.FittedLinearReadout(
            jax.random.normal(jax.random.PRNGKey(seed + 10), (out_dim, 2)), jnp.zeros(2))
        record = evaluate_attention(model, variables, batches, str(tmp_path / str(seed)),
                                    head=head, num_overlays=1)
        cam = jax.jit(lambda v, xi: A.grad_cam(model, v, xi, "feat", jnp.array([0, 1]),
                                               head))(variables, x)
        assert record["metrics"]["sharpness/grad_cam"] == pytest.approx(
            float(np.nanmean(np.asarray(A.sharpness(cam)))), rel=1e-6)
    assert attention_maps._cache_size() == before + 1


@pytest.mark.parametrize("size, stem, expected", [(32, False, "layer2"), (32, True, "layer4"),
                                                  (16, False, "layer1"), (8, False, "layer1")])
def test_default_grad_cam_layer_is_the_last_with_a_4x4_map(size, stem, expected):
    """ResNet-18, strided stem, 32 px: layer4 is 1 x 1 (Grad-CAM would be a constant map),
    layer3 2 x 2, layer2 4 x 4 -> layer2; CIFAR stem: layer4 is 4 x 4. At 8 px nothing is
    4 x 4, so the last of the largest maps (stem, layer1: 2 x 2) -> layer1."""
    from ssl_jax.evaluation.attention_report import last_conv_layer
    net = models.get_model("resnet18", width=0.125, cifar_stem=stem)
    x = jnp.zeros((1, size, size, 3))
    variables = net.init(jax.random.key(0), x, train=False)
    assert last_conv_layer(net, variables, x) == expected
