"""Supervised cross-entropy training: backbone + linear classifier `fc` on one view."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables


class ClassifierNet(nn.Module):
    backbone: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        h = self.backbone(normalize(x), train=train)
        logits = nn.Dense(self.num_classes, name="fc", dtype=jnp.float32)(h.astype(jnp.float32))
        return h, logits


class Method(base.Method):
    num_views = 1

    def __init__(self, config):
        self.net = ClassifierNet(build_backbone(config), config.dataset.num_classes)
        self.label_smoothing = config.get("supervised", {}).get("label_smoothing", 0.0)

    def init(self, rng, images):
        return split_variables(self.net.init(rng, images, train=False))

    def loss(self, params, model_state, views, labels, rng):
        del rng
        (_, logits), new_state = self.net.apply(
            {"params": params, **model_state}, views[:, 0], train=True, mutable=["batch_stats"])
        loss = losses.cross_entropy(logits, labels, self.label_smoothing)
        accuracy = (jnp.argmax(logits, -1) == labels).mean()
        return loss, (new_state, {"loss": loss, "train_accuracy": accuracy})

    def logits(self, params, model_state, images):
        return self.net.apply({"params": params, **model_state}, images, train=False)[1]
