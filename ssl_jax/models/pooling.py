"""Pooling with PyTorch semantics: the adaptive average pool of the AlexNet and VGG families,
and the max-pool of every family.

All functions take NHWC arrays.
"""
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] averaging matrix with torch's AdaptiveAvgPool bins.

    Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)); bins overlap or repeat
    when in_size is not a multiple of out_size (e.g. 2 -> 7 repeats inputs).
    """
    mat = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
    """torch.nn.AdaptiveAvgPool2d for NHWC input: [N, H, W, C] -> [N, oh, ow, C].

    Identity when the spatial size already matches (the 224 px case for AlexNet/VGG), which
    keeps the standard-resolution graph free of the extra matmuls.
    """
    out_h, out_w = output_size
    if x.shape[1:3] == (out_h, out_w):
        return x
    ph = jnp.asarray(_adaptive_matrix(x.shape[1], out_h), x.dtype)
    pw = jnp.asarray(_adaptive_matrix(x.shape[2], out_w), x.dtype)
    return jnp.einsum("nhwc,oh,pw->nopc", x, ph, pw)


def max_pool(x: jnp.ndarray, window: tuple[int, int], strides: tuple[int, int],
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jnp.ndarray:
    """nn.max_pool over NHWC input; on CPU, an elementwise max of the window's strided slices.

    Why: XLA:CPU turns the gradient of a max-pool (select-and-scatter) into a variadic
    reduce-window that carries four int32 index arrays, then a scatter: ~38 ms of ~216 ms of
    traced op time in the SimCLR step of ResNet-18 width 0.25 at 32 px (docs/BENCHMARKS.md,
    "The main job's network"). A max of shifted strided slices is the same forward value, and
    XLA fuses it and its gradient into a few elementwise loops. The gradients differ only where
    two positions of one window tie: lax.max splits the gradient evenly between them, the
    reduce-window gives it to one. Ties are almost always zeros after a ReLU, whose gradient is
    zero either way, or equal outputs of identical input patches, whose weight gradients are
    the same however the split falls.
    """
    if jax.default_backend() != "cpu":
        return nn.max_pool(x, window, strides, padding=padding)
    n, h, w, c = x.shape
    pads = (lax.padtype_to_pads((h, w), window, strides, padding)
            if isinstance(padding, str) else [tuple(p) for p in padding])
    oh = (h + pads[0][0] + pads[0][1] - window[0]) // strides[0] + 1
    ow = (w + pads[1][0] + pads[1][1] - window[1]) // strides[1] + 1
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    # Separable: the max over rows, then over columns (max is exact, so the order is free).
    rows = functools.reduce(jnp.maximum, [
        padded[:, i:i + strides[0] * (oh - 1) + 1:strides[0]] for i in range(window[0])])
    return functools.reduce(jnp.maximum, [
        rows[:, :, j:j + strides[1] * (ow - 1) + 1:strides[1]] for j in range(window[1])])
