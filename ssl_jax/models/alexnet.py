"""AlexNet: torchvision's variant and a BatchNorm variant for pretext-task training.

Flax submodule names are torchvision's ``features.N`` / ``classifier.N`` indices with ``_``
(``features_0``, ``classifier_1``) so a torch state_dict converts mechanically.

torchvision ``alexnet`` (``batch_norm=False``)::

  features: 0 conv11/4 p2 (64), 1 relu, 2 maxpool3/2, 3 conv5 p2 (192), 4 relu, 5 maxpool,
            6 conv3 (384), 7 relu, 8 conv3 (256), 9 relu, 10 conv3 (256), 11 relu, 12 maxpool
  avgpool:  adaptive 6x6, flatten in C,H,W order (as torch, so fc weights need only a transpose)
  classifier: 0 dropout, 1 linear (9216 -> 4096), 2 relu, 3 dropout, 4 linear, 5 relu,
              6 linear (-> num_classes)

``alexnet_bn`` (``batch_norm=True``; the "AlexNet with BN inserted" used by pretext-task and
InsDis papers for faster convergence, fc layers as in gidariss' RotNet)::

  features: conv, bn, relu [, maxpool] per conv -> convs at 0, 4, 8, 11, 14; BN at +1
  classifier: 0 linear (no bias), 1 bn1d, 2 relu, 3 linear (no bias), 4 bn1d, 5 relu, 6 linear
  (no dropout)

Named activations (``sow``): ``conv1`` ... ``conv5`` (post-ReLU, before any max-pool; conv5 is
13x13 at 224 px), ``pool5`` (after the last max-pool and the adaptive pool, [N, 6, 6, C]),
``fc6``, ``fc7`` (post-ReLU, [N, fc_dim]).
"""
import functools
import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.batch_norm import BatchNorm
from ssl_jax.models.conv import Conv
from ssl_jax.models.pooling import adaptive_avg_pool, max_pool
from ssl_jax.models.resnet import scaled_width
from ssl_jax.models.sequential import SequentialCNN, flatten_chw
from ssl_jax.models.taps import tap

# (out channels, kernel, stride, padding, max-pool after)
_CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
          (256, 3, 1, 1, False), (256, 3, 1, 1, True))

LAYER_NAMES = ["conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7"]


class AlexNet(SequentialCNN):
    """AlexNet on NHWC float input (at least 63 px so conv5's max-pool has an input); fields
    in ``SequentialCNN``; ``dropout_rate`` is dropout before fc6/fc7, unused by ``alexnet_bn``."""

    def _bn(self, train: bool, name: str) -> BatchNorm:
        return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """x: [N, H, W, 3] -> [N, fc_dim] fc7 features, or [N, num_classes] logits."""
        if min(x.shape[1:3]) < 63:  # else the last max-pool sees < 3x3 and XLA fails obscurely
            raise ValueError(f"AlexNet needs inputs of at least 63x63 px, got {x.shape[1:3]}")
        x = x.astype(self.dtype)
        idx = 0  # torch Sequential index of the next layer
        for i, (ch, k, s, p, pool) in enumerate(_CONVS):
            x = Conv(scaled_width(ch, self.width), (k, k), (s, s), padding=((p, p), (p, p)),
                     dtype=self.dtype, name=f"features_{idx}")(x)
            idx += 1
            if self.batch_norm:
                x = self._bn(train, f"features_{idx}")(x)
                idx += 1
            x = self.activation(x)
            idx += 1
            x = tap(self, f"conv{i + 1}", x)
            if pool:
                x = max_pool(x, (3, 3), (2, 2))
                idx += 1
        x = adaptive_avg_pool(x, (6, 6))
        x = tap(self, "pool5", x)
        x = flatten_chw(x)

        if self.batch_norm:
            for i, name in ((0, "fc6"), (3, "fc7")):
                x = nn.Dense(self.fc_dim, use_bias=False, dtype=self.dtype,
                             name=f"classifier_{i}")(x)
                x = self.activation(self._bn(train, f"classifier_{i + 1}")(x))
                x = tap(self, name, x)
        else:
            for i, name in ((1, "fc6"), (4, "fc7")):
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
                x = nn.Dense(self.fc_dim, dtype=self.dtype, name=f"classifier_{i}")(x)
                x = self.activation(x)
                x = tap(self, name, x)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier_6")(x)
        return x.astype(jnp.float32)


# The names this family registers (ssl_jax.models.get_model): the fields fixed by each name.
MODELS = {"alexnet": functools.partial(AlexNet, batch_norm=False),
          "alexnet_bn": functools.partial(AlexNet, batch_norm=True)}


def layer_names(model_name: str) -> list[str]:
    """Sown activation names in forward order (the same for both variants)."""
    return list(LAYER_NAMES)
