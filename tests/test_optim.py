"""Per-subtree learning-rate factors (optim.with_lr_multipliers) against running the subtree
alone at the scaled schedule, for every optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import optim


def _schedule(step):
    return 0.1 * (1.0 + step) / 5.0  # a changing rate: the factor must apply at every step


def _run(tx, params, grads_per_step):
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_a_subtree_factor_equals_that_subtree_at_the_scaled_rate(name):
    rng = np.random.default_rng(0)
    params = {"backbone": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                           "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
              "predictor": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
             for _ in range(4)]
    tx = optim.build_optimizer(name, _schedule, 1e-2, lr_multipliers={"predictor": 3.0})
    got = _run(tx, params, grads)

    for key, factor in (("backbone", 1.0), ("predictor", 3.0)):
        alone = optim.build_optimizer(name, lambda s, f=factor: f * _schedule(s), 1e-2)
        want = _run(alone, params[key], [g[key] for g in grads])
        for a, b in zip(jax.tree.leaves(got[key]), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_factors_keep_the_state_and_name_unknown_subtrees():
    params = {"backbone": jnp.ones((2, 2)), "projector": jnp.ones((2, 2))}
    plain = optim.build_optimizer("lars", _schedule, 0.0)
    scaled = optim.build_optimizer("lars", _schedule, 0.0, lr_multipliers={"predictor": 10.0})
    # Same state tree as without factors: checkpoints do not depend on them.
    assert jax.tree.structure(plain.init(params)) == jax.tree.structure(scaled.init(params))
    with pytest.raises(ValueError, match="names predictor, which the model has no parameters "
                                         "for; valid: backbone, projector"):
        scaled.update(params, scaled.init(params), params)
    with pytest.raises(ValueError, match="lr_multipliers.predictor=-1.0 is negative"):
        optim.build_optimizer("sgd", _schedule, 0.0, lr_multipliers={"predictor": -1.0})
