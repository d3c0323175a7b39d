"""Pooling with PyTorch semantics, shared by the AlexNet and VGG families.

All functions take NHWC arrays.
"""
import math

import jax.numpy as jnp
import numpy as np


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
