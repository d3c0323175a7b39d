"""One SimCLR step and one supervised step on 8 devices equal the same global batch on 1 device."""
import jax
import numpy as np
import pytest

from configs import simclr as simclr_config, supervised as supervised_config
from ssl_jax import optim, train
from ssl_jax.data import augment
from ssl_jax.methods import get_method
from step_on_devices import loss_and_grads_on


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def _step_outputs(method, preset, state, batch, rng, devices):
    (loss, (model_state, _)), grads = loss_and_grads_on(devices, method, preset, state, batch, rng)
    return loss, model_state, grads


@pytest.mark.parametrize("config_module", [simclr_config, supervised_config],
                         ids=["simclr", "supervised"])
def test_step_on_8_devices_equals_1_device(config_module):
    config = config_module.get_config("smoke")
    method = get_method(config.method, config)
    preset = augment.get_preset(config.augment.preset)
    tx = optim.build_optimizer(config.optimizer.name, lambda s: 0.1, 1e-4)
    state = train.init_state(method, tx, jax.random.key(0), (32, 32, 3))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, method.num_views, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 10, (16,), dtype=np.int32)}
    key = jax.random.key(1)

    loss8, bn8, grads8 = _step_outputs(method, preset, state, batch, key, jax.devices())
    loss1, bn1, grads1 = _step_outputs(method, preset, state, batch, key, jax.devices()[:1])

    assert np.isfinite(loss1) and loss1 > 0
    assert _rel_err(loss8, loss1) <= 1e-5
    # BatchNorm statistics are global: identical running averages on 8 devices and on 1.
    for a, b in zip(jax.tree.leaves(bn8), jax.tree.leaves(bn1)):
        assert _rel_err(a, b) <= 1e-5
    leaves8, leaves1 = jax.tree.leaves(grads8), jax.tree.leaves(grads1)
    assert len(leaves8) == len(leaves1) > 10
    worst = max(_rel_err(a, b) for a, b in zip(leaves8, leaves1))
    assert worst <= 1e-5, worst
    # The gradient is not trivially zero.
    assert max(np.abs(g).max() for g in leaves1) > 1e-6
