"""XLA flags the entry points set before JAX initialises its backend.

Nothing here imports JAX: `configure_cpu()` only edits `os.environ["XLA_FLAGS"]`, which XLA
reads once, when JAX creates its first client. Entry points (run_train.py, run_eval.py, the
experiments, benchmarks and converters, tests/conftest.py) call it before anything imports jax;
importing `ssl_jax` itself changes nothing.
"""
from __future__ import annotations

import importlib.metadata
import os

# XLA:CPU in jaxlib 0.10.2 compiles every convolution (forward and both gradients) to a YNNPACK
# fusion, which ran at ~0.55x the speed of XLA's Eigen convolutions on our 2-core CPU benchmark
# (docs/BENCHMARKS.md); removing `individual_convolution` from the YNN fusion types sends them
# back to Eigen with the same results up to float32 reassociation. Applied only if the user has
# not set the option, and only takes effect before JAX initialises its backend.
# The flag is specific to that jaxlib (XLA aborts on unknown flags), so it is added only when
# the installed jaxlib is one known to accept it; GPU/TPU ignore it.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CPU_CONV_FLAG_JAXLIB_VERSIONS = ("0.10.2",)


def _jaxlib_version() -> str | None:
    """The installed jaxlib's version from its package metadata (without importing it)."""
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def configure_cpu() -> bool:
    """Add CPU_CONV_FLAG to XLA_FLAGS unless the user's XLA_FLAGS already sets the option or the
    installed jaxlib is not one that accepts it. Returns whether XLA_FLAGS was changed. Must be
    called before JAX creates its CPU client (before the first `import jax` to be safe)."""
    current = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in current:
        return False
    if _jaxlib_version() not in CPU_CONV_FLAG_JAXLIB_VERSIONS:
        return False
    os.environ["XLA_FLAGS"] = f"{current} {CPU_CONV_FLAG}".strip()
    return True
