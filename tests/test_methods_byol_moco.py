"""BYOL and MoCo: pure pieces against hand-computed values, shuffle-BN on 8 devices, and one
step on 8 devices equal to the same step on 1 device (loss, gradients, EMA / queue updates)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import byol as byol_config, moco as moco_config
from ssl_jax import losses, train
from ssl_jax.methods import byol, get_method, moco

SIZE, BATCH = 16, 16


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def _assert_trees_close(a, b, tol=1e-5):
    """Leaf-wise relative error <= tol. A leaf's scale is floored at 1e-3 of the largest leaf:
    biases of Dense layers followed by BatchNorm have mathematically zero gradients (BN removes
    any constant shift), so theirs are float noise (~1e-8) whose relative error means nothing."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    floor = 1e-3 * max(float(np.max(np.abs(y))) for y in lb)
    worst = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                / max(float(np.max(np.abs(y))), floor, 1e-12) for x, y in zip(la, lb))
    assert worst <= tol, worst


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------

def test_target_ema_matches_the_cosine_formula():
    base, total = 0.99, 8
    for k in range(total + 3):
        kk = min(k, total)
        expected = 1 - (1 - base) * (math.cos(math.pi * kk / total) + 1) / 2
        assert float(byol.target_ema(k, total, base)) == pytest.approx(expected, abs=1e-7)
    assert float(byol.target_ema(0, total, base)) == pytest.approx(0.99, abs=1e-7)
    assert float(byol.target_ema(4, total, base)) == pytest.approx(0.995, abs=1e-7)
    assert float(byol.target_ema(8, total, base)) == pytest.approx(1.0, abs=1e-7)
    with pytest.raises(ValueError, match="total_steps=0"):
        byol.target_ema(0, 0, base)


def test_byol_regression_is_two_minus_two_cosine():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    cos = np.sum(p * z, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(z, axis=1)
    got = losses.byol_regression(jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(got, 2 - 2 * cos, rtol=1e-5, atol=1e-6)
    # Scale-invariant in both arguments; zero for parallel vectors.
    np.testing.assert_allclose(losses.byol_regression(3.0 * p, 0.5 * p), 0.0, atol=1e-6)


def test_infonce_queue_against_hand_computed_logits():
    q = np.array([[3.0, 4.0], [1.0, 0.0]])       # normalised: (0.6, 0.8), (1, 0)
    k = np.array([[0.0, 2.0], [1.0, 0.0]])       # normalised: (0, 1), (1, 0)
    queue = np.array([[1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
    t = 0.5
    # Row 0: pos 0.8; negatives 0.6, -0.8, 1.0. Row 1: pos 1; negatives 1, 0, 0.6.
    logits = np.array([[0.8, 0.6, -0.8, 1.0], [1.0, 1.0, 0.0, 0.6]]) / t
    ce = np.log(np.exp(logits).sum(1)) - logits[:, 0]
    loss, got_logits = losses.infonce_queue(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), t)
    np.testing.assert_allclose(got_logits, logits, rtol=1e-6)
    assert float(loss) == pytest.approx(ce.mean(), rel=1e-6)


def test_queue_pointer_moves_by_the_batch_and_overwrites_the_oldest_keys():
    queue = jnp.arange(12, dtype=jnp.float32).reshape(6, 2)  # K = 6, D = 2
    ptr = jnp.zeros((), jnp.int32)
    batches = [np.full((2, 2), 100.0 + i, np.float32) for i in range(4)]
    expected = np.arange(12, dtype=np.float32).reshape(6, 2)
    for i, keys in enumerate(batches):
        queue, ptr = moco.enqueue(queue, ptr, jnp.asarray(keys))
        start = (2 * i) % 6
        expected[start:start + 2] = keys
        np.testing.assert_array_equal(queue, expected)
        assert int(ptr) == (2 * (i + 1)) % 6
    # After wrapping, batch 3 overwrote batch 0's rows; batches 1 and 2 are still there.
    np.testing.assert_array_equal(queue[:, 0], [103, 103, 101, 101, 102, 102])
    with pytest.raises(ValueError, match="queue size 6 is not a multiple of the batch size 4"):
        moco.enqueue(queue, ptr, jnp.zeros((4, 2)))


def test_momentum_update_hand_values():
    key = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    query = {"w": jnp.array([3.0, 0.0]), "b": jnp.array(0.0)}
    out = moco.momentum_update(key, query, 0.75)
    np.testing.assert_allclose(out["w"], [1.5, 1.5])
    np.testing.assert_allclose(out["b"], 3.0)


def test_config_errors_are_one_line():
    c = moco_config.get_config("smoke")
    c.moco.queue_size = 100
    with pytest.raises(ValueError, match=r"queue_size=100 must be a multiple of the keys "
                                         r"enqueued per step, 32 \(batch_size=32\)"):
        get_method("moco", c)
    c = moco_config.get_config("smoke")
    c.moco.bn = "ghost"
    with pytest.raises(ValueError, match="unknown moco.bn 'ghost'; valid: shuffle, sync, split"):
        get_method("moco", c)
    c = moco_config.get_config("smoke")
    c.moco.update(symmetric=True, queue_size=96)
    with pytest.raises(ValueError, match="enqueued per step, 64 \\(batch_size=32, symmetric"):
        get_method("moco", c)
    with pytest.raises(ValueError, match="unknown moco version 3"):
        moco_config.get_config("smoke,version=3")


# ---------------------------------------------------------------------------------------------
# Shuffle-BN on the 8 fake devices
# ---------------------------------------------------------------------------------------------

class _TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=False, momentum=0.0, epsilon=1e-5)(x)


def test_shuffle_bn_permutes_restores_and_keeps_per_device_statistics():
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    n = mesh.devices.size
    b = 2 * n
    x = np.random.default_rng(0).normal(size=(b, 3)).astype(np.float32) * 3 + 1
    x_sharded = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    module = _TinyBN()
    variables = module.init(jax.random.key(0), x[:2])
    rng = jax.random.key(7)
    perm = np.asarray(jax.random.permutation(rng, b))
    assert not np.array_equal(perm, np.arange(b))

    def identity(v, xs):  # reports which rows each device saw
        return xs, {"rows": xs}

    def bn(v, xs):
        y, new = module.apply(v, xs, mutable=["batch_stats"])
        return y, new["batch_stats"]

    @jax.jit
    def run(variables, x, rng):
        return (moco.shuffled_forward(identity, variables, x, rng, mesh),
                moco.shuffled_forward(bn, variables, x, rng, mesh))

    (out_id, seen), (out_bn, stats) = run(variables, x_sharded, rng)
    # Round trip exact: outputs come back in the input order, bit for bit.
    np.testing.assert_array_equal(out_id, x)
    # Each device saw its slice of the ONE shared permutation.
    seen = np.asarray(seen["rows"])  # [n, b/n, 3]
    np.testing.assert_array_equal(seen.reshape(b, 3), x[perm])
    # Per-device BatchNorm: each row normalised with the statistics of the device that saw it.
    expected = np.empty_like(x)
    means = np.empty((n, 3), np.float32)
    for d in range(n):
        rows = perm[2 * d: 2 * d + 2]
        mu, var = x[rows].mean(0), x[rows].var(0)
        expected[rows] = (x[rows] - mu) / np.sqrt(var + 1e-5)
        means[d] = mu
    np.testing.assert_allclose(out_bn, expected, rtol=1e-4, atol=1e-4)
    # momentum 0: running mean = this batch's mean, one per device, differing across devices.
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], means, rtol=1e-5, atol=1e-6)
    assert np.ptp(np.asarray(stats["BatchNorm_0"]["mean"]), axis=0).min() > 1e-3
    # Global statistics would have normalised differently (the shuffle-BN point).
    assert np.abs(np.asarray(out_bn) - (x - x.mean(0)) / x.std(0)).max() > 1e-2


def test_split_bn_normalises_each_slice_with_its_own_statistics():
    splits, per = 4, 3
    x = np.random.default_rng(2).normal(size=(splits * per, 3)).astype(np.float32) * 2 + 1
    module = _TinyBN()
    variables = module.init(jax.random.key(0), x[:2])

    def bn(v, xs):
        y, new = module.apply(v, xs, mutable=["batch_stats"])
        return y, new["batch_stats"]

    out, stats = jax.jit(lambda v, x: moco.split_forward(bn, v, x, splits))(variables, x)
    slices = x.reshape(splits, per, 3)
    mu, var = slices.mean(1, keepdims=True), slices.var(1, keepdims=True)
    expected = ((slices - mu) / np.sqrt(var + 1e-5)).reshape(-1, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # momentum 0: each slice's running mean is its batch mean; the method keeps their average.
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], mu[:, 0].mean(0), rtol=1e-5,
                               atol=1e-6)
    assert np.abs(np.asarray(out) - (x - x.mean(0)) / x.std(0)).max() > 1e-2
    with pytest.raises(ValueError, match="batch 12 is not divisible by moco.bn_splits=5"):
        moco.split_forward(bn, variables, x, 5)


# ---------------------------------------------------------------------------------------------
# One step on 8 devices == the same step on 1 device
# ---------------------------------------------------------------------------------------------

def _tiny_config(config_module, arg="smoke"):
    c = config_module.get_config(arg)
    c.batch_size = BATCH
    c.dataset.image_size = SIZE
    c.num_steps = 10
    return c


def _views():
    rng = np.random.default_rng(1)
    return rng.uniform(0, 1, (BATCH, 2, SIZE, SIZE, 3)).astype(np.float32)


def _sgd_step(method, state, views, rng, lr=0.1):
    """The trainer's step with plain SGD (so updates are checkable by hand): loss, grads and
    the new state after the method's after_update."""
    def loss_fn(params):
        return method.loss(params, state.model_state, views, None, rng)

    (loss, (model_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params = jax.tree.map(lambda p, g: p - lr * g, state.params, grads)
    new = state.replace(step=state.step + 1, params=params, model_state=model_state)
    return loss, grads, method.after_update(new)


def _run_on(devices, fn, *args):
    mesh = Mesh(np.asarray(devices), ("data",))
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state, views, rng = args
    state = jax.device_put(state, repl)
    views = jax.device_put(views, data)
    return jax.device_get(jax.jit(fn, out_shardings=repl)(state, views, rng))


def _state(method, rng=0):
    params, model_state = method.init(jax.random.key(rng), jnp.zeros((1, SIZE, SIZE, 3)))
    return train.TrainState(step=jnp.asarray(3, jnp.int32), params=params,
                            model_state=model_state, opt_state=())


def test_byol_step_on_8_devices_equals_1_device_and_updates_the_target_by_ema():
    config = _tiny_config(byol_config)
    method = get_method("byol", config)
    state = _state(method)
    # Make the target differ from the online network, as after some training.
    target = state.model_state["target"]
    target = {**target, "params": jax.tree.map(lambda p: 0.9 * p, target["params"])}
    state = state.replace(model_state={**state.model_state, "target": target})
    fn = lambda s, v, r: _sgd_step(method, s, v, r)
    views, key = _views(), jax.random.key(5)

    loss8, grads8, new8 = _run_on(jax.devices(), fn, state, views, key)
    loss1, grads1, new1 = _run_on(jax.devices()[:1], fn, state, views, key)

    assert 0 < loss1 < 8
    assert _rel_err(loss8, loss1) <= 1e-5
    # Four BN'd forward passes reduced in a different order on 8 shards: float32 noise ~1e-5.
    _assert_trees_close(grads8, grads1, tol=5e-5)
    assert max(np.abs(g).max() for g in jax.tree.leaves(grads1)) > 1e-6
    _assert_trees_close(new8.model_state, new1.model_state)  # online + target BN, target EMA
    # The target never receives gradients: the predictor is the only extra online subtree.
    assert set(grads1) == set(state.params) and "predictor" not in new1.model_state["target"]["params"]
    # EMA by hand with tau at the step just taken (3 of 10).
    tau = 1 - (1 - 0.99) * (math.cos(math.pi * 3 / 10) + 1) / 2
    expected = jax.tree.map(lambda t, o: tau * np.asarray(t) + (1 - tau) * np.asarray(o),
                            jax.device_get(target["params"]),
                            {k: v for k, v in new1.params.items() if k != "predictor"})
    _assert_trees_close(new1.model_state["target"]["params"], expected, tol=1e-6)
    # The target's own BN statistics moved (it runs in training mode), separately from the online.
    t_old = jax.tree.leaves(state.model_state["target"]["batch_stats"])
    t_new = jax.tree.leaves(new1.model_state["target"]["batch_stats"])
    assert max(_rel_err(a, b) for a, b in zip(t_new, t_old)) > 1e-3


def test_moco_syncbn_step_on_8_devices_equals_1_device_and_updates_key_encoder_first():
    config = _tiny_config(moco_config)
    config.moco.update(bn="sync", queue_size=3 * BATCH, momentum=0.5)
    method = get_method("moco", config)
    state = _state(method)
    # A key encoder different from the query encoder, so "momentum update before encoding"
    # changes the keys (at init the two are equal and the update is a no-op).
    other = _state(method, rng=1).params
    key_state = {**state.model_state["key"], "params": other}
    state = state.replace(model_state={**state.model_state, "key": key_state})
    m = 0.5

    def fn(s, v, r):
        loss, grads, new = _sgd_step(method, s, v, r)
        # Keys as the key encoder with the UPDATED parameters encodes them (global BN).
        kvars = {"params": new.model_state["key"]["params"],
                 "batch_stats": s.model_state["key"]["batch_stats"]}
        (_, z), _ = method.net.apply(kvars, v[:, 1], train=True, mutable=["batch_stats"])
        return loss, grads, new, losses.l2_normalize(z)

    views, key = _views(), jax.random.key(5)
    loss8, grads8, new8 = _run_on(jax.devices(), lambda s, v, r: _sgd_step(method, s, v, r),
                                  state, views, key)
    loss1, grads1, new1, keys1 = _run_on(jax.devices()[:1], fn, state, views, key)

    assert np.isfinite(loss1) and loss1 > 0
    assert _rel_err(loss8, loss1) <= 1e-5
    _assert_trees_close(grads8, grads1, tol=5e-5)
    assert max(np.abs(g).max() for g in jax.tree.leaves(grads1)) > 1e-6
    _assert_trees_close(new8.model_state, new1.model_state)  # key encoder, queue, BN
    # Key encoder: m * key + (1 - m) * query parameters of this step (before the SGD update).
    expected = jax.tree.map(lambda k, q: m * np.asarray(k) + (1 - m) * np.asarray(q),
                            jax.device_get(other), jax.device_get(state.params))
    _assert_trees_close(new1.model_state["key"]["params"], expected, tol=1e-6)
    # Queue: rows 0..B-1 hold this batch's keys, encoded with the updated key encoder; the
    # rest is the untouched initial queue; the pointer moved by the global batch.
    queue = new1.model_state["queue"]
    assert int(queue["ptr"]) == BATCH
    np.testing.assert_allclose(queue["keys"][:BATCH], keys1, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(queue["keys"][BATCH:],
                                  state.model_state["queue"]["keys"][BATCH:])
    np.testing.assert_allclose(np.linalg.norm(queue["keys"], axis=1), 1.0, rtol=1e-5)


def test_trainer_hands_the_run_length_to_byol_without_touching_the_callers_config():
    config = byol_config.get_config("quickstart")  # epochs-based: num_steps = 0
    config.lock()
    with pytest.raises(ValueError, match="BYOL needs the run length"):
        get_method("byol", config).after_update(None)
    copied = train.with_total_steps(config, 468)
    assert "total_steps" not in config and copied.total_steps == 468
    assert get_method("byol", copied).total_steps == 468


@pytest.mark.slow  # ~70 s on 2 cores (three 8-device compiles); CI runs the slow set too
def test_moco_split_bn_symmetric_step_on_8_devices_equals_1_device_and_enqueues_both_views():
    config = _tiny_config(moco_config)
    config.moco.update(bn="split", bn_splits=4, symmetric=True, queue_size=4 * BATCH,
                       momentum=0.5)
    method = get_method("moco", config)
    state = _state(method)
    fn = lambda s, v, r: _sgd_step(method, s, v, r)
    views, key = _views(), jax.random.key(5)
    loss8, grads8, new8 = _run_on(jax.devices(), fn, state, views, key)
    loss1, grads1, new1 = _run_on(jax.devices()[:1], fn, state, views, key)
    # Split BN runs on global arrays under jit: the step does not depend on the device count.
    assert np.isfinite(loss1) and loss1 > 0
    assert _rel_err(loss8, loss1) <= 1e-5
    _assert_trees_close(grads8, grads1, tol=5e-5)
    _assert_trees_close(new8.model_state, new1.model_state)
    # Both directions' keys (2B rows) entered the queue; the rest is untouched.
    queue = new1.model_state["queue"]
    assert int(queue["ptr"]) == 2 * BATCH
    np.testing.assert_array_equal(queue["keys"][2 * BATCH:],
                                  state.model_state["queue"]["keys"][2 * BATCH:])
    assert np.abs(queue["keys"][:2 * BATCH] - state.model_state["queue"]["keys"][:2 * BATCH]
                  ).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(queue["keys"], axis=1), 1.0, rtol=1e-5)
    # The loss is the mean of the two directions: with global BN (no permutation involved)
    # it equals the one-way loss averaged over the view order, computed by the asymmetric method.
    config.moco.bn = "sync"
    both = get_method("moco", config)
    config.moco.symmetric = False
    one_way = get_method("moco", config)
    run1 = lambda m, v: _run_on(jax.devices()[:1], lambda s, v, r: _sgd_step(m, s, v, r),
                                state, v, key)[0]
    forward, backward = run1(one_way, views), run1(one_way, views[:, ::-1])
    assert _rel_err(run1(both, views), (forward + backward) / 2) <= 1e-5
    assert _rel_err(forward, backward) > 1e-4
