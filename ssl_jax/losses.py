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


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    """x / max(||x||, sqrt(epsilon)) along `axis` (BYOL's rsqrt-of-clamped-square-sum form)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), epsilon))


def byol_regression(p: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL's per-example regression loss ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z).

    p: [N, D] online predictions, z: [N, D] target projections (the caller stops their
    gradient). Returns [N]; BYOL's objective is mean_N(l(p1, z2) + l(p2, z1)), i.e. the two
    directions SUMMED (deepmind-research/byol), in [0, 8].
    """
    d = l2_normalize(p) - l2_normalize(z)
    return jnp.sum(d * d, axis=-1)


def infonce_queue(q: jax.Array, k: jax.Array, queue: jax.Array,
                  temperature: float) -> tuple[jax.Array, jax.Array]:
    """MoCo's InfoNCE: each query against its key (positive) and the K queue entries.

    q, k: [N, D] (L2-normalised here); queue: [K, D] L2-normalised keys of earlier batches.
    logits [N, 1 + K] = [q.k, q.queue^T] / T with the positive in column 0, as
    facebookresearch/moco builder.py. Returns (mean cross entropy, logits).
    """
    q, k = l2_normalize(q), l2_normalize(k)
    pos = jnp.sum(q * k, axis=-1, keepdims=True)
    neg = jnp.matmul(q, queue.astype(jnp.float32).T, precision=_HIGHEST)
    logits = jnp.concatenate([pos, neg], axis=1) / temperature
    labels = jnp.zeros((q.shape[0],), jnp.int32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
