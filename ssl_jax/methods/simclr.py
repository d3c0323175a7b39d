"""SimCLR (Chen et al. 2020): NT-Xent over the global batch of two augmented views.

Both views go through the network in one concatenated batch, as google-research/simclr does,
so BatchNorm statistics are computed over all 2N images of the global batch.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables
from ssl_jax.models import heads

HEADS = ("v1", "v2")


class SimCLRNet(nn.Module):
    backbone: nn.Module
    head: nn.Module

    @nn.compact
    def __call__(self, x, train: bool, head_layers: int | None = None):
        """-> (backbone features, projection); with ``head_layers=k`` (v2 head) the second
        output is the head's k-th layer instead of its last."""
        h = self.backbone(normalize(x), train=train)
        if head_layers is None:
            return h, self.head(h, train=train)
        return h, self.head(h, train=train, upto=head_layers)


class Method(base.Method):
    num_views = 2

    def __init__(self, config):
        cfg = config.simclr
        if cfg.head not in HEADS:
            raise ValueError(f"unknown simclr.head {cfg.head!r}; valid: {', '.join(HEADS)}")
        head = (heads.ProjectionMLP(out_dim=cfg.proj_dim) if cfg.head == "v1" else
                heads.ProjectionMLPv2(out_dim=cfg.proj_dim, num_layers=cfg.get("head_layers", 3)))
        # SimCLR v2 evaluates/fine-tunes from a middle layer of its deep head
        # (ft_proj_selector): features_layer = k > 0 takes the head's k-th layer output.
        self.features_layer = int(cfg.get("features_layer", 0))
        if self.features_layer and cfg.head != "v2":
            raise ValueError(f"simclr.features_layer={self.features_layer} needs simclr.head=v2 "
                             "(the v1 head has no BatchNorm'd middle layer to start from)")
        if not 0 <= self.features_layer <= cfg.get("head_layers", 3):
            raise ValueError(f"simclr.features_layer={self.features_layer} must be in "
                             f"[0, simclr.head_layers={cfg.get('head_layers', 3)}]")
        self.net = SimCLRNet(build_backbone(config), head)
        self.temperature = cfg.temperature

    def init(self, rng, images):
        return split_variables(self.net.init(rng, images, train=False))

    def loss(self, params, model_state, views, labels, rng):
        del labels, rng
        b = views.shape[0]
        x = jnp.concatenate([views[:, 0], views[:, 1]], axis=0)
        (_, z), new_state = self.net.apply(
            {"params": params, **model_state}, x, train=True, mutable=["batch_stats"])
        z = z.astype(jnp.float32)
        z1, z2 = z[:b], z[b:]
        loss = losses.nt_xent(z1, z2, self.temperature)
        zn = z / jnp.linalg.norm(z, axis=1, keepdims=True)
        acc = losses.contrastive_accuracy(zn[:b], zn[b:])
        return loss, (new_state, {"loss": loss, "contrastive_accuracy": acc})

    def features(self, params, model_state, images):
        """Backbone features [B, D], or the v2 head's `features_layer`-th layer output."""
        variables = {"params": params, **model_state}
        if self.features_layer:
            return self.net.apply(variables, images, train=False,
                                  head_layers=self.features_layer)[1]
        return self.net.apply(variables, images, train=False)[0]
