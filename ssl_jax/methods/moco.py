"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020), following facebookresearch/moco builder.py.

Query encoder: backbone -> head (v1: one Dense; v2: Dense-ReLU-Dense), trained. Key encoder:
the same architecture whose parameters follow the query's by momentum,
  key <- m * key + (1 - m) * query,
applied *before* the keys are encoded (inside `loss`, with the query parameters of the current
step, as builder.py does in forward). The L2-normalised keys of the whole global batch are then
written into a FIFO queue [K, D] at `ptr`, which moves by the batch size (K % batch == 0).

Key-encoder BatchNorm (`moco.bn`):
  "shuffle" (default, the reference): shuffle-BN. Inside `jax.shard_map` over the mesh's data
      axis every device gathers the global key batch, permutes it with ONE permutation drawn
      from the same RNG on every device, encodes its own slice with per-device BatchNorm, and
      the keys are gathered and un-permuted. The per-device running statistics are averaged
      across devices (torch DDP would keep rank 0's; only the query encoder is evaluated, so
      this is bookkeeping).
  "sync": plain global BatchNorm under jit (SyncBN); equal on any number of devices.
  "split": the single-GPU emulation of shuffle-BN (the MoCo CIFAR-10 demo's SplitBatchNorm):
      the global batch is cut into `moco.bn_splits` slices, each normalised by its own
      statistics, in BOTH encoders (as each GPU's BN in the reference's 8-GPU run); the keys
      are shuffled before the split and un-shuffled after. Computed on global arrays under jit,
      so the step is the same on any number of devices.
With "shuffle" and "sync" the query encoder uses global BN (jit on global arrays), as ssl_jax
does everywhere.

`moco.symmetric` (default False, the reference): the loss of both directions, q1 against k2 and
q2 against k1, averaged (the CIFAR demo and lightly use it for short runs; the demo sums them),
and both key batches enter the queue (so K must be a multiple of 2B).

State layout (in `TrainState.model_state`, checkpointed with the rest):
  {"batch_stats": query BN, "key": {"params", "batch_stats"}, "queue": {"keys": [K, D], "ptr": int32}}
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from ssl_jax import losses, sharding
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables
from ssl_jax.models import heads

VERSIONS = (1, 2)
BN_MODES = ("shuffle", "sync", "split")


# ---------------------------------------------------------------------------------------------
# Pure pieces (tested directly)
# ---------------------------------------------------------------------------------------------

def momentum_update(key_params: Any, query_params: Any, momentum: float) -> Any:
    """key <- m * key + (1 - m) * query, leaf by leaf; the query side carries no gradient."""
    query_params = jax.lax.stop_gradient(query_params)
    return jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, key_params, query_params)


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Write keys [B, D] into queue [K, D] at rows ptr..ptr+B-1; return (queue, (ptr + B) % K).

    K must be a multiple of B (as builder.py asserts), so a batch never wraps around the end.
    """
    k_size, b = queue.shape[0], keys.shape[0]
    if k_size % b:
        raise ValueError(f"queue size {k_size} is not a multiple of the batch size {b}")
    queue = jax.lax.dynamic_update_slice_in_dim(queue, keys.astype(queue.dtype), ptr, axis=0)
    return queue, ((ptr + b) % k_size).astype(ptr.dtype)


def shuffled_forward(apply_fn: Callable, variables: Any, x: jax.Array, rng: jax.Array,
                     mesh: Mesh, axis: str = sharding.DATA_AXIS):
    """Shuffle-BN forward: `apply_fn(variables, x_local) -> (out_local, stats_local)` on a
    shuffled slice of the global batch per device; outputs come back in the original order.

    x: [B, ...] global (B divisible by the devices of `axis`). Returns (out [B, ...] in the
    order of x, stats with a leading device axis [n_devices, ...]: each device's own
    BatchNorm statistics, computed over the B/n examples it saw after shuffling).
    """
    def local(variables, x, rng):
        b = x.shape[0]
        i = jax.lax.axis_index(axis)
        x_all = jax.lax.all_gather(x, axis, tiled=True)
        # Same rng on every device -> the same permutation everywhere, no broadcast needed.
        perm = jax.random.permutation(rng, x_all.shape[0])
        mine = jax.lax.dynamic_slice_in_dim(x_all[perm], i * b, b)
        out, stats = apply_fn(variables, mine)
        out_all = jax.lax.all_gather(out, axis, tiled=True)
        inverse = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))
        out = jax.lax.dynamic_slice_in_dim(out_all[inverse], i * b, b)
        return out, jax.tree.map(lambda s: s[None], stats)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()),
                         out_specs=(P(axis), P(axis)))(variables, x, rng)


def split_forward(apply_fn: Callable, variables: Any, x: jax.Array, splits: int):
    """`apply_fn(variables, x_slice) -> (out, stats)` on `splits` equal slices of the batch,
    each with its own BatchNorm statistics (vmapped, so one program); returns (out [B, ...] in
    the order of x, the slices' running statistics averaged)."""
    b = x.shape[0]
    if b % splits:
        raise ValueError(f"batch {b} is not divisible by moco.bn_splits={splits}")
    xs = x.reshape(splits, b // splits, *x.shape[1:])
    out, stats = jax.vmap(apply_fn, in_axes=(None, 0))(variables, xs)
    return out.reshape(b, *out.shape[2:]), jax.tree.map(lambda t: t.mean(axis=0), stats)


# ---------------------------------------------------------------------------------------------
# Networks and the method
# ---------------------------------------------------------------------------------------------

class MoCoNet(nn.Module):
    backbone: nn.Module
    head: nn.Module

    @nn.compact
    def __call__(self, x, train: bool):
        h = self.backbone(normalize(x), train=train)
        return h, self.head(h, train=train)


class Method(base.Method):
    num_views = 2

    def __init__(self, config, mesh: Mesh | None = None):
        cfg = config.moco
        if cfg.version not in VERSIONS:
            raise ValueError(f"unknown moco.version {cfg.version!r}; valid: 1, 2")
        if cfg.bn not in BN_MODES:
            raise ValueError(f"unknown moco.bn {cfg.bn!r}; valid: {', '.join(BN_MODES)}")
        self.symmetric = bool(cfg.get("symmetric", False))
        keys_per_step = config.batch_size * (2 if self.symmetric else 1)
        if cfg.queue_size % keys_per_step:
            raise ValueError(f"moco.queue_size={cfg.queue_size} must be a multiple of the keys "
                             f"enqueued per step, {keys_per_step} (batch_size="
                             f"{config.batch_size}{', symmetric' if self.symmetric else ''})")
        head = (heads.LinearProjection(cfg.proj_dim) if cfg.version == 1
                else heads.ProjectionMLP(out_dim=cfg.proj_dim))
        self.net = MoCoNet(build_backbone(config), head)
        self.temperature = float(cfg.temperature)
        self.momentum = float(cfg.momentum)
        self.queue_size = int(cfg.queue_size)
        self.bn = cfg.bn
        self.bn_splits = int(cfg.get("bn_splits", 8))
        self._mesh = mesh

    @property
    def mesh(self) -> Mesh:
        """The mesh shuffle-BN maps over; by default the trainer's (`sharding.make_mesh`)."""
        if self._mesh is None:
            self._mesh = sharding.make_mesh()
        return self._mesh

    def init(self, rng, images):
        net_rng, queue_rng = jax.random.split(rng)
        params, model_state = split_variables(self.net.init(net_rng, images, train=False))
        dim = self.net.head.out_dim
        queue = losses.l2_normalize(jax.random.normal(queue_rng, (self.queue_size, dim)))
        # The key encoder starts as a copy of the query encoder (builder.py copies params).
        key = {"params": params, "batch_stats": model_state["batch_stats"]}
        return params, {**model_state, "key": key,
                        "queue": {"keys": queue, "ptr": jnp.zeros((), jnp.int32)}}

    def _apply(self, variables, x):
        (_, z), new = self.net.apply(variables, x, train=True, mutable=["batch_stats"])
        return z, new["batch_stats"]

    def _queries(self, query_vars, x):
        if self.bn == "split":
            return split_forward(self._apply, query_vars, x, self.bn_splits)
        return self._apply(query_vars, x)

    def _keys(self, key_vars, x, rng):
        if self.bn == "sync":
            return self._apply(key_vars, x)
        if self.bn == "split":
            perm = jax.random.permutation(rng, x.shape[0])
            z, stats = split_forward(self._apply, key_vars, x[perm], self.bn_splits)
            return jnp.zeros_like(z).at[perm].set(z), stats
        z, stats = shuffled_forward(self._apply, key_vars, x, rng, self.mesh)
        return z, jax.tree.map(lambda s: s.mean(axis=0), stats)

    def loss(self, params, model_state, views, labels, rng):
        del labels
        key = model_state["key"]
        key_params = momentum_update(key["params"], params, self.momentum)
        # (query view, key view) pairs: view 0 -> 1, and with `symmetric` also 1 -> 0. The BN
        # statistics thread through the passes in order, as consecutive forwards in torch do.
        pairs = ((0, 1), (1, 0)) if self.symmetric else ((0, 1),)
        query_stats, key_stats = model_state["batch_stats"], key["batch_stats"]
        queue = model_state["queue"]
        losses_, accs, all_keys = [], [], []
        for (qv, kv), pair_rng in zip(pairs, jax.random.split(rng, len(pairs))):
            q, query_stats = self._queries({"params": params, "batch_stats": query_stats},
                                           views[:, qv])
            k, key_stats = self._keys({"params": key_params, "batch_stats": key_stats},
                                      views[:, kv], pair_rng if self.symmetric else rng)
            k = jax.lax.stop_gradient(losses.l2_normalize(k))
            # Every direction is scored against the queue as it was before this step.
            loss, logits = losses.infonce_queue(q, k, queue["keys"], self.temperature)
            losses_.append(loss)
            accs.append((jnp.argmax(logits, axis=1) == 0).mean())
            all_keys.append(k)
        loss = sum(losses_) / len(losses_)
        keys, ptr = enqueue(queue["keys"], queue["ptr"], jnp.concatenate(all_keys))
        new_state = {**model_state, "batch_stats": query_stats,
                     "key": {"params": key_params, "batch_stats": key_stats},
                     "queue": {"keys": keys, "ptr": ptr}}
        accuracy = sum(accs) / len(accs)
        return loss, (new_state, {"loss": loss, "contrastive_accuracy": accuracy})
