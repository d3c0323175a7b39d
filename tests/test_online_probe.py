"""The online linear probe (ssl_jax/online_probe.py) observes training without changing it,
and learns.

Default suite: the probe alone on fixed features (seconds), the checkpoint layout, and the
smoke run's metrics and checkpoint (the session's shared SimCLR smoke run). Under `-m slow`
(two compiles of the trainer's step, ~1 min on 2 cores): SimCLR's smoke config with the probe
on and off on the `tiny` split's first 256 images 2x2-pooled to 16 px (as
tests/test_functional_controls.py), batch 32, one device.
"""
import jax
import numpy as np
import pytest

from configs import simclr as simclr_config
from ssl_jax import online_probe, train
from ssl_jax.data import augment, builtin
from ssl_jax.methods import get_method

NUM_IMAGES, BATCH, SIZE = 256, 32, 16


@pytest.fixture(scope="module")
def setup():
    config = next(c for c in builtin.ShapesTextures.BUILDER_CONFIGS if c.name == "tiny")
    chunk = builtin.generate_chunk(config, "train", 0)
    x = chunk["image"][:NUM_IMAGES].astype(np.float32)
    images = x.reshape(NUM_IMAGES, SIZE, 2, SIZE, 2, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    labels = chunk["label"][:NUM_IMAGES].astype(np.int32)
    c = simclr_config.get_config("smoke")
    c.model.update(cifar_stem=False)
    c.batch_size = BATCH
    c = train.with_total_steps(c, 100, NUM_IMAGES)
    method = get_method(c.method, c)
    preset = augment.get_preset(c.augment.preset, **dict(c.augment.overrides))
    schedule, tx = train.build_optimizer(c, 100)
    probe = online_probe.from_config(c)
    assert probe == online_probe.OnlineProbe(10, 1e-2)  # on by default

    compiled = {}

    def run(with_probe: bool, steps: int):
        """The trainer's step for `steps` batches from the same initial state and data:
        (final state, per-step metrics). Each variant is compiled once per module."""
        if with_probe not in compiled:
            p = probe if with_probe else None
            compiled[with_probe] = (
                jax.jit(lambda r: train.init_state(method, tx, r, (SIZE, SIZE, 3), p)),
                jax.jit(train.make_train_step(method, tx, preset, schedule, p)))
        init, step = compiled[with_probe]
        state = init(jax.random.key(0))
        rng, history = np.random.default_rng(0), []
        for _ in range(steps):
            index = rng.permutation(NUM_IMAGES)[:BATCH]
            two_views = np.repeat(images[index][:, None], 2, axis=1)  # augmented on device
            state, metrics = step(state, {"image": two_views, "label": labels[index]},
                                  jax.random.key(1))
            history.append(jax.device_get(metrics))
        return state, history

    return run


@pytest.mark.slow
def test_online_probe_does_not_change_the_method(setup):
    """Same backbone, heads, BatchNorm statistics and optimizer state after 3 steps with the
    probe as without it: gradients do not reach the backbone and no RNG is drawn."""
    with_probe, metrics_with = setup(True, 3)
    without, metrics_without = setup(False, 3)
    for a, b in zip(jax.tree.leaves((with_probe.params, with_probe.model_state,
                                     with_probe.opt_state)),
                    jax.tree.leaves((without.params, without.model_state, without.opt_state))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert without.probe is None and with_probe.probe is not None
    for m_with, m_without in zip(metrics_with, metrics_without):
        assert set(m_with) - set(m_without) == {"online_linear_top1", "online_linear_loss"}
        for k in m_without:
            np.testing.assert_allclose(m_with[k], m_without[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_online_probe_accuracy_rises_while_simclr_trains(setup):
    """Over 200 SimCLR steps (its features moving under it) the probe's train accuracy climbs
    above chance (10 classes: 10%) and its loss falls."""
    _, history = setup(True, 200)
    top1 = np.array([float(m["online_linear_top1"]) for m in history])
    loss = np.array([float(m["online_linear_loss"]) for m in history])
    first, last = top1[:10].mean(), top1[-100:].mean()
    print(f"online probe top-1 {first:.1f}% -> {last:.1f}%, loss {loss[0]:.3f} -> "
          f"{loss[-100:].mean():.3f}")
    assert loss[0] == pytest.approx(np.log(10), rel=1e-5)  # zero init: uniform logits
    assert last > max(17.0, first + 6.0)
    assert loss[-100:].mean() < loss[0] - 0.05


def test_probe_learns_and_passes_no_gradient_to_features():
    """The probe alone on fixed features whose class shows in one dimension: accuracy from
    chance to near 100%; the gradient of its loss w.r.t. the features is zero."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 256).astype(np.int32)
    features = rng.normal(size=(256, 8)).astype(np.float32)
    features[:, 0] += 6.0 * labels
    probe = online_probe.OnlineProbe(num_classes=4, learning_rate=0.1)
    update = jax.jit(probe.update)
    state, top1 = probe.init(8), []
    for _ in range(100):
        state, metrics = update(state, features, labels)
        top1.append(float(metrics["online_linear_top1"]))
    assert top1[0] == pytest.approx(100.0 * np.mean(labels == 0))  # zero init: argmax class 0
    assert np.mean(top1[-10:]) > 90.0
    grad = jax.grad(lambda f: probe.update(state, f, labels)[1]["online_linear_loss"])(features)
    assert not np.any(np.asarray(grad))


def test_smoke_run_logs_and_checkpoints_the_probe(smoke_simclr_run):
    """The smoke run (probe on by default) logs online_linear_top1 at every log step and its
    checkpoint restores the probe."""
    import json
    with open(smoke_simclr_run / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    steps = [r["step"] for r in logged if "online_linear_top1" in r]
    assert steps == [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= r["online_linear_top1"] <= 100.0 for r in logged if "loss" in r)
    _, _, state = train.load_trained(str(smoke_simclr_run))
    assert state.probe is not None and np.any(np.asarray(state.probe.params["w"]))


def test_checkpoints_without_a_probe_have_the_old_items():
    """A probe-less state is checkpointed with exactly the items of runs saved before the probe
    existed, so each loads the other's checkpoints."""
    state = train.TrainState(step=0, params={}, model_state={}, opt_state=())
    assert list(train.checkpoint_tree(state)) == ["step", "params", "model_state", "opt_state"]
    with_probe = state.replace(probe=online_probe.OnlineProbe(3, 0.1).init(4))
    assert list(train.checkpoint_tree(with_probe))[-1] == "probe"
