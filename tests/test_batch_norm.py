"""ssl_jax.models.batch_norm.BatchNorm against flax.linen.BatchNorm (the module it replaces:
same variables, statistics and update rule) and against numpy's formula; and the reason it
exists: no activation-sized `x - mean` in the forward pass."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models.batch_norm import BatchNorm, batch_statistics

KEY = jax.random.key(0)

CONFIGS = {
    "affine": dict(),
    "no_scale_no_bias": dict(use_scale=False, use_bias=False),
    "zero_scale": dict(scale_init=nn.initializers.zeros),
    "bf16_output": dict(dtype=jnp.bfloat16),
}


def _input(shape, mean=2.0, std=3.0, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(mean, std, shape).astype(np.float32))


def _apply_and_grad(module, variables, x):
    """(output, updated batch_stats, grads of a nonlinear loss wrt params and x)."""
    def loss(params, x):
        y, updated = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updated["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        variables.get("params", {}), x)
    return y, stats, grads


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("shape", [(8, 5, 5, 16), (32, 24)])
def test_matches_flax_batchnorm_in_training(config, shape):
    kwargs = dict(momentum=0.9, epsilon=1e-5, **CONFIGS[config])
    ours, flax_bn = (BatchNorm(use_running_average=False, **kwargs),
                     nn.BatchNorm(use_running_average=False, **kwargs))
    x = _input(shape)
    variables = flax_bn.init(KEY, x)
    assert (jax.tree.map(lambda v: (v.shape, v.dtype), ours.init(KEY, x))
            == jax.tree.map(lambda v: (v.shape, v.dtype), variables))
    # Parameters and running averages away from their initial values.
    variables = jax.tree.map(lambda v: v + 0.3 * jnp.arange(v.size).reshape(v.shape) / v.size,
                             variables)
    y, stats, grads = _apply_and_grad(ours, variables, x)
    y_ref, stats_ref, grads_ref = _apply_and_grad(flax_bn, variables, x)
    assert y.dtype == y_ref.dtype
    tol = 2e-2 if y.dtype == jnp.bfloat16 else 2e-6
    np.testing.assert_allclose(np.float32(y), np.float32(y_ref), atol=tol, rtol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 stats, stats_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-4 * np.abs(b).max()),
                 grads, grads_ref)


def test_matches_the_formula_and_uses_running_averages_in_evaluation():
    x = np.asarray(_input((16, 4, 4, 8)), np.float64)
    scale, bias = np.linspace(0.5, 2, 8), np.linspace(-1, 1, 8)
    running_mean, running_var = np.linspace(-1, 1, 8), np.linspace(0.5, 3, 8)
    variables = {"params": {"scale": jnp.float32(scale), "bias": jnp.float32(bias)},
                 "batch_stats": {"mean": jnp.float32(running_mean),
                                 "var": jnp.float32(running_var)}}
    module = BatchNorm(momentum=0.9, epsilon=1e-5)
    y, updated = module.apply(variables, jnp.float32(x), use_running_average=False,
                              mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * scale + bias,
                               atol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.9 * running_mean + 0.1 * mean,
                               rtol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["var"], 0.9 * running_var + 0.1 * var,
                               rtol=1e-5)
    y_eval = module.apply(variables, jnp.float32(x), use_running_average=True)
    np.testing.assert_allclose(y_eval, (x - running_mean) / np.sqrt(running_var + 1e-5) * scale
                               + bias, atol=1e-5)


def test_statistics_are_float32_and_the_variance_is_never_negative():
    x = jnp.full((4, 3, 3, 2), 1000.0, jnp.bfloat16)  # E[x^2] - E[x]^2 rounds below 0
    mean, var = batch_statistics(x)
    assert mean.dtype == var.dtype == jnp.float32
    np.testing.assert_array_equal(mean, 1000.0)
    assert np.all(np.asarray(var) >= 0)


def test_the_forward_pass_writes_no_centred_activation():
    """flax's (x - mean) * a + bias computes x - mean, an activation-sized array that autodiff
    keeps for the backward pass (XLA:CPU writes it out); ours is x * a + b, whose backward
    needs only x (already stored by the layer before) and per-channel vectors. Checked as the
    activation-sized operations of the traced forward pass."""
    x = _input((8, 6, 6, 4))

    def activation_sized_ops(module):
        variables = module.init(KEY, x)
        jaxpr = jax.make_jaxpr(
            lambda x: module.apply(variables, x, mutable=["batch_stats"])[0])(x).jaxpr
        return [e.primitive.name for e in jaxpr.eqns
                if any(getattr(v.aval, "shape", None) == x.shape for v in e.outvars)]

    assert "sub" in activation_sized_ops(nn.BatchNorm(use_running_average=False))
    assert sorted(activation_sized_ops(BatchNorm(use_running_average=False))) == [
        "add", "mul", "square"]
