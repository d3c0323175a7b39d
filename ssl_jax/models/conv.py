"""`Conv`: flax's nn.Conv, with a workaround for slow weight gradients on XLA:CPU.

Every model in ssl_jax builds its convolutions from this class. Parameters, names and results
are nn.Conv's, bit for bit; only the code XLA:CPU generates changes.

Why: XLA:CPU (jaxlib 0.10.2) hands the weight-gradient convolution to Eigen with the input's
channels as the batch dimension, so it first copies the input activation into the layout
[C, H, W, N]. The input is usually relu(batchnorm(...)) of the previous layer. XLA fuses that
elementwise math into the copy, recomputing it in transposed order. A fused copy with broadcasts
falls back to a scalar loop: ~3-4x slower than a plain transpose of a stored array (0.15-0.19
vs 0.05 s for [256, 32, 32, 64] f32). In the SimCLR ResNet-18 benchmark these copies took
~2.9 s of a ~8 s step (docs/BENCHMARKS.md, "Where the step's time goes").

The fix: route the input through a `lax.cond` that returns it unchanged. XLA does not fuse
across a conditional, so the activation is stored once and the copy reads the stored array.
Two details matter:
- the predicate must be unknown at compile time, or XLA folds the cond away. It is computed
  from one kernel element; both branches return the same values, so it never matters.
- the branches must differ as written, or XLA removes the cond. `t * 1.0` is the same value
  as `t` (x * 1.0 == x for every float, -0.0 and NaN included).
`lax.optimization_barrier` would be the natural tool. But XLA:CPU expands barriers before
fusion, so they do not stop it.

On GPU and TPU, the conditional would cost a device-to-host sync per layer and fused transposes
are fast there, so the workaround applies only when JAX's default backend is the CPU.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _stored(x: jnp.ndarray, witness: jnp.ndarray) -> jnp.ndarray:
    """x, through a conditional that XLA can neither fold nor fuse across."""
    pred = jnp.isfinite(witness.reshape(-1)[0])
    return lax.cond(pred, lambda t: t, lambda t: t * 1.0, x)


def conv_general_dilated(lhs: jnp.ndarray, rhs: jnp.ndarray, *args: Any,
                         **kwargs: Any) -> jnp.ndarray:
    """lax.conv_general_dilated; on CPU, its input is stored first (see the module docstring)."""
    if jax.default_backend() == "cpu":
        lhs = _stored(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


class Conv(nn.Conv):
    """nn.Conv, with the CPU weight-gradient workaround of this module."""
    conv_general_dilated: Any = conv_general_dilated
