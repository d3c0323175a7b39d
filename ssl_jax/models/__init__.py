"""Model zoo: backbones by name, heads, and the names of their sown activations.

    model = get_model("resnet50", width=2.0)            # pooled features [N, 4096]
    variables = model.init(key, x, train=False)         # {"params", "batch_stats"}
    feats, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    state["intermediates"]["layer3"][0]                 # [N, H/16, W/16, 2048]

Every backbone takes NHWC float input, ``train`` (BatchNorm batch statistics vs running
averages), exposes ``num_features`` and sows the activations listed by ``layer_names``.
"""
from typing import Any

import flax.linen as nn

from ssl_jax.models import alexnet, plain, resnet, vgg
from ssl_jax.models.alexnet import AlexNet
from ssl_jax.models.plain import PlainCNN
from ssl_jax.models.heads import LinearClassifier, MLPHead, ProjectionMLP, ProjectionMLPv2
from ssl_jax.models.resnet import ResNet
from ssl_jax.models.vgg import VGG
from ssl_jax.models.load import load  # noqa: E402  (converted zoo checkpoints)

MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet",
               "alexnet_bn", "vgg16", "vgg16_bn", "plain10")

__all__ = ["MODEL_NAMES", "get_model", "layer_names", "ResNet", "AlexNet", "VGG", "PlainCNN",
           "ProjectionMLP", "ProjectionMLPv2", "MLPHead", "LinearClassifier", "load"]


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
    if name.startswith("resnet"):
        cls: type[nn.Module] = ResNet
        fixed = {"stage_sizes": resnet.STAGE_SIZES[name], "bottleneck": resnet.BOTTLENECK[name]}
    else:
        # Accept the ResNet-only options at their defaults so callers can pass one config to
        # any backbone; other values would be silently meaningless.
        for key, default in (("cifar_stem", False), ("padding", "torch")):
            value = kwargs.pop(key, default)
            if value != default:
                raise ValueError(f"{key}={value!r} is not supported by {name}; only {default!r}")
        if name == "plain10":
            cls, fixed = PlainCNN, {}
        else:
            cls = AlexNet if name.startswith("alexnet") else VGG
            fixed = {"batch_norm": name.endswith("_bn")}
    valid = sorted(set(cls.__dataclass_fields__) - set(fixed) - {"parent", "name"})
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown kwargs {unknown} for {name}; valid: {valid}")
    return cls(**fixed, **kwargs)


def layer_names(model_name: str) -> list[str]:
    """Names sown into the "intermediates" collection by ``model_name``, in forward order.

    ResNet: stem, layer1.0, ..., layer1, ..., layer4, pool. AlexNet: conv1..conv5, pool5,
    fc6, fc7. VGG16: conv1_1, conv1_2, conv1, ..., conv5_3, conv5, pool5, fc6, fc7.
    Plain-10: conv1 ... conv8, pool.
    """
    _check_name(model_name)
    if model_name.startswith("resnet"):
        return resnet.layer_names(model_name)
    if model_name.startswith("alexnet"):
        return list(alexnet.LAYER_NAMES)
    if model_name == "plain10":
        return list(plain.LAYER_NAMES)
    return list(vgg.LAYER_NAMES)
