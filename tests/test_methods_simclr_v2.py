"""SimCLR v2: the deep BN head trains with global BatchNorm (8 devices == 1 device), and
features can come from a middle layer of the head (v2's ft_proj_selector)."""
import jax
import numpy as np
import pytest

from configs import simclr as simclr_config
from ssl_jax import optim, train
from ssl_jax.data import augment
from ssl_jax.methods import get_method
from step_on_devices import loss_and_grads_on



def test_simclr_v2_step_on_8_devices_equals_1_device_and_middle_layer_features():
    config = simclr_config.get_config("smoke,version=2")
    assert config.simclr.head == "v2" and config.simclr.head_layers == 3
    config.simclr.features_layer = 1
    method = get_method("simclr", config)
    preset = augment.get_preset(config.augment.preset)
    tx = optim.build_optimizer("lars", lambda s: 0.1, 1e-6)
    state = train.init_state(method, tx, jax.random.key(0), (32, 32, 3))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 2, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 10, (16,), dtype=np.int32)}
    key = jax.random.key(1)
    (l8, (ms8, _)), g8 = loss_and_grads_on(jax.devices(), method, preset, state, batch, key)
    (l1, (ms1, _)), g1 = loss_and_grads_on(jax.devices()[:1], method, preset, state, batch, key)
    assert np.isfinite(l1) and abs(l8 - l1) <= 1e-5 * abs(l1)
    # Relative to the largest gradient entry: the three BatchNorms of the head reassociate the
    # cross-device sums, and small leaves (BN biases, |g| ~0.3) then differ by ~1.5e-5 of
    # their own size (4e-6 absolute) in float32.
    scale = max(np.abs(g).max() for g in jax.tree.leaves(g1))
    worst = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)))
    assert worst <= 1e-5 * scale, (worst, scale)
    for a, b in zip(jax.tree.leaves(ms8), jax.tree.leaves(ms1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Three BN'd head layers, the last without bias, as google-research/simclr tf2.
    head = state.params["head"]
    assert sorted(head) == ["bn_0", "bn_1", "bn_2", "dense_0", "dense_1", "dense_2"]
    assert "bias" not in head["bn_2"]

    # features_layer=1: relu(bn_0(dense_0(backbone features))) in eval mode, by hand.
    x = rng.uniform(size=(4, 32, 32, 3)).astype(np.float32)
    feats = np.asarray(method.features(state.params, state.model_state, x))
    config.simclr.features_layer = 0
    h = np.asarray(get_method("simclr", config).features(state.params, state.model_state, x))
    bn = state.model_state["batch_stats"]["head"]["bn_0"]
    z = h @ np.asarray(head["dense_0"]["kernel"])
    z = (z - bn["mean"]) / np.sqrt(bn["var"] + 1e-5) * head["bn_0"]["scale"] + head["bn_0"]["bias"]
    np.testing.assert_allclose(feats, np.maximum(z, 0), rtol=1e-4, atol=1e-5)
    assert feats.shape == (4, h.shape[1])


def test_features_layer_errors():
    config = simclr_config.get_config("smoke")
    config.simclr.features_layer = 1
    with pytest.raises(ValueError, match="features_layer=1 needs simclr.head=v2"):
        get_method("simclr", config)
    config = simclr_config.get_config("smoke,version=2")
    config.simclr.features_layer = 4
    with pytest.raises(ValueError, match=r"must be in \[0, simclr.head_layers=3\]"):
        get_method("simclr", config)
    with pytest.raises(ValueError, match="unknown simclr version 3"):
        simclr_config.get_config("smoke,version=3")
