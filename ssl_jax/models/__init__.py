"""Model zoo: backbones by name, heads, and the names of their sown activations.

    model = get_model("resnet50", width=2.0)            # pooled features [N, 4096]
    variables = model.init(key, x, train=False)         # {"params", "batch_stats"}
    feats, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    state["intermediates"]["layer3"][0]                 # [N, H/16, W/16, 2048]

Every backbone takes NHWC float input, ``train`` (BatchNorm batch statistics vs running
averages), exposes ``num_features`` and sows the activations listed by ``layer_names``.

A model family is a module here with ``MODELS`` ({name: ``functools.partial(ModuleClass,
**fields the name fixes)``}; the class's other fields are the name's kwargs) and
``layer_names(name)``. To add a family: one new module plus its name in FAMILIES.
"""
import importlib
from typing import Any

import flax.linen as nn

from ssl_jax.models.heads import (LinearClassifier, LinearProjection, MLPHead, ProjectionMLP,
                                  ProjectionMLPv2)
from ssl_jax.models.load import load  # noqa: E402  (converted zoo checkpoints)

FAMILIES = ("resnet", "alexnet", "vgg", "plain")

# name -> family module, in FAMILIES order, then each family's MODELS order.
_FAMILY_OF = {name: module
              for module in (importlib.import_module(f"ssl_jax.models.{f}") for f in FAMILIES)
              for name in module.MODELS}
MODEL_NAMES = tuple(_FAMILY_OF)

# Options of a ResNet that any backbone accepts at these values, so callers can pass one
# config to every backbone; other values would be silently meaningless where absent.
_SHARED_DEFAULTS = (("cifar_stem", False), ("padding", "torch"))

__all__ = ["FAMILIES", "MODEL_NAMES", "get_model", "layer_names", "ProjectionMLP",
           "ProjectionMLPv2", "MLPHead", "LinearProjection", "LinearClassifier", "load"]


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Backbone by name (one of MODEL_NAMES).

    Common kwargs: ``num_classes`` (None = pooled features), ``width`` (multiplies every conv
    width, stem included), ``dtype`` (computation dtype). ResNets also take ``cifar_stem``,
    ``padding`` ("torch" | "same" | "simclr") and ``zero_init_residual``; AlexNet/VGG take
    ``fc_dim`` and ``dropout_rate`` and accept only ``cifar_stem=False, padding="torch"``, as
    does ``plain10`` (Kornblith et al. 2019's Plain-10 CNN for 32 px inputs).
    Unknown names or kwargs raise ValueError listing the valid ones.
    """
    _check_name(name)
    build = _FAMILY_OF[name].MODELS[name]
    fields = set(build.func.__dataclass_fields__)
    for key, default in _SHARED_DEFAULTS:
        if key not in fields:
            value = kwargs.pop(key, default)
            if value != default:
                raise ValueError(f"{key}={value!r} is not supported by {name}; only {default!r}")
    valid = sorted(fields - set(build.keywords) - {"parent", "name"})
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown kwargs {unknown} for {name}; valid: {valid}")
    return build(**kwargs)


def layer_names(model_name: str) -> list[str]:
    """Names sown into the "intermediates" collection by ``model_name``, in forward order.

    ResNet: stem, layer1.0, ..., layer1, ..., layer4, pool. AlexNet: conv1..conv5, pool5,
    fc6, fc7. VGG16: conv1_1, conv1_2, conv1, ..., conv5_3, conv5, pool5, fc6, fc7.
    Plain-10: conv1 ... conv8, pool.
    """
    _check_name(model_name)
    return _FAMILY_OF[model_name].layer_names(model_name)
