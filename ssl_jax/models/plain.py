"""Plain-10: the small all-convolutional CNN of Kornblith et al. 2019's layer-identification
sanity check (their Table 2), for 32 px inputs.

Eight 3x3 conv -> BatchNorm -> ReLU layers, widths (64, 64, 64, 128, 128, 128, 256, 256) times
``width``, stride 2 at conv4 and conv7 (32 -> 16 -> 8 px), then global average pooling; the
classifier (the tenth layer) is the method's head. No skip connections: every layer's output
is the only path to the next, which is what makes "the corresponding layer is the most similar
one" a fair test of a similarity index.

Submodules ``conv1_conv``/``conv1_bn`` ... (a sow name may not equal a submodule name).
Named activations (``sow``): ``conv1`` ... ``conv8`` (post-ReLU, [N, H, W, C]) and ``pool``
([N, 256 * width]).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.batch_norm import BatchNorm
from ssl_jax.models.conv import Conv
from ssl_jax.models.resnet import scaled_width
from ssl_jax.models.sequential import check_width

# (out channels before the width multiplier, stride)
_CONVS = ((64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1))

LAYER_NAMES = [f"conv{i + 1}" for i in range(len(_CONVS))] + ["pool"]


class PlainCNN(nn.Module):
    """Plain-10 on NHWC float input.

    Attributes:
      num_classes: None returns pooled features [N, num_features]; else logits from ``fc``.
      width: multiplies every conv width.
      dtype: computation dtype; params and BN statistics stay float32, the output is float32.
    """
    num_classes: int | None = None
    width: float = 1.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_width(self.width)
        super().__post_init__()

    @property
    def num_features(self) -> int:
        """Width of the pooled features: 256 * width."""
        return scaled_width(_CONVS[-1][0], self.width)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """x: [N, H, W, 3] -> [N, num_features] features, or [N, num_classes] logits."""
        x = x.astype(self.dtype)
        for i, (channels, stride) in enumerate(_CONVS):
            x = Conv(scaled_width(channels, self.width), (3, 3), (stride, stride),
                     padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                     name=f"conv{i + 1}_conv")(x)
            x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype, name=f"conv{i + 1}_bn")(x)
            x = nn.relu(x)
            self.sow("intermediates", f"conv{i + 1}", x)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "pool", x)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


# The names this family registers (ssl_jax.models.get_model).
MODELS = {"plain10": functools.partial(PlainCNN)}


def layer_names(model_name: str) -> list[str]:
    """Sown activation names in forward order."""
    return list(LAYER_NAMES)
