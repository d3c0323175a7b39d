"""What torchvision's two Sequential-layout CNNs, AlexNet and VGG, share: their fields (a conv
`features` stack, then fc6 / fc7 of `fc_dim` units and an optional classifier), the width
check every backbone makes, and torch's C,H,W flatten before fc6 (so fc weights convert with
only a transpose)."""
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp


def check_width(width: float) -> None:
    if width <= 0:
        raise ValueError(f"width={width!r} must be > 0")


def flatten_chw(x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, C] -> [N, C * H * W] in torch's C,H,W order."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class SequentialCNN(nn.Module):
    """Fields of AlexNet and VGG (subclasses define ``__call__``).

    Attributes:
      batch_norm: the BatchNorm variant (``alexnet_bn``, ``vgg16_bn``).
      num_classes: None returns fc7 features [N, fc_dim]; else logits from ``classifier_6``.
      width: multiplies every conv width.
      fc_dim: width of fc6/fc7 (4096 in torchvision; smaller for tests / small data).
      dropout_rate: torchvision's dropout around fc6/fc7 (unused by ``alexnet_bn``); in
        training it needs ``rngs={"dropout": key}``.
      dtype: computation dtype; params stay float32, the output is float32.
      activation: the nonlinearity (``nn.relu``; swapped for guided backpropagation).
    """
    batch_norm: bool = False
    num_classes: int | None = None
    width: float = 1.0
    fc_dim: int = 4096
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu

    def __post_init__(self) -> None:
        check_width(self.width)
        super().__post_init__()

    @property
    def num_features(self) -> int:
        """Width of the returned features (fc7): fc_dim."""
        return self.fc_dim
