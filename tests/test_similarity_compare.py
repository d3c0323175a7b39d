"""Layer-by-layer comparison of two networks (run_eval configs/eval/similarity.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.similarity import compare


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
