"""Activation capture from a tiny Linen model that sows a conv, a reused activation module and a
dense output, checked against direct numpy/torch computations on the whole dataset."""
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_jax.similarity import capture


class _Act(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.relu(x)
        self.sow("intermediates", "out", y)
        return y


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        act = _Act()  # reused: sows twice -> "_Act_0/out[0]", "_Act_0/out[1]"
        h = nn.Conv(4, (3, 3), padding="SAME")(x)
        self.sow("intermediates", "conv", h)
        h = act(h)
        h = act(h - 0.1)
        h = nn.Dense(5)(h.mean(axis=(1, 2)))
        self.sow("intermediates", "dense", h)
        return h


@pytest.fixture(scope="module")
def setup():
    model = _Tiny()
    data = np.random.default_rng(0).standard_normal((10, 6, 6, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), data[:1])
    # Reference: one direct apply over the whole dataset.
    _, state = model.apply(variables, data, train=False, mutable=["intermediates"])
    inter = jax.tree.map(np.asarray, state["intermediates"])
    batches = [data[:4], data[4:8], {"image": data[8:]}]  # short last batch, dict batch
    return model, variables, batches, inter


def test_capture_flatten_and_names(setup):
    model, variables, batches, inter = setup
    acts = capture(model, variables, batches, progress=False)
    assert list(acts) == ["conv", "_Act_0/out[0]", "_Act_0/out[1]", "dense"]  # sow order
    np.testing.assert_allclose(acts["conv"], inter["conv"][0].reshape(10, -1), atol=1e-5)
    np.testing.assert_allclose(acts["_Act_0/out[1]"], inter["_Act_0"]["out"][1].reshape(10, -1),
                               atol=1e-5)
    np.testing.assert_allclose(acts["dense"], inter["dense"][0], atol=1e-5)


def test_capture_gap_and_positions(setup):
    model, variables, batches, inter = setup
    gap = capture(model, variables, batches, layers=["dense", "conv"], mode="gap", progress=False)
    assert list(gap) == ["dense", "conv"]  # the requested order, not jit's sorted keys
    np.testing.assert_allclose(gap["conv"], inter["conv"][0].mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(gap["dense"], inter["dense"][0], atol=1e-5)
    pos = capture(model, variables, batches, layers=["conv"], mode="positions", positions_size=4,
                  progress=False)["conv"]
    nchw = torch.from_numpy(inter["conv"][0].copy()).permute(0, 3, 1, 2)
    ref = F.interpolate(nchw, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_allclose(pos, ref.permute(0, 2, 3, 1).reshape(10 * 16, 4).numpy(), atol=1e-5)


def test_capture_compiles_once_and_rejects_bad_requests(setup):
    model, variables, batches, _ = setup
    traces = []

    def apply_fn(v, x, **kwargs):
        traces.append(x.shape)  # Python side effect: runs once per trace
        return model.apply(v, x, **kwargs)

    acts = capture(apply_fn, variables, batches, layers=["dense"], progress=False)
    assert traces == [(4, 6, 6, 3)] and acts["dense"].shape == (10, 5)
    with pytest.raises(ValueError, match="unknown layers"):
        capture(model, variables, batches, layers=["nope"], progress=False)
    with pytest.raises(ValueError, match="positions"):
        capture(model, variables, batches, layers=["dense"], mode="positions", progress=False)
    with pytest.raises(ValueError, match="mode must be"):
        capture(model, variables, batches, mode="pool", progress=False)
    with pytest.raises(ValueError, match="empty"):
        capture(model, variables, [], progress=False)
