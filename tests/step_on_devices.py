"""One trainer step (`train.loss_and_grads`) on a chosen set of devices, for the tests that
check that a method's step on 8 fake devices equals the same global batch on 1."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax import train


def loss_and_grads_on(devices, method, preset, state, batch, rng):
    """((loss, (model_state, metrics)), grads) on host, batch sharded over `devices`."""
    mesh = Mesh(np.asarray(devices), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    fn = jax.jit(lambda s, b, r: train.loss_and_grads(method, preset, s, b, r),
                 out_shardings=NamedSharding(mesh, P()))
    return jax.device_get(fn(state, batch, rng))
