"""`Conv`: flax's nn.Conv, computed on XLA:CPU in whichever of a few equivalent forms is fastest
for its shape.

Every model in ssl_jax builds its convolutions from this class. Parameters, names and results
are nn.Conv's (bit for bit in the "library" form up to KERNEL_GRAD_CHUNK_BYTES of input, to
float32 rounding otherwise); only the
code XLA:CPU generates changes. On GPU and TPU every convolution is plain
`lax.conv_general_dilated`. `cpu_form()` names the form a convolution takes on CPU; the
measurements behind each choice are in docs/BENCHMARKS.md and docs/MODELS.md.

The forms, in the order `cpu_form()` tries them (only for plain 2-D NHWC/HWIO convolutions:
undilated, ungrouped; anything else is "general", the unchanged library call):
- "pointwise": an unpadded 1x1 convolution (a ResNet shortcut) is one matrix multiply of the
  positions it samples, [N * OH * OW, C] @ [C, F].
- "dense_map": when the input map is no larger than the kernel window (2x2 or 1x1 maps under a
  3x3 kernel: the last stages of a ResNet on 32 px images), the whole layer is one linear map
  from the flattened input to the flattened output. That map is built from the kernel by a
  constant 0/1 tap selector, and the convolution becomes [N, H*W*C] @ [H*W*C, OH*OW*F]: fewer
  multiplies than the convolution itself, in one large product instead of many tiny ones.
- "patches": when the output map has at most SMALL_MAP_POSITIONS positions, one multiply of the
  [N * OH * OW, kh * kw * C] patch matrix ("im2col") with the kernel reshaped to
  [kh * kw * C, F]. Eigen's convolutions are several times slower than that on such maps; from
  4x4 outputs up they are the faster ones.
- "space_to_depth": a strided convolution of an image (at most 4 channels: the strided stem).
  With 3 input channels Eigen's kernels use the vector units poorly, so the forward pass
  regroups every stride x stride block of pixels into channels and runs a stride-1 convolution
  with 4x the channels and a kernel of ceil(k / stride) taps per side. The backward pass is the
  plain convolution's (a custom VJP), which is the faster of the two there.
- "phase_split": a strided convolution of a thin activation (at most PHASE_SPLIT_MAX_CHANNELS
  channels: the first stride-2 convolution of a width-0.25 ResNet). Its forward pass and weight
  gradient are the library's, but the input gradient, which XLA:CPU computes as a convolution
  over the output gradient dilated with zeros (43.9 ms for [256, 32, 32, 16] -> 32, 8x the
  forward), is one stride-1 convolution that writes each of the stride x stride phases of the
  input as its own channels (9.6 ms), regrouped into pixels after. On wider inputs the library
  is faster (16x16x32: 10.3 vs 13.9 ms).
- "direct": a 3x3 float32 convolution, stride 1 or 2, with 16, 32 or 64 outputs, on a single
  CPU device (DIRECT_MAX_DEVICES) where the C++ kernels of `ssl_jax.models.direct_conv` are
  available (built for x86-64 with AVX-512): forward pass and weight gradient; the input
  gradient too at stride 1 when the input has 16, 32 or 64 channels (else phase_split's,
  strided and thin, or the library's). Eigen is slowest exactly there, thin layers on many
  positions.
- "library": everything else, `lax.conv_general_dilated` with its input stored first (below)
  and, for inputs over KERNEL_GRAD_CHUNK_BYTES, its weight gradient summed over batch chunks
  of at most that size (below).

Why the library form stores its input: XLA:CPU (jaxlib 0.10.2) hands the weight-gradient
convolution to Eigen with the input's channels as the batch dimension, so it first copies the
input activation into the layout [C, H, W, N]. The input is usually relu(batchnorm(...)) of the
previous layer, and XLA fuses that elementwise math into the copy, recomputing it in transposed
order. A fused copy with broadcasts falls back to a scalar loop: ~3-4x slower than a plain
transpose of a stored array (0.15-0.19 vs 0.05 s for [256, 32, 32, 64] f32). The fix routes the
input through a `lax.cond` that returns it unchanged: XLA does not fuse across a conditional, so
the activation is stored once. The predicate is computed from one kernel element, so XLA cannot
fold it away; both branches return the same values (`t * 1.0` is `t` for every float, -0.0 and
NaN included) but differ as written, so XLA cannot merge them. `lax.optimization_barrier` would
be the natural tool, but XLA:CPU expands barriers before fusion, so they do not stop it.

Why the library form chunks its weight gradient: Eigen's weight-gradient convolution contracts
over every image and position at once; its time grows faster than the batch once the operands
outgrow the caches, and it barely uses a second thread. Summed over 2 MiB chunks of the batch
(8 chunks of 32 images at [256, 32, 32, 16]) it took 28.8-31.5 instead of 36.2-38.0 ms there
(docs/BENCHMARKS.md, "Outside the convolution kernels"). The forward pass and input gradient
stay whole: chunked, they were slower.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssl_jax.models import direct_conv


def _stored(x: jnp.ndarray, witness: jnp.ndarray) -> jnp.ndarray:
    """x, through a conditional that XLA can neither fold nor fuse across."""
    pred = jnp.isfinite(witness.reshape(-1)[0])
    return lax.cond(pred, lambda t: t, lambda t: t * 1.0, x)


# Output maps with at most this many positions (2x2) are convolved as patches @ kernel on CPU.
SMALL_MAP_POSITIONS = 4
# Images with at most this many channels take the space-to-depth forward when strided.
SPACE_TO_DEPTH_MAX_CHANNELS = 4
# Strided convolutions of inputs with at most this many channels take the phase-split backward.
PHASE_SPLIT_MAX_CHANNELS = 16

# The library form's weight gradient is summed over batch chunks of at most this much input.
KERNEL_GRAD_CHUNK_BYTES = 2 * 1024 * 1024

# The direct kernels are custom calls without a partitioning rule; in a program split over
# several devices XLA:CPU's partitioner gathered their operands, and in one step (InsDis with a
# row-sharded memory bank, activations sharded over channels around them) the weight gradients
# came out wrong. So they are used only when JAX has at most this many devices: one CPU, as
# the main job and the benchmarks run.
DIRECT_MAX_DEVICES = 1

# The layout nn.Conv passes for 2-D inputs: NHWC input and output, HWIO kernel.
NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))

Pads = list[tuple[int, int]]


def _output_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def _plain_pads(lhs: Any, rhs: Any, window_strides: Any, padding: Any,
                lhs_dilation: Any = None, rhs_dilation: Any = None,
                dimension_numbers: Any = None, feature_group_count: int = 1,
                batch_group_count: int = 1, preferred_element_type: Any = None,
                **unused: Any) -> Pads | None:
    """The explicit spatial pads of a plain (undilated, ungrouped) 2-D NHWC/HWIO convolution,
    or None for any other convolution."""
    if (lhs.ndim != 4 or dimension_numbers != NHWC_HWIO or feature_group_count != 1
            or batch_group_count != 1 or preferred_element_type is not None
            or any(d != 1 for d in (lhs_dilation or ()))
            or any(d != 1 for d in (rhs_dilation or ()))):
        return None
    if isinstance(padding, str):
        return lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return [tuple(p) for p in padding]


def cpu_form(lhs: Any, rhs: Any, window_strides: Any, padding: Any, **kwargs: Any) -> str:
    """The form this convolution takes on CPU (see the module docstring); lhs and rhs need only
    .shape, .ndim and .dtype, the other arguments are lax.conv_general_dilated's."""
    pads = _plain_pads(lhs, rhs, window_strides, padding, **kwargs)
    if pads is None:
        return "general"
    (kh, kw, channels, _), (h, w) = rhs.shape, lhs.shape[1:3]
    out = [_output_size((h, w)[i], (kh, kw)[i], window_strides[i], pads[i]) for i in (0, 1)]
    if (kh, kw) == (1, 1) and all(p == (0, 0) for p in pads):
        return "pointwise"
    if h * w <= kh * kw:
        return "dense_map"
    if out[0] * out[1] <= SMALL_MAP_POSITIONS:
        return "patches"
    if (channels <= SPACE_TO_DEPTH_MAX_CHANNELS and window_strides[0] == window_strides[1] > 1
            and min(kh, kw) > window_strides[0]):
        return "space_to_depth"
    if (direct_conv.supports(lhs, rhs, window_strides, pads)
            and jax.device_count() <= DIRECT_MAX_DEVICES and direct_conv.available()):
        return "direct"
    if channels <= PHASE_SPLIT_MAX_CHANNELS and max(window_strides) > 1:
        return "phase_split"
    return "library"


def _stored_conv(lhs, rhs, strides, pads, precision):
    return lax.conv_general_dilated(_stored(lhs, rhs), rhs, strides, pads,
                                    dimension_numbers=NHWC_HWIO, precision=precision)


def kernel_grad_chunks(lhs: Any) -> int:
    """How many batch chunks the library form's weight gradient is summed over: enough that
    each chunk's input is at most KERNEL_GRAD_CHUNK_BYTES."""
    return max(1, -(-lhs.size * np.dtype(lhs.dtype).itemsize // KERNEL_GRAD_CHUNK_BYTES))


def _with_backward(forward, backward):
    """forward(x, k) as a function whose VJP is backward((x, k), grad) -> (dx, dk)."""
    conv = jax.custom_vjp(forward)
    conv.defvjp(lambda x, k: (forward(x, k), (x, k)), backward)
    return conv


def _library_conv(lhs, rhs, strides, pads, precision):
    """The library convolution; its weight gradient summed over batch chunks of at most
    KERNEL_GRAD_CHUNK_BYTES of input (module docstring)."""
    stored = functools.partial(_stored_conv, strides=strides, pads=pads, precision=precision)
    chunks = kernel_grad_chunks(lhs)
    if chunks == 1:
        return stored(lhs, rhs)

    def backward(residuals, grad):
        x, k = residuals
        input_grad = jax.vjp(lambda x: stored(x, k), x)[1](grad)[0]
        parts = [jax.vjp(lambda k: stored(x_part, k), k)[1](grad_part)[0]
                 for x_part, grad_part in zip(jnp.array_split(x, chunks),
                                              jnp.array_split(grad, chunks))]
        return input_grad, functools.reduce(jnp.add, parts)

    return _with_backward(stored, backward)(lhs, rhs)


def _pointwise_conv(lhs, rhs, strides, pads, precision):
    """An unpadded 1x1 convolution as [N * OH * OW, C] @ [C, F] over the sampled positions,
    stored first so that the weight gradient's product reads a plain array."""
    sampled = _stored(lhs[:, ::strides[0], ::strides[1], :], rhs)
    n, oh, ow, c = sampled.shape
    out = jnp.dot(sampled.reshape(n * oh * ow, c), rhs.reshape(c, -1), precision=precision)
    return out.reshape(n, oh, ow, -1)


@functools.lru_cache(maxsize=None)
def _tap_selector(in_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                  pads: tuple[tuple[int, int], ...]) -> np.ndarray:
    """[kh, kw, H * W, OH * OW] 0/1: entry (i, j, p, q) is 1 when kernel tap (i, j) of output
    position q reads input position p (taps that read padding select nothing)."""
    (h, w), (kh, kw) = in_hw, kernel
    oh, ow = (_output_size(in_hw[d], kernel[d], strides[d], pads[d]) for d in (0, 1))
    selector = np.zeros((kh, kw, h * w, oh * ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            for y in range(oh):
                for x in range(ow):
                    row, col = y * strides[0] + i - pads[0][0], x * strides[1] + j - pads[1][0]
                    if 0 <= row < h and 0 <= col < w:
                        selector[i, j, row * w + col, y * ow + x] = 1.0
    return selector


def _dense_map_conv(lhs, rhs, strides, pads, precision):
    """The convolution as its whole linear map: [N, H*W*C] @ [H*W*C, OH*OW*F]. Each entry of the
    map is one kernel element or zero (no tap is counted twice), so building it is exact."""
    n, h, w, c = lhs.shape
    kh, kw, _, features = rhs.shape
    selector = _tap_selector((h, w), (kh, kw), tuple(strides), tuple(map(tuple, pads)))
    oh, ow = (_output_size((h, w)[d], (kh, kw)[d], strides[d], pads[d]) for d in (0, 1))
    linear_map = jnp.einsum("ijpq,ijcf->pcqf", selector.astype(rhs.dtype), rhs,
                            precision=lax.Precision.HIGHEST)
    out = jnp.dot(lhs.reshape(n, h * w * c), linear_map.reshape(h * w * c, oh * ow * features),
                  precision=precision)
    return out.reshape(n, oh, ow, features)


def _patch_matrix_conv(lhs, rhs, strides, pads, precision):
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


def _kernel_in_blocks(rhs, strides):
    """The HWIO kernel zero-extended to a multiple of the stride per side, as
    [blocks_h, stride_h, blocks_w, stride_w, C, F]: tap (j * s + b) is block j, phase b."""
    kh, kw, c, features = rhs.shape
    (sh, sw) = strides
    bh, bw = -(-kh // sh), -(-kw // sw)
    kernel = jnp.pad(rhs, ((0, bh * sh - kh), (0, bw * sw - kw), (0, 0), (0, 0)))
    return kernel.reshape(bh, sh, bw, sw, c, features)


def _space_to_depth_forward(lhs, rhs, stride, pads, precision):
    """Stride-s convolution = stride-1 convolution of the s x s pixel blocks (as channels) with
    the kernel zero-extended to a multiple of s taps and regrouped the same way."""
    n, h, w, c = lhs.shape
    kh, kw, _, features = rhs.shape
    oh, ow = (_output_size((h, w)[d], (kh, kw)[d], stride, pads[d]) for d in (0, 1))
    bh, bw = -(-kh // stride), -(-kw // stride)  # kernel size in blocks
    # Pad so the input covers (out + blocks - 1) whole blocks per side; the extra rows and
    # columns meet only the kernel's zero extension
    # (lax.pad: a negative high pad drops trailing rows that no output reads.)
    padded = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                     ((0, 0, 0), (pads[0][0], (oh + bh - 1) * stride - h - pads[0][0], 0),
                      (pads[1][0], (ow + bw - 1) * stride - w - pads[1][0], 0), (0, 0, 0)))
    blocks = padded.reshape(n, oh + bh - 1, stride, ow + bw - 1, stride, c)
    blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, oh + bh - 1, ow + bw - 1, -1)
    kernel = _kernel_in_blocks(rhs, (stride, stride)).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(bh, bw, stride * stride * c, features)
    return lax.conv_general_dilated(blocks, kernel, (1, 1), "VALID",
                                    dimension_numbers=NHWC_HWIO, precision=precision)


def _space_to_depth_conv(lhs, rhs, strides, pads, precision):
    """The space-to-depth forward with the library convolution's backward pass."""
    library = functools.partial(_library_conv, strides=strides, pads=pads, precision=precision)

    def forward(x, k):
        return _space_to_depth_forward(x, k, strides[0], pads, precision)

    def backward(residuals, grad):
        return jax.vjp(library, *residuals)[1](grad)

    return _with_backward(forward, backward)(lhs, rhs)


def _phase_split_input_grad(grad, rhs, in_hw, strides, pads, precision):
    """The input gradient of a strided convolution: input row a * s + b (phase b) receives
    sum_j grad[a - j] * kernel[j * s + b] (kernel zero-extended to a multiple of s taps), a
    stride-1 convolution of grad with the block-flipped kernel that outputs every phase at once."""
    n, oh, ow, features = grad.shape
    kh, kw, c, _ = rhs.shape
    (sh, sw), (h, w) = strides, in_hw
    bh, bw = -(-kh // sh), -(-kw // sw)  # kernel size in blocks
    rows, cols = -(-(pads[0][0] + h) // sh), -(-(pads[1][0] + w) // sw)  # blocks to write
    kernel = _kernel_in_blocks(rhs, strides)[::-1, :, ::-1]
    kernel = kernel.transpose(0, 2, 5, 1, 3, 4).reshape(bh, bw, features, sh * sw * c)
    grad = lax.pad(grad, jnp.zeros((), grad.dtype),
                   ((0, 0, 0), (bh - 1, rows - oh, 0), (bw - 1, cols - ow, 0), (0, 0, 0)))
    phases = lax.conv_general_dilated(grad, kernel, (1, 1), "VALID",
                                      dimension_numbers=NHWC_HWIO, precision=precision)
    padded = phases.reshape(n, rows, cols, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
    padded = padded.reshape(n, rows * sh, cols * sw, c)
    return padded[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w]


def _phase_split_conv(lhs, rhs, strides, pads, precision):
    """The library convolution with the phase-split input gradient."""
    library = functools.partial(_library_conv, strides=strides, pads=pads, precision=precision)

    def backward(residuals, grad):
        x, k = residuals
        kernel_grad = jax.vjp(lambda k: library(x, k), k)[1](grad)[0]
        return (_phase_split_input_grad(grad, k, x.shape[1:3], strides, pads, precision),
                kernel_grad)

    return _with_backward(library, backward)(lhs, rhs)


def _direct_conv(lhs, rhs, strides, pads, precision):
    """The direct kernels' forward pass and weight gradient. The input gradient: the kernels'
    when stride 1 and the input has a channel count they take; phase_split's or the library's
    otherwise (strided; an image)."""
    stride = strides[0]

    def backward(residuals, grad):
        x, k = residuals
        if stride == 1 and x.shape[3] in direct_conv.OUTPUT_CHANNELS:
            input_grad = direct_conv.input_grad(grad, k, x.shape[1:3], pads)
        elif stride > 1 and x.shape[3] <= PHASE_SPLIT_MAX_CHANNELS:
            input_grad = _phase_split_input_grad(grad, k, x.shape[1:3], strides, pads, precision)
        else:
            input_grad = jax.vjp(lambda x: _stored_conv(x, k, strides, pads, precision),
                                 x)[1](grad)[0]
        return input_grad, direct_conv.kernel_grad(x, grad, pads, stride)

    return _with_backward(lambda x, k: direct_conv.forward(x, k, pads, stride),
                          backward)(lhs, rhs)


_PLAIN_FORMS = {
    "pointwise": _pointwise_conv,
    "dense_map": _dense_map_conv,
    "patches": _patch_matrix_conv,
    "space_to_depth": _space_to_depth_conv,
    "phase_split": _phase_split_conv,
    "direct": _direct_conv,
    "library": _library_conv,
}


def conv_general_dilated(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Any, padding: Any,
                         **kwargs: Any) -> jnp.ndarray:
    """lax.conv_general_dilated; on CPU in the form `cpu_form` picks (module docstring)."""
    if jax.default_backend() != "cpu":
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    form = cpu_form(lhs, rhs, window_strides, padding, **kwargs)
    if form == "general":
        return lax.conv_general_dilated(_stored(lhs, rhs), rhs, window_strides, padding,
                                        **kwargs)
    pads = _plain_pads(lhs, rhs, window_strides, padding, **kwargs)
    return _PLAIN_FORMS[form](lhs, rhs, tuple(window_strides), pads, kwargs.get("precision"))


class Conv(nn.Conv):
    """nn.Conv, in the CPU forms of this module."""
    conv_general_dilated: Any = conv_general_dilated
