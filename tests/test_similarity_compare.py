"""Layer-by-layer comparison of two networks (run_eval configs/eval/similarity.py)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models.taps import IN_BLOCK
from ssl_jax.similarity import compare
from ssl_jax.similarity.activations import flatten_intermediates


class TwoLayerNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.relu(nn.Conv(6, (3, 3))(x))
        self.sow("intermediates", "conv", h)
        self.sow("intermediates", "conv_alias", h)  # a stage alias: same array, kept once
        z = nn.Dense(5)(h.mean(axis=(1, 2)))
        self.sow("intermediates", "fc", z)
        return z


def _hsic1(k, l):
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    ones = np.ones(n)
    return (np.trace(k @ l) + ones @ k @ ones * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones @ k @ l @ ones) / (n * (n - 3))


def _minibatch_cka_reference(xs, ys):
    cross = sum(_hsic1(x @ x.T, y @ y.T) for x, y in zip(xs, ys))
    sx = sum(_hsic1(x @ x.T, x @ x.T) for x in xs)
    sy = sum(_hsic1(y @ y.T, y @ y.T) for y in ys)
    return cross / np.sqrt(sx * sy)


def test_compare_networks_matches_numpy_ratio_of_sums():
    net = TwoLayerNet()
    rng = np.random.default_rng(0)
    batches = [{"image": rng.random((16, 8, 8, 3), dtype=np.float32),
                "label": rng.integers(0, 4, 16)} for _ in range(3)]
    va = net.init(jax.random.key(0), batches[0]["image"], train=False)
    vb = net.init(jax.random.key(1), batches[0]["image"], train=False)
    acts = compare.layer_activations_fn(net.apply, "gap")
    res = compare.compare_networks(acts, va, acts, vb, batches, num_classes=4,
                                   augment=lambda key, x: jnp.flip(x, axis=2), progress=False)
    assert res["layers_a"] == ["conv", "fc"]  # the alias was dropped

    def layer(variables, name, images):
        _, state = net.apply(variables, images, train=False, mutable=["intermediates"])
        a = np.asarray(state["intermediates"][name][0], np.float64)
        return a.mean(axis=(1, 2)) if a.ndim == 4 else a

    for i, la in enumerate(["conv", "fc"]):
        xa = [layer(va, la, b["image"]) for b in batches]
        onehot = [np.eye(4)[b["label"]] for b in batches]
        np.testing.assert_allclose(res["label_cka_a"][i], _minibatch_cka_reference(xa, onehot),
                                   atol=1e-5)
        flipped = [layer(va, la, b["image"][:, :, ::-1]) for b in batches]
        np.testing.assert_allclose(res["augment_cka_a"][i],
                                   _minibatch_cka_reference(xa, flipped), atol=1e-5)
        for j, lb in enumerate(["conv", "fc"]):
            xb = [layer(vb, lb, b["image"]) for b in batches]
            np.testing.assert_allclose(res["cka"][i, j], _minibatch_cka_reference(xa, xb),
                                       atol=1e-5)


def test_a_network_against_itself_has_unit_diagonal():
    net = TwoLayerNet()
    rng = np.random.default_rng(1)
    batches = [{"image": rng.random((12, 8, 8, 3), dtype=np.float32),
                "label": rng.integers(0, 3, 12)} for _ in range(2)]
    v = net.init(jax.random.key(0), batches[0]["image"], train=False)
    acts = compare.layer_activations_fn(net.apply, "flatten")
    res = compare.compare_networks(acts, v, acts, v, batches, num_classes=3, progress=False)
    np.testing.assert_allclose(np.diag(res["cka"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(res["cka"], res["cka"].T, atol=1e-6)
    assert "augment_cka_a" not in res


def _random_variables(model, x):
    """Random parameters and BN statistics by shape: no init to compile (slow on 2 cores)."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    rng = np.random.default_rng(3)

    def draw(s):  # kernels scaled by fan-in (activations stay O(1)); no value near 0
        fan_in = np.prod(s.shape[:-1]) if len(s.shape) > 1 else 1
        return (rng.uniform(0.5, 1.5, s.shape) * rng.choice([-1, 1], s.shape)
                / np.sqrt(fan_in)).astype(s.dtype)

    return jax.tree.map(draw, shapes), shapes


def test_resnet18_layer_sets_in_forward_order():
    from ssl_jax.models import get_model

    model = get_model("resnet18", width=0.125, cifar_stem=True)
    x = jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32)
    _, shapes = _random_variables(model, x)
    assert set(shapes) == {"params", "batch_stats"}  # the in-block sows add no variables
    blocks = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    inner = [f"layer{s}_{b}/relu1" for s in range(1, 5) for b in range(2)]
    expected = {
        "blocks": ["stem", *blocks, "pool"],
        "even": ["stem", *blocks, "pool"],
        "odd": inner,
        "all": ["stem", *[n for pair in zip(inner, blocks) for n in pair], "pool"],
    }
    assert len(expected["all"]) == 1 + 4 * 2 * 2 + 1
    for layer_set, names in expected.items():
        got = []

        def trace(variables, x):  # names are fixed at trace time: shapes only, no compute
            _, state = model.apply(variables, x, train=False,
                                   mutable=["intermediates", IN_BLOCK])
            got[:] = compare.select_layers(flatten_intermediates(state["intermediates"]),
                                           flatten_intermediates(state[IN_BLOCK]), layer_set)
            return 0

        jax.eval_shape(trace, shapes, x)
        assert got == names, layer_set
    with pytest.raises(ValueError, match="layer sets"):
        compare.layer_activations_fn(model.apply, "gap", "inner")


def test_in_block_activations_equal_a_manual_block():
    from ssl_jax.models.resnet import ResNet

    # Two one-block stages: layer2_0 is strided with a downsample shortcut, like ResNet-18's.
    model = ResNet(stage_sizes=(1, 1), width=0.125, cifar_stem=True)
    x = np.random.default_rng(2).random((4, 8, 8, 3), dtype=np.float32)
    variables, _ = _random_variables(model, x)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # var > 0
    names, acts = compare.layer_activations_fn(model.apply, "flatten", "all")(variables, x)
    assert names == ["stem", "layer1_0/relu1", "layer1.0", "layer2_0/relu1", "layer2.0", "pool"]
    acts = dict(zip(names, acts))

    p, s = variables["params"]["layer2_0"], variables["batch_stats"]["layer2_0"]

    def conv_bn(y, conv, bn, strides, pad):  # bn(conv(y)) by hand, eval-mode BN, torch pads
        y = jax.lax.conv_general_dilated(y, p[conv]["kernel"], (strides, strides),
                                         ((pad, pad), (pad, pad)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (np.asarray(y) - s[bn]["mean"]) / np.sqrt(s[bn]["var"] + 1e-5) * p[bn]["scale"] \
            + p[bn]["bias"]

    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
    block_in = acts["layer1.0"].reshape(4, 8, 8, -1)
    relu1 = np.maximum(conv_bn(block_in, "conv1", "bn1", 2, 1), 0)
    assert 0.1 < np.mean(relu1 > 0) < 0.9  # a real mix of active and inactive units
    close(acts["layer2_0/relu1"], relu1.reshape(4, -1))
    # The block output (sown outside the block as "layer2.0"), by hand too.
    out = np.maximum(conv_bn(relu1, "conv2", "bn2", 1, 1)
                     + conv_bn(block_in, "downsample_0", "downsample_1", 2, 0), 0)
    close(acts["layer2.0"], out.reshape(4, -1))
    with pytest.raises(ValueError, match="sows none"):  # a model without residual blocks
        net = TwoLayerNet()
        compare.layer_activations_fn(net.apply, "gap", "all")(
            net.init(jax.random.key(0), x, train=False), x)


def test_best_match_and_curves_equal_numpy(tmp_path):
    cka = np.random.default_rng(4).random((5, 7))
    np.testing.assert_array_equal(compare.best_match(cka), [np.argmax(r) for r in cka])
    np.testing.assert_array_equal(compare.row_max(cka), [np.max(r) for r in cka])
    square = cka[:, :5]
    names = [f"l{i}" for i in range(5)]
    np.testing.assert_array_equal(compare.same_layer_curve(square, names, names),
                                  np.diag(square))
    # By name: B with an extra head layer at the front still pairs l_i with l_i.
    curve = compare.same_layer_curve(cka[:, :6], names + ["x"], ["head"] + names)
    np.testing.assert_array_equal(curve[:5], cka[np.arange(5), np.arange(1, 6)])
    assert np.isnan(curve[5])
    compare.plot_cka_matrix(cka, names, [f"b/l{i}" for i in range(7)], str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_cka_matrix_is_linear_cka_of_every_layer_pair_against_numpy():
    from ssl_jax.similarity import compare

    rng = np.random.default_rng(0)
    a = [rng.normal(size=(50, p)) for p in (3, 7)]
    b = [rng.normal(size=(50, 5)) + a[0] @ rng.normal(size=(3, 5)), np.ones((50, 4))]

    def numpy_cka(x, y):
        x, y = x - x.mean(0), y - y.mean(0)
        return (np.linalg.norm(y.T @ x) ** 2
                / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))

    m = compare.cka_matrix(a, b)
    assert m.shape == (2, 2)
    for i in range(2):
        np.testing.assert_allclose(m[i, 0], numpy_cka(a[i], b[0]), rtol=1e-4)
        assert np.isnan(m[i, 1])  # a constant layer: undefined, not an error
    assert compare.thirds([1, 2, 3, 4, 5, 6, 7]) == [2.0, 4.5, 6.5]  # sizes 3, 2, 2


def test_001_summary_groups_pairs_by_kind_and_splits_odd_even_layers():
    import similarity_methods as sm

    layers = ["b/stem", "b/layer1_0/relu1", "b/layer1.0", "b/layer1_1/relu1", "b/layer1.1",
              "b/pool"]
    assert [sm.is_inner(n) for n in layers] == [False, True, False, True, False, False]
    method_of = {"sup-s0": "supervised", "sup-s1": "supervised", "sim-s0": "simclr"}
    diag = {("sup-s0", "sup-s1"): np.arange(6) / 10, ("sup-s0", "sim-s0"): np.full(6, 0.2),
            ("sup-s1", "sim-s0"): np.full(6, 0.4)}
    cka = {k: np.diag(v) for k, v in diag.items()}
    out = sm.summarise_pairs(cka, layers, method_of)
    assert set(out["all"]) == {"supervised ~ supervised", "simclr ~ supervised"}
    across = out["all"]["simclr ~ supervised"]
    assert across["pairs"] == 2 and np.allclose(across["curve"], 0.3)
    np.testing.assert_allclose(np.array(across["thirds"]),
                               [[0.3, np.std([0.2, 0.4], ddof=1)]] * 3)
    # odd = the two in-block layers (0.1, 0.3), split into thirds of sizes 1, 1, 0
    within = out["odd"]["supervised ~ supervised"]["curve"]
    np.testing.assert_allclose(within, [0.1, 0.3])
    groups = sm.group_thirds(cka, method_of)
    assert {k: v["pairs"] for k, v in groups.items()} == {
        "seeds": 1, "self-supervised ~ supervised": 2}
    np.testing.assert_allclose([m for m, _ in groups["seeds"]["thirds"]], [0.05, 0.25, 0.45])
    # Seeds minus cross-group per third: -0.25 / -0.05 / 0.15, all under 0.2: no divergence.
    assert "with no divergence at the end" in sm.finding(groups)[-1]
    for cross, verdict in (((0.0, 0.1, 0.2), "finding holds here"),       # gaps .05 .15 .25
                           ((0.0, 0.0, 0.0), "holds only for the early layers"),  # .05 .25
                           ((-0.3, 0.0, 0.0), "differ from the first third on")):  # .35
        groups["self-supervised ~ supervised"]["thirds"] = [[c, 0.0] for c in cross]
        assert verdict in sm.finding(groups)[-1]
