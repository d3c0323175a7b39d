"""Heads on top of pooled backbone features x: [N, D] -> [N, out_dim].

All take ``train`` (BatchNorm uses batch statistics when True, running averages when False;
momentum 0.9 / epsilon 1e-5, i.e. torch's defaults and SimCLR/BYOL's values) and return float32
whatever the computation ``dtype``; params stay float32. Submodule names
(``dense_0``, ``bn_0``, ...) are stable so head weights can be converted or inspected.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.batch_norm import BatchNorm


def _bn(train: bool, dtype: Any, name: str, use_bias: bool = True) -> BatchNorm:
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     use_bias=use_bias, dtype=dtype, name=name)


class ProjectionMLP(nn.Module):
    """SimCLR v1 projection head: Dense(hidden) -> ReLU -> Dense(out_dim).

    Attributes:
      hidden_dim: None = the input width (SimCLR: 2048 for a ResNet-50).
      out_dim: projection width (128 in SimCLR).
    """
    hidden_dim: int | None = None
    out_dim: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train  # no BN or dropout; kept for a uniform head signature
        hidden = self.hidden_dim or x.shape[-1]
        x = nn.relu(nn.Dense(hidden, dtype=self.dtype, name="dense_0")(x))
        return nn.Dense(self.out_dim, dtype=self.dtype, name="dense_1")(x).astype(jnp.float32)


class ProjectionMLPv2(nn.Module):
    """SimCLR v2 projection head (google-research/simclr tf2/model.py ProjectionHead).

    ``num_layers`` Dense layers without bias, each followed by BatchNorm; ReLU between layers.
    The last BN has no bias (centre) term, as in the reference (``center=use_bias=False``).

    Attributes:
      hidden_dim: None = the input width.
      out_dim: projection width (128).
      num_layers: 3 in SimCLR v2.
    """
    hidden_dim: int | None = None
    out_dim: int = 128
    num_layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, upto: int | None = None) -> jnp.ndarray:
        """x: [N, D] -> [N, out_dim]; ``upto=k`` (0 <= k <= num_layers) returns the output of
        the first k layers instead (after their BN and ReLU): SimCLR v2's "fine-tune from a
        middle layer of the head" (its ``ft_proj_selector``), e.g. k = 1."""
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be >= 1")
        upto = self.num_layers if upto is None else upto
        if not 0 <= upto <= self.num_layers:
            raise ValueError(f"upto={upto} must be in [0, num_layers={self.num_layers}]")
        hidden = self.hidden_dim or x.shape[-1]
        for i in range(upto):
            last = i == self.num_layers - 1
            x = nn.Dense(self.out_dim if last else hidden, use_bias=False, dtype=self.dtype,
                         name=f"dense_{i}")(x)
            x = _bn(train, self.dtype, f"bn_{i}", use_bias=not last)(x)
            if not last:
                x = nn.relu(x)
        return x.astype(jnp.float32)


class MLPHead(nn.Module):
    """Two-layer MLP head: Dense(hidden, bias) -> BN -> ReLU -> Dense(out_dim, bias).

    BYOL builds both its projector and its predictor from it (hidden 4096, out 256).
    `output_bn` appends a BatchNorm without scale or shift (SimSiam's projector output): each
    output dimension is standardised over the batch, so no direction common to all images is
    left in the output.
    """
    hidden_dim: int = 4096
    out_dim: int = 256
    output_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="dense_0")(x)
        x = nn.relu(_bn(train, self.dtype, "bn_0")(x))
        x = nn.Dense(self.out_dim, dtype=self.dtype, name="dense_1")(x)
        if self.output_bn:
            x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          use_scale=False, use_bias=False, dtype=self.dtype, name="bn_out")(x)
        return x.astype(jnp.float32)


class LinearProjection(nn.Module):
    """One Dense(out_dim) with Flax's default init: MoCo v1's projection (the ResNet's fc with
    128 outputs).

    Not LinearClassifier: that one's layer is named ``dense`` and initialised N(0, 0.01) as a
    probe; this one's is ``dense_0`` (trained MoCo v1 checkpoints hold ``head/dense_0``) with
    the default init MoCo v1 runs start from.
    """
    out_dim: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train  # no BN or dropout; kept for a uniform head signature
        return nn.Dense(self.out_dim, dtype=self.dtype, name="dense_0")(x).astype(jnp.float32)


class LinearClassifier(nn.Module):
    """Linear probe: [N, D] -> [N, num_classes] logits.

    Initialised as MoCo's main_lincls (weights N(0, 0.01), zero bias). ``normalize`` adds a
    parameter-free BatchNorm in front (MAE-style feature standardisation).
    """
    num_classes: int
    normalize: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.normalize:
            x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          use_scale=False, use_bias=False, dtype=self.dtype, name="bn")(x)
        x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                     dtype=self.dtype, name="dense")(x)
        return x.astype(jnp.float32)
