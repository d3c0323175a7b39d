"""ResNet-18/34/50/101/152 (torchvision v1.5 layout) as Flax Linen modules.

Module names mirror torchvision's state_dict so conversion is mechanical: a torch key such as
``layer1.0.downsample.0.weight`` lives at flax path ``('layer1_0', 'downsample_0', 'kernel')``
(a numeric torch path segment is joined to its parent with ``_``).

Named activations (``self.sow("intermediates", ...)``, read with
``model.apply(variables, x, train=False, mutable=["intermediates"])``) use torchvision's dotted
module names: ``stem`` (after the max-pool; after the ReLU with ``cifar_stem``), every block
``layer1.0`` ... ``layer4.2``, every stage ``layer1`` ... ``layer4`` (the same array as the
stage's last block) and ``pool`` (global average pool, [N, C]). Each is stored as a 1-tuple, as
``sow`` does.

Inside each block, ``sow_in_block`` (the ``in_block`` collection, collected only when asked for)
names the activations after each inner conv's BN + ReLU, ``relu1`` (and ``relu2`` in a
bottleneck), and the block output ``out`` (the same array as ``layerS.B``), under the block's
module path: ``layer1_0/relu1``, ``layer1_0/out``. Parameters are unaffected.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.batch_norm import BatchNorm
from ssl_jax.models.conv import Conv
from ssl_jax.models.pooling import max_pool
from ssl_jax.models.sequential import check_width
from ssl_jax.models.taps import sow_in_block, tap

# torchvision's Conv2d init for ResNets: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

PADDINGS = ("torch", "same", "simclr")

STAGE_SIZES = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
BOTTLENECK = {"resnet18": False, "resnet34": False, "resnet50": True, "resnet101": True,
              "resnet152": True}


def scaled_width(channels: int, width: float) -> int:
    """Channel count after the width multiplier (SimCLR 2x/4x style; at least 1)."""
    return max(1, int(round(channels * width)))


def _pad(kernel: int, padding: str) -> Any:
    """Conv/pool padding: PyTorch's symmetric k//2 pads, or TF/Haiku "SAME".

    They differ for stride 2 on even inputs: SAME puts the extra pixel at the bottom/right only.
    """
    if padding == "same":
        return "SAME"
    return ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))


class _BlockBase(nn.Module):
    """Fields shared by both residual blocks."""
    planes: int  # stage width (already width-scaled); output = planes * expansion
    strides: int = 1
    downsample: bool = False
    padding: str = "torch"
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu

    def _conv(self, features: int, kernel: int, strides: int, name: str) -> Conv:
        return Conv(features, (kernel, kernel), (strides, strides),
                    padding=_pad(kernel, self.padding), use_bias=False,
                    kernel_init=_conv_init, dtype=self.dtype, name=name)

    def _bn(self, train: bool, name: str, zero: bool = False) -> BatchNorm:
        # torch momentum 0.1 == flax momentum 0.9; torch eps 1e-5.
        return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype,
                         scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
                         name=name)

    def _shortcut(self, x: jnp.ndarray, out_features: int, train: bool) -> jnp.ndarray:
        if not self.downsample:
            return x
        x = self._conv(out_features, 1, self.strides, "downsample_0")(x)
        return self._bn(train, "downsample_1")(x)


class BasicBlock(_BlockBase):
    """Two 3x3 convs (ResNet-18/34); output width = planes."""
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = self._conv(self.planes, 3, self.strides, "conv1")(x)
        y = self.activation(self._bn(train, "bn1")(y))
        sow_in_block(self, "relu1", y)
        y = self._conv(self.planes, 3, 1, "conv2")(y)
        y = self._bn(train, "bn2", zero=self.zero_init_residual)(y)
        out = self.activation(y + self._shortcut(x, self.planes, train))
        sow_in_block(self, "out", out)
        return out


class Bottleneck(_BlockBase):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 bottleneck (ResNet-50+); output width = 4 * planes.

    ``width_per_group`` is torchvision's name: the two inner convs have
    ``planes * width_per_group / 64`` channels (128 in wide_resnet50_2 / wide_resnet101_2).
    """
    expansion = 4
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = self.planes * self.expansion
        inner = int(self.planes * (self.width_per_group / 64))  # torchvision's rounding
        y = self._conv(inner, 1, 1, "conv1")(x)
        y = self.activation(self._bn(train, "bn1")(y))
        sow_in_block(self, "relu1", y)
        y = self._conv(inner, 3, self.strides, "conv2")(y)
        y = self.activation(self._bn(train, "bn2")(y))
        sow_in_block(self, "relu2", y)
        y = self._conv(out, 1, 1, "conv3")(y)
        y = self._bn(train, "bn3", zero=self.zero_init_residual)(y)
        y = self.activation(y + self._shortcut(x, out, train))
        sow_in_block(self, "out", y)
        return y


class ResNet(nn.Module):
    """torchvision-layout ResNet on NHWC float input.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      bottleneck: Bottleneck blocks (ResNet-50+) instead of BasicBlocks.
      num_classes: None returns pooled features [N, num_features]; else logits from ``fc``.
      width: multiplies every conv width, the stem included (SimCLR/SwAV/VICReg convention;
        not torchvision's wide_resnet, which widens only the bottleneck's inner convs).
      width_per_group: torchvision's wide-ResNet knob: the bottleneck's two inner convs get
        ``planes * width_per_group / 64`` channels (64 = plain ResNet, 128 = wide_resnet*_2).
        Bottleneck ResNets only.
      cifar_stem: 3x3 stride-1 stem conv and no max-pool (for 32 px inputs).
      padding: "torch" (explicit symmetric pads, loads torchvision weights exactly), "same"
        (TF/Haiku SAME everywhere, e.g. for BYOL checkpoints) or "simclr" (SimCLR v1/v2 TF
        code: its conv2d_fixed_padding equals torch's pads, but the stem max-pool is SAME).
      zero_init_residual: init each block's last BN scale to 0 (torchvision option).
      dtype: computation dtype; params and BN statistics stay float32, the output is float32.
      activation: the nonlinearity (``nn.relu``; swapped for guided backpropagation).
    """
    stage_sizes: Sequence[int]
    bottleneck: bool = False
    num_classes: int | None = None
    width: float = 1.0
    cifar_stem: bool = False
    padding: str = "torch"
    zero_init_residual: bool = False
    width_per_group: int = 64
    dtype: Any = jnp.float32
    activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu

    @property
    def num_features(self) -> int:
        """Width of the pooled features: 512 * width (* 4 for bottleneck ResNets)."""
        return scaled_width(512, self.width) * (4 if self.bottleneck else 1)

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding={self.padding!r}; valid choices: {PADDINGS}")
        check_width(self.width)
        if self.width_per_group != 64 and not self.bottleneck:
            raise ValueError(f"width_per_group={self.width_per_group!r} needs a bottleneck "
                             "ResNet (resnet50/101/152); BasicBlock ResNets only take 64")
        if self.width_per_group <= 0:
            raise ValueError(f"width_per_group={self.width_per_group!r} must be > 0 "
                             "(torchvision: 64, or 128 for wide_resnet*_2)")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """x: [N, H, W, 3] -> [N, num_features] features, or [N, num_classes] logits."""
        x = x.astype(self.dtype)
        conv_padding = "same" if self.padding == "same" else "torch"
        pool_padding = "torch" if self.padding == "torch" else "same"
        stem = scaled_width(64, self.width)
        if self.cifar_stem:
            x = Conv(stem, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                     kernel_init=_conv_init, dtype=self.dtype, name="conv1")(x)
        else:
            x = Conv(stem, (7, 7), (2, 2), padding=_pad(7, conv_padding), use_bias=False,
                     kernel_init=_conv_init, dtype=self.dtype, name="conv1")(x)
        x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=self.dtype, name="bn1")(x)
        x = self.activation(x)
        if not self.cifar_stem:
            x = max_pool(x, (3, 3), (2, 2), padding=_pad(3, pool_padding))
        x = tap(self, "stem", x)

        block_cls = Bottleneck if self.bottleneck else BasicBlock
        extra = {"width_per_group": self.width_per_group} if self.bottleneck else {}
        in_features = stem
        for stage, num_blocks in enumerate(self.stage_sizes):
            planes = scaled_width(64 * 2 ** stage, self.width)
            for b in range(num_blocks):
                strides = 2 if (stage > 0 and b == 0) else 1
                out_features = planes * block_cls.expansion
                block = block_cls(
                    planes=planes, strides=strides,
                    downsample=(strides != 1 or in_features != out_features),
                    padding=conv_padding, zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype, activation=self.activation,
                    name=f"layer{stage + 1}_{b}", **extra)
                x = block(x, train)
                in_features = out_features
                x = tap(self, f"layer{stage + 1}.{b}", x)
            x = tap(self, f"layer{stage + 1}", x)

        x = jnp.mean(x, axis=(1, 2))
        x = tap(self, "pool", x)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


# The names this family registers (ssl_jax.models.get_model): the fields fixed by each name.
MODELS = {name: functools.partial(ResNet, stage_sizes=STAGE_SIZES[name],
                                  bottleneck=BOTTLENECK[name]) for name in STAGE_SIZES}


def layer_names(model_name: str) -> list[str]:
    """Sown activation names of ``model_name`` (e.g. "resnet18") in forward order."""
    names = ["stem"]
    for stage, num_blocks in enumerate(STAGE_SIZES[model_name]):
        names += [f"layer{stage + 1}.{b}" for b in range(num_blocks)] + [f"layer{stage + 1}"]
    return names + ["pool"]

