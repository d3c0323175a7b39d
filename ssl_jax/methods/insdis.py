"""Instance discrimination, InsDis / NPID (Wu et al. 2018), following zhirongw/lemniscate.pytorch.

Every training image is its own class. The network maps an image to an L2-normalised embedding
v = f(x) / ||f(x)|| (backbone -> Dense(128)); a memory bank M [N, 128] holds one embedding per
training example. The positive of example i is its bank row m_i, the negatives are K rows drawn
uniformly from the bank (the positive index may be drawn too, as in the reference). After each
step the rows of the batch move towards the new embeddings:
    m_i <- normalise(m * m_i + (1 - m) * v_i),   m = 0.5.

Losses (`insdis.loss`):
  "nce" (default, the paper): non-parametric softmax P(i|v) = exp(v.m_i / T) / Z approximated by
      noise-contrastive estimation with noise Pn = 1/N:
          h(i, v) = P(i|v) / (P(i|v) + K Pn)
          loss = -mean_batch[ log h(pos) + sum_K log(1 - h(neg)) ]
      Z is estimated once, on the first step, as N * mean(exp(logits / T)) over the batch's
      positive and negative logits, then kept fixed (lemniscate's NCEAverage does the same).
  "softmax_nce": cross entropy over [positive, K negatives] logits / T (the "softmax" NCE of
      CMC / PyContrast).

Negatives (`insdis.per_example_negatives`): True draws K indices for every example, as the
reference does ([B, K, D] gathered from the bank: memory-bound on CPU); False (the smoke and
quickstart configs) draws one set of K indices for the whole global batch.

The bank is updated with the rows of the global batch under jit, so it is identical on any
number of devices. It lives in `TrainState.model_state["memory"]` (checkpointed; its rows are
split over the devices once it reaches 64 MiB, e.g. ImageNet's 1.28M x 128, replicated below
that: `sharding.state_leaf_sharding`):
  {"batch_stats": BN, "memory": {"bank": [N, D], "z": () float32 (0 until estimated)}}
The example indices come from the input pipeline (`batch["index"]`, a stable position of the
example in its TFDS split, see `pipeline.example_index`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables

LOSSES = ("nce", "softmax_nce")
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Pure pieces (tested directly)
# ---------------------------------------------------------------------------------------------

def update_memory(bank: jax.Array, indices: jax.Array, embeddings: jax.Array,
                  momentum: float) -> jax.Array:
    """bank[i] <- normalise(momentum * bank[i] + (1 - momentum) * v_i) for the batch's rows.

    bank: [N, D]; indices: [B] int; embeddings: [B, D] (gradient stopped here). If an index
    repeats in the batch, the last occurrence wins (as torch's index_copy_).
    """
    v = jax.lax.stop_gradient(embeddings).astype(bank.dtype)
    rows = losses.l2_normalize(momentum * bank[indices] + (1.0 - momentum) * v)
    return bank.at[indices].set(rows.astype(bank.dtype))


def nce_loss(pos_logits: jax.Array, neg_logits: jax.Array, log_z: jax.Array,
             num_data: int) -> jax.Array:
    """NCE loss of Wu et al. (eq. 6) from logits v.m / T.

    pos_logits: [B]; neg_logits: [B, K]; log_z: scalar log of the partition estimate Z;
    num_data: N (noise distribution Pn = 1/N). Returns the mean over the batch of
    -(log h(pos) + sum_K log(1 - h(neg))), h = P / (P + K Pn), P = exp(logit) / Z.
    """
    k = neg_logits.shape[-1]
    log_k_pn = jnp.log(k / num_data)
    # log h = log P - log(P + K Pn); log(1 - h) = log(K Pn) - log(P + K Pn), computed stably.
    log_p_pos = pos_logits - log_z
    log_p_neg = neg_logits - log_z
    log_h_pos = log_p_pos - jnp.logaddexp(log_p_pos, log_k_pn)
    log_1mh_neg = log_k_pn - jnp.logaddexp(log_p_neg, log_k_pn)
    return -(log_h_pos + log_1mh_neg.sum(axis=-1)).mean()


def softmax_nce_loss(pos_logits: jax.Array, neg_logits: jax.Array) -> jax.Array:
    """Cross entropy with the positive in column 0 of [pos, negatives]: pos [B], neg [B, K]."""
    logits = jnp.concatenate([pos_logits[:, None], neg_logits], axis=1)
    return (jax.nn.logsumexp(logits, axis=1) - pos_logits).mean()


def estimate_log_z(pos_logits: jax.Array, neg_logits: jax.Array, num_data: int) -> jax.Array:
    """log Z with Z = N * mean(exp(logit)) over every positive and negative logit of the batch."""
    all_logits = jnp.concatenate([pos_logits[:, None], neg_logits], axis=1)
    return jnp.log(num_data) + jax.nn.logsumexp(all_logits) - jnp.log(all_logits.size)


def sample_negatives(rng: jax.Array, batch: int, num_negatives: int, num_data: int,
                     per_example: bool) -> jax.Array:
    """Uniform bank indices: [B, K] (per example) or [K] (shared by the global batch)."""
    shape = (batch, num_negatives) if per_example else (num_negatives,)
    return jax.random.randint(rng, shape, 0, num_data)


def negative_logits(v: jax.Array, bank: jax.Array, neg_idx: jax.Array,
                    temperature: float) -> jax.Array:
    """v: [B, D] normalised embeddings; neg_idx [B, K] or [K] -> logits [B, K] = v.m / T."""
    negatives = bank[neg_idx].astype(jnp.float32)
    if neg_idx.ndim == 1:
        return jnp.matmul(v, negatives.T, precision=_HIGHEST) / temperature
    return jnp.einsum("bd,bkd->bk", v, negatives, precision=_HIGHEST) / temperature


# ---------------------------------------------------------------------------------------------
# Network and the method
# ---------------------------------------------------------------------------------------------

class InsDisNet(nn.Module):
    """backbone -> Dense(embed_dim) (the ResNet's fc in lemniscate); returns (h, v)."""
    backbone: nn.Module
    embed_dim: int = 128

    @nn.compact
    def __call__(self, x, train: bool):
        h = self.backbone(normalize(x), train=train)
        v = nn.Dense(self.embed_dim, name="embed")(h.astype(jnp.float32))
        return h, losses.l2_normalize(v)


class Method(base.Method):
    num_views = 1
    needs_index = True  # the pipeline adds batch["index"]; the trainer passes it to `loss`

    def __init__(self, config):
        cfg = config.insdis
        if cfg.loss not in LOSSES:
            raise ValueError(f"unknown insdis.loss {cfg.loss!r}; valid: {', '.join(LOSSES)}")
        num_data = int(config.get("num_train", 0) or 0)
        if num_data <= 0:
            raise ValueError("insdis needs config.num_train (the training-split size, set by "
                             "the trainer) to size its memory bank")
        if not 0 < cfg.num_negatives:
            raise ValueError(f"insdis.num_negatives={cfg.num_negatives} must be > 0")
        self.net = InsDisNet(build_backbone(config), cfg.embed_dim)
        self.num_data = num_data
        self.temperature = float(cfg.temperature)
        self.momentum = float(cfg.memory_momentum)
        self.num_negatives = int(cfg.num_negatives)
        self.per_example = bool(cfg.per_example_negatives)
        self.loss_name = cfg.loss

    def init(self, rng, images):
        net_rng, bank_rng = jax.random.split(rng)
        params, model_state = split_variables(self.net.init(net_rng, images, train=False))
        # lemniscate fills the bank with U(-s, s), s = 1/sqrt(D/3) (rows of norm ~1); here
        # the rows are normalised exactly, as every later write is.
        d = self.net.embed_dim
        bank = losses.l2_normalize(jax.random.uniform(bank_rng, (self.num_data, d), minval=-1.0,
                                                      maxval=1.0))
        return params, {**model_state,
                        "memory": {"bank": bank, "z": jnp.zeros((), jnp.float32)}}

    def loss(self, params, model_state, views, labels, rng, index):
        del labels
        (_, v), new = self.net.apply({"params": params, "batch_stats": model_state["batch_stats"]},
                                     views[:, 0], train=True, mutable=["batch_stats"])
        memory = model_state["memory"]
        bank = jax.lax.stop_gradient(memory["bank"])
        pos = jnp.sum(v * bank[index].astype(jnp.float32), axis=-1) / self.temperature
        neg_idx = sample_negatives(rng, v.shape[0], self.num_negatives, self.num_data,
                                   self.per_example)
        neg = negative_logits(v, bank, neg_idx, self.temperature)
        # Z: estimated on the first step (z == 0), then fixed, as lemniscate's NCEAverage.
        log_z_now = jax.lax.stop_gradient(estimate_log_z(pos, neg, self.num_data))
        log_z = jnp.where(memory["z"] > 0, jnp.log(jnp.maximum(memory["z"], 1e-30)), log_z_now)
        if self.loss_name == "nce":
            loss = nce_loss(pos, neg, log_z, self.num_data)
        else:
            loss = softmax_nce_loss(pos, neg)
        new_memory = {"bank": update_memory(memory["bank"], index, v, self.momentum),
                      "z": jnp.exp(log_z).astype(jnp.float32)}
        # Instance accuracy: the positive scores above every sampled negative.
        accuracy = (pos > neg.max(axis=1)).mean()
        new_state = {**model_state, "batch_stats": new["batch_stats"], "memory": new_memory}
        return loss, (new_state, {"loss": loss, "instance_accuracy": accuracy})
