"""Counting visual primitives (Noroozi et al. 2017): the features of the 2 x 2 tiles of an
image must sum to the features of the whole image at the tiles' scale, and differ from the
whole-image features of another image (the contrastive term that rules out phi = 0).

phi = backbone -> Dense(count_dim) -> BatchNorm (no affine) -> ReLU (the paper's 1000 non-negative
"counts"; the BatchNorm is ours, see CountingNet).
Per image (inside the jitted loss): the whole image is downsampled 2x to the tiles' scale, then
tiles and whole image are resized to `tile_size` (0: half the image side, no second resize;
AlexNet needs >= 63 px; the quickstarts upsample all five views back to 64 for every
backbone, the size the probes see). Each resampling uses an operator drawn per view (area,
bilinear, bicubic, Lanczos), as in the paper, so resampling artefacts cannot tell tiles from
whole images.
The other image y is the next image of the global batch (a roll by one).
Logged `pretext_accuracy`: how often phi(D x) is closer to sum_j phi(T_j x) than phi(D y) is
(chance 0.5).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.methods import pretext_ops
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables
from ssl_jax.models.batch_norm import BatchNorm


class CountingNet(nn.Module):
    backbone: nn.Module
    count_dim: int

    @nn.compact
    def __call__(self, x, train: bool):
        """x: [N, H, W, 3] -> (backbone features, counts [N, count_dim] >= 0)."""
        h = self.backbone(normalize(x), train=train)
        c = nn.Dense(self.count_dim, name="fc_count", dtype=jnp.float32)(h)
        # BatchNorm without scale and bias before the ReLU: each count is standardised over
        # the batch, so the ReLUs cannot all die. With a plain Dense -> ReLU (and with an
        # affine BatchNorm) our quickstart runs collapsed to phi = 0 within 40 steps: near 0
        # the hinge has almost no gradient and the first term pulls every count down.
        c = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_scale=False, use_bias=False, name="bn_count")(c)
        return h, nn.relu(c)


class Method(base.Method):
    num_views = 1

    def __init__(self, config):
        cfg = config.counting
        self.margin = float(cfg.margin)
        self.tile_size = int(cfg.tile_size) or config.dataset.image_size // 2
        self.net = CountingNet(build_backbone(config), int(cfg.count_dim))

    def init(self, rng, images):
        x = pretext_ops.resize(images, self.tile_size)
        return split_variables(self.net.init(rng, x, train=False))

    def loss(self, params, model_state, views, labels, rng):
        del labels
        tiles, whole = pretext_ops.count_views(rng, views[:, 0], self.tile_size)
        b = whole.shape[0]
        # One forward pass over tiles and whole images: BatchNorm sees both in one batch.
        x = jnp.concatenate([tiles.reshape(4 * b, *tiles.shape[2:]), whole], axis=0)
        (_, counts), new_state = self.net.apply(
            {"params": params, **model_state}, x, train=True, mutable=["batch_stats"])
        # Mean instead of sum over the count_dim squared differences: with BatchNorm'd counts
        # the summed distances are O(count_dim), which would leave the paper's margin M = 10
        # inactive and the loss free to make phi image-independent (our first runs fell to
        # chance accuracy that way); per-dimension, M = 10 keeps the contrastive term on.
        counts = counts / jnp.sqrt(counts.shape[-1])
        tile_counts = counts[:4 * b].reshape(b, 4, -1)
        whole_counts = counts[4 * b:]
        other_counts = jnp.roll(whole_counts, 1, axis=0)
        loss, acc = pretext_ops.counting_loss(tile_counts, whole_counts, other_counts, self.margin)
        return loss, (new_state, {"loss": loss, "pretext_accuracy": acc,
                                  "pretext_chance": jnp.float32(0.5),
                                  "mean_count": jnp.mean(whole_counts.sum(-1))})
