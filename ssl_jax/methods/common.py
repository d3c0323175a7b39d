"""Pieces shared by every method: the input normalisation and the backbone built from config."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import models

# ImageNet statistics: every ssl_jax network takes images in [0, 1] and normalises inside, so
# callers (evaluators, converters, users) never preprocess by hand. Defined in ssl_jax.data,
# which imports nothing, so that the converter's CLI starts without JAX.
from ssl_jax.data import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,F401


def normalize(x: jnp.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jnp.ndarray:
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def compute_dtype(config):
    name = config.get("compute_dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"unknown compute_dtype {name!r}; valid: float32, bfloat16")
    return jnp.dtype(name)


# Backbone nonlinearities by config name (`model.activation`). The smooth ones exist for
# numerics checks as much as for users: ReLU's kink turns a last-bit rounding difference in a
# pre-activation at ~0 into a different gradient (the 2-process test, tests/test_train_run.py).
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


def backbone_activation(config):
    name = config.model.get("activation", "relu")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown model.activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def build_backbone(config) -> nn.Module:
    """The encoder without classifier: returns pooled features [N, num_features]."""
    m = config.model
    # fc_dim (AlexNet/VGG fc6/fc7 width) only where the config sets it: ResNets have no fc
    # layers, and get_model rejects kwargs a model does not take; likewise a non-ReLU
    # activation (ResNet, AlexNet, VGG).
    extra = {"fc_dim": int(m.fc_dim)} if m.get("fc_dim") else {}
    activation = backbone_activation(config)
    if activation is not nn.relu:
        extra["activation"] = activation
    return models.get_model(m.name, num_classes=None, width=m.get("width", 1.0),
                            cifar_stem=m.get("cifar_stem", False),
                            padding=m.get("padding", "torch"), dtype=compute_dtype(config),
                            **extra)


def split_variables(variables):
    """Flax variables -> (params, every other collection)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables
