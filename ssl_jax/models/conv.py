"""`Conv`: flax's nn.Conv, with a workaround for slow weight gradients on XLA:CPU.

Every model in ssl_jax builds its convolutions from this class. Parameters, names and results
are nn.Conv's, bit for bit; only the code XLA:CPU generates changes.

Why: XLA:CPU (jaxlib 0.10.2) hands the weight-gradient convolution to Eigen with the input's
channels as the batch dimension, so it first copies the input activation into the layout
[C, H, W, N]. The input is usually relu(batchnorm(...)) of the previous layer. XLA fuses that
elementwise math into the copy, recomputing it in transposed order. A fused copy with broadcasts
falls back to a scalar loop: ~3-4x slower than a plain transpose of a stored array (0.15-0.19
vs 0.05 s for [256, 32, 32, 64] f32). In the SimCLR ResNet-18 benchmark these copies took
~2.9 s of a ~8 s step (docs/BENCHMARKS.md, "Where the step's time goes").

The fix: route the input through a `lax.cond` that returns it unchanged. XLA does not fuse
across a conditional, so the activation is stored once and the copy reads the stored array.
Two details matter:
- the predicate must be unknown at compile time, or XLA folds the cond away. It is computed
  from one kernel element; both branches return the same values, so it never matters.
- the branches must differ as written, or XLA removes the cond. `t * 1.0` is the same value
  as `t` (x * 1.0 == x for every float, -0.0 and NaN included).
`lax.optimization_barrier` would be the natural tool. But XLA:CPU expands barriers before
fusion, so they do not stop it.

On GPU and TPU, the conditional would cost a device-to-host sync per layer and fused transposes
are fast there, so the workaround applies only when JAX's default backend is the CPU.

A second CPU workaround, for convolutions with few output positions (the last stages of a
ResNet on 32 px images: 2x2 and 1x1 maps): XLA:CPU's Eigen and YNNPACK convolutions are slow
there. A 3x3 convolution of [512, 2, 2, 64] took ~25 ms forward and backward, ~7x the 3.7 ms of
the same product written as a matrix multiply over its input patches ("im2col"), while at 4x4
maps and larger the library convolution is the faster one (docs/BENCHMARKS.md, "The main job's
network"). So when an output map has at most SMALL_MAP_POSITIONS positions, the convolution is
computed as one dot of the [N * positions, kh * kw * C] patch matrix with the kernel reshaped
to [kh * kw * C, F]. It is the same sum of products in another order: results agree to float32
rounding (tests/test_models.py checks values and both gradients against nn.Conv).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _stored(x: jnp.ndarray, witness: jnp.ndarray) -> jnp.ndarray:
    """x, through a conditional that XLA can neither fold nor fuse across."""
    pred = jnp.isfinite(witness.reshape(-1)[0])
    return lax.cond(pred, lambda t: t, lambda t: t * 1.0, x)


# Output maps with at most this many positions (2x2) are convolved as patches @ kernel on CPU.
SMALL_MAP_POSITIONS = 4

# The layout nn.Conv passes for 2-D inputs: NHWC input and output, HWIO kernel.
_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _output_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def _small_map_pads(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Any, padding: Any,
                    lhs_dilation: Any = None, rhs_dilation: Any = None,
                    dimension_numbers: Any = None, feature_group_count: int = 1,
                    **unused: Any) -> list[tuple[int, int]] | None:
    """The explicit spatial pads when this convolution takes the patch-matrix path, else None:
    a plain (undilated, ungrouped) 2-D NHWC/HWIO convolution whose output map is small."""
    if (lhs.ndim != 4 or dimension_numbers != _NHWC_HWIO or feature_group_count != 1
            or any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))):
        return None
    kernel = rhs.shape[:2]
    pads = (lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding)
            if isinstance(padding, str) else [tuple(p) for p in padding])
    out = [_output_size(lhs.shape[1 + i], kernel[i], window_strides[i], pads[i]) for i in (0, 1)]
    return pads if out[0] * out[1] <= SMALL_MAP_POSITIONS else None


def _patch_matrix_conv(lhs: jnp.ndarray, rhs: jnp.ndarray, strides: Any,
                       pads: list[tuple[int, int]], precision: Any = None) -> jnp.ndarray:
    """The convolution as [N*oh*ow, kh*kw*C] patches @ [kh*kw*C, F] (HWIO kernel order)."""
    n, h, w, c = lhs.shape
    kh, kw, _, features = rhs.shape
    oh = _output_size(h, kh, strides[0], pads[0])
    ow = _output_size(w, kw, strides[1], pads[1])
    padded = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
    taps = [padded[:, i:i + strides[0] * (oh - 1) + 1:strides[0],
                   j:j + strides[1] * (ow - 1) + 1:strides[1], :]
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=-1).reshape(n * oh * ow, kh * kw * c)
    out = jnp.dot(patches, rhs.reshape(kh * kw * c, features), precision=precision)
    return out.reshape(n, oh, ow, features)


def conv_general_dilated(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Any, padding: Any,
                         **kwargs: Any) -> jnp.ndarray:
    """lax.conv_general_dilated; on CPU, small output maps are computed as one matrix multiply
    and otherwise the input is stored first (see the module docstring)."""
    if jax.default_backend() == "cpu":
        pads = _small_map_pads(lhs, rhs, window_strides, padding, **kwargs)
        if pads is not None:
            return _patch_matrix_conv(lhs, rhs, window_strides, pads, kwargs.get("precision"))
        lhs = _stored(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


class Conv(nn.Conv):
    """nn.Conv, with the CPU weight-gradient workaround of this module."""
    conv_general_dilated: Any = conv_general_dilated
