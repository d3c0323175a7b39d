"""Pieces shared by every method: the input normalisation and the backbone built from config."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import models

# ImageNet statistics: every ssl_jax network takes images in [0, 1] and normalises inside, so
# callers (evaluators, converters, users) never preprocess by hand.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: jnp.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jnp.ndarray:
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def compute_dtype(config):
    name = config.get("compute_dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"unknown compute_dtype {name!r}; valid: float32, bfloat16")
    return jnp.dtype(name)


def build_backbone(config) -> nn.Module:
    """The encoder without classifier: returns pooled features [N, num_features]."""
    m = config.model
    # fc_dim (AlexNet/VGG fc6/fc7 width) only where the config sets it: ResNets have no fc
    # layers, and get_model rejects kwargs a model does not take.
    extra = {"fc_dim": int(m.fc_dim)} if m.get("fc_dim") else {}
    return models.get_model(m.name, num_classes=None, width=m.get("width", 1.0),
                            cifar_stem=m.get("cifar_stem", False),
                            padding=m.get("padding", "torch"), dtype=compute_dtype(config),
                            **extra)


def split_variables(variables):
    """Flax variables -> (params, every other collection)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables
