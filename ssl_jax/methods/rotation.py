"""Rotation prediction (Gidaris et al. 2018, RotNet): 4-way 0/90/180/270 degree classification.

Every image of the batch is shown in all four rotations in the same step (RotNet's best
setting), so the global batch the backbone sees is 4B and BatchNorm statistics cover all four.
The rotations happen here, inside the jitted loss, on the pipeline's crop + flip view.
"""
from __future__ import annotations

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import pretext_ops
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, split_variables
from ssl_jax.methods.supervised import ClassifierNet

CHANCE = 0.25


class Method(base.Method):
    num_views = 1

    def __init__(self, config):
        # The supervised network with a 4-way classifier `fc` on the backbone features.
        self.net = ClassifierNet(build_backbone(config), 4)

    def init(self, rng, images):
        return split_variables(self.net.init(rng, images, train=False))

    def loss(self, params, model_state, views, labels, rng):
        del labels, rng
        x, y = pretext_ops.rotations(views[:, 0])
        (_, logits), new_state = self.net.apply(
            {"params": params, **model_state}, x, train=True, mutable=["batch_stats"])
        loss = losses.cross_entropy(logits, y)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (new_state, {"loss": loss, "pretext_accuracy": acc,
                                  "pretext_chance": jnp.float32(CHANCE)})
