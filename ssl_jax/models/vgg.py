"""VGG16 / VGG16-BN in torchvision's layout (configuration "D").

Flax submodule names are torchvision's ``features.N`` / ``classifier.N`` indices with ``_``:
convs at features 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 (``vgg16``) or
0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40 with BN at index + 1 (``vgg16_bn``; convs keep
their bias as in torchvision); adaptive 7x7 average pool; flatten in C,H,W order;
classifier: 0 linear (25088 -> 4096), 1 relu, 2 dropout, 3 linear, 4 relu, 5 dropout,
6 linear (-> num_classes).

Named activations (``sow``), in forward order: ``conv1_1``, ``conv1_2``, ``conv1``,
``conv2_1``, ..., ``conv5_3``, ``conv5`` (each convK_J post-ReLU; ``convK`` is the same array as
block K's last conv, before its max-pool, so AlexNet and VGG share the names ``conv1..conv5``),
``pool5`` ([N, 7, 7, C] after the adaptive pool), ``fc6``, ``fc7`` (post-ReLU).
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

# torchvision's VGG init: kaiming-normal fan_out convs, N(0, 0.01) linears, zero biases.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.normal(0.01)

# (channels, number of 3x3 convs) per block; a 2x2/2 max-pool follows every block.
_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

LAYER_NAMES = [n for k, (_, reps) in enumerate(_BLOCKS)
               for n in [f"conv{k + 1}_{j + 1}" for j in range(reps)] + [f"conv{k + 1}"]]
LAYER_NAMES += ["pool5", "fc6", "fc7"]


class VGG(SequentialCNN):
    """VGG16 (optionally with BN) on NHWC float input (at least 32 px); fields in
    ``SequentialCNN``; ``dropout_rate`` is dropout after fc6/fc7."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """x: [N, H, W, 3] -> [N, fc_dim] fc7 features, or [N, num_classes] logits."""
        if min(x.shape[1:3]) < 32:  # five 2x2 max-pools need at least 32 px
            raise ValueError(f"VGG needs inputs of at least 32x32 px, got {x.shape[1:3]}")
        x = x.astype(self.dtype)
        idx = 0  # torch Sequential index of the next layer
        for k, (ch, reps) in enumerate(_BLOCKS):
            for j in range(reps):
                x = Conv(scaled_width(ch, self.width), (3, 3), padding=((1, 1), (1, 1)),
                         kernel_init=_conv_init, dtype=self.dtype, name=f"features_{idx}")(x)
                idx += 1
                if self.batch_norm:
                    x = BatchNorm(use_running_average=not train, momentum=0.9,
                                  epsilon=1e-5, dtype=self.dtype, name=f"features_{idx}")(x)
                    idx += 1
                x = self.activation(x)
                idx += 1
                x = tap(self, f"conv{k + 1}_{j + 1}", x)
            x = tap(self, f"conv{k + 1}", x)
            x = max_pool(x, (2, 2), (2, 2))
            idx += 1
        x = adaptive_avg_pool(x, (7, 7))
        x = tap(self, "pool5", x)
        x = flatten_chw(x)

        for i, name in ((0, "fc6"), (3, "fc7")):
            x = self.activation(nn.Dense(self.fc_dim, kernel_init=_dense_init, dtype=self.dtype,
                                  name=f"classifier_{i}")(x))
            x = tap(self, name, x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype,
                         name="classifier_6")(x)
        return x.astype(jnp.float32)


# The names this family registers (ssl_jax.models.get_model): the fields fixed by each name.
MODELS = {"vgg16": functools.partial(VGG, batch_norm=False),
          "vgg16_bn": functools.partial(VGG, batch_norm=True)}


def layer_names(model_name: str) -> list[str]:
    """Sown activation names in forward order (the same for both variants)."""
    return list(LAYER_NAMES)
