"""Direct 3x3 convolution kernels (stride 1 or 2) for XLA:CPU (`direct_conv.cc`), built on first
use.

XLA:CPU computes convolutions with Eigen's tensor contractions, which use the vector units
poorly when a layer has 16-64 channels (the width-0.25 ResNets the CPU runs): on the 2-core
machine the four `[256, 32, 32, 16] -> 16` convolutions of a CIFAR-stem ResNet's layer1 took
124 ms per train step in Eigen and 80 ms in these kernels (`benchmarks/conv_geometry.py`;
docs/BENCHMARKS.md, "Direct convolution kernels"). `ssl_jax.models.conv` gives them its
"direct" form.

The C++ source is compiled once per machine with the system's C++ compiler (`$CXX`, else `g++`)
for the host CPU (`-march=native`) into `$SSL_JAX_CACHE` (default `~/.cache/ssl_jax`), named by
a hash of the source, the flags, the jaxlib version and the CPU's features, and registered as
XLA FFI targets. The kernels are used only on x86-64 CPUs with AVX-512 (where they were
measured) and can be turned off with `SSL_JAX_DIRECT_CONV=0`. When they are unavailable (no
compiler, a failed build, another CPU) `available()` is False, one warning line says why, and
every convolution keeps its XLA form.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = Path(__file__).with_name("direct_conv.cc")
COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w")
FORWARD_TARGET = "ssl_jax_direct_conv_forward"
KERNEL_GRAD_TARGET = "ssl_jax_direct_conv_kernel_grad"
# Output channel counts the kernels take (one, two or four 16-float vectors). At 128 Eigen's
# forward pass was the faster one.
OUTPUT_CHANNELS = (16, 32, 64)

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("SSL_JAX_CACHE", Path.home() / ".cache" / "ssl_jax"))


def _cpu_flags() -> str:
    """The first "flags" line of /proc/cpuinfo ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line for line in lines if line.startswith("flags")), "")


def _cpu_has_avx512() -> bool:
    return " avx512f " in _cpu_flags() + " "


def _build(compiler: str) -> Path:
    """The shared library for this source, flags, compiler, jaxlib and CPU: built unless
    cached."""
    include = jax.ffi.include_dir()
    # -march=native code may not run on another CPU: its flags are part of the name, so a cache
    # shared between machines (a network home directory) holds one build per kind of CPU.
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(COMPILE_FLAGS).encode(),
                                     compiler.encode(), jaxlib.__version__.encode(),
                                     _cpu_flags().encode()]))
    target = cache_dir() / f"direct_conv-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed, so that processes building at once never load
    # a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *COMPILE_FLAGS, f"-I{include}", str(SOURCE), "-o", tmp],
                                capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            raise RuntimeError(f"{compiler} failed on {SOURCE.name}: "
                               f"{(errors or result.stderr.splitlines() or ['?'])[0].strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=None)
def _register(library_path: Path) -> None:
    """Loads the library and registers its handlers with XLA, once per process."""
    library = ctypes.cdll.LoadLibrary(str(library_path))
    jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(library.DirectConvForward),
                                platform="cpu")
    jax.ffi.register_ffi_target(KERNEL_GRAD_TARGET,
                                jax.ffi.pycapsule(library.DirectConvKernelGrad), platform="cpu")


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """True when the kernels are built and registered with XLA for this process (module
    docstring); the first call builds them (a few seconds, once per machine)."""
    if os.environ.get("SSL_JAX_DIRECT_CONV", "1") == "0":
        return False
    if platform.machine() not in ("x86_64", "AMD64") or not _cpu_has_avx512():
        return False
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        log.warning("direct convolutions off: no C++ compiler (%s) found; XLA's are used",
                    os.environ.get("CXX", "g++"))
        return False
    try:
        _register(_build(compiler))
    except (OSError, RuntimeError, AttributeError) as e:
        log.warning("direct convolutions off: %s; XLA's are used", e)
        return False
    return True


def supports(lhs, rhs, window_strides, pads) -> bool:
    """Whether the kernels compute this 2-D NHWC/HWIO convolution: float32, 3x3 kernel, stride
    1 or 2 (the same on both axes), 0-2 pixels of padding per side, OUTPUT_CHANNELS outputs."""
    return (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
            and tuple(rhs.shape[:2]) == (3, 3) and tuple(window_strides) in ((1, 1), (2, 2))
            and rhs.shape[3] in OUTPUT_CHANNELS
            and all(0 <= p <= 2 for side in pads for p in side))


def _output_hw(in_hw, pads, stride):
    return tuple((in_hw[d] + pads[d][0] + pads[d][1] - 3) // stride + 1 for d in (0, 1))


def forward(x: jax.Array, k: jax.Array, pads, stride: int = 1) -> jax.Array:
    """The convolution of x [N, H, W, C] with k [3, 3, C, F], `pads` ((top, bottom), (left,
    right)), the same `stride` on both axes."""
    oh, ow = _output_hw(x.shape[1:3], pads, stride)
    out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, k.shape[3]), jnp.float32)
    # "sequential": under vmap (MoCo's BatchNorm splits) each slice is its own call.
    return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(
        x, k, pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]),
        stride=np.int64(stride))


def input_grad(grad: jax.Array, k: jax.Array, in_hw, pads) -> jax.Array:
    """The input gradient of a stride-1 `forward`: the stride-1 convolution of the output
    gradient with the kernel flipped in space and transposed in channels, padded by 2 - (the
    forward's pad)."""
    flipped = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
    back_pads = tuple((2 - pads[d][0], in_hw[d] - grad.shape[1 + d] + pads[d][0]) for d in (0, 1))
    return forward(grad, flipped, back_pads)


def kernel_grad(x: jax.Array, grad: jax.Array, pads, stride: int = 1) -> jax.Array:
    """The kernel gradient of `forward`: [3, 3, C, F], summed over the batch."""
    out = jax.ShapeDtypeStruct((3, 3, x.shape[3], grad.shape[3]), jnp.float32)
    return jax.ffi.ffi_call(KERNEL_GRAD_TARGET, out, vmap_method="sequential")(
        x, grad, pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]),
        stride=np.int64(stride))
