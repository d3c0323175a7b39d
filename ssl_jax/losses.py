"""Pure jnp losses. Inputs are global arrays; under jit on a mesh, the reductions below span
the global batch (no explicit all_gather needed)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_HIGHEST = jax.lax.Precision.HIGHEST


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's normalised-temperature cross entropy over the global batch.

    z1, z2: [N, D] projections of the two views of the same N images. Each of the 2N rows is
    classified against the other 2N-1 rows (its positive is the other view). Returns the MEAN
    over the 2N rows — the convention of lightly/solo-learn; google-research/simclr sums the two
    directions, i.e. 2x this value (mind the effective learning rate when porting configs).
    """
    z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    n = z1.shape[0]
    logits = jnp.matmul(z, z.T, precision=_HIGHEST) / temperature
    # Mask self-similarity with a large negative rather than -inf (keeps gradients finite).
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -1e9, logits)
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()


def contrastive_accuracy(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """Fraction of rows of z1 whose most similar row of z2 is its own positive."""
    sim = jnp.matmul(z1, z2.T, precision=_HIGHEST)
    return (jnp.argmax(sim, axis=1) == jnp.arange(z1.shape[0])).mean()


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross entropy with integer labels and optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
