"""Input validation, compute dtype and full-precision products shared by the similarity measures.

Every public measure takes activations `[n_examples, n_features]`. Shape problems are caught on
the host before any compilation; value problems (NaN/inf, zero variance, a non-positive debiased
self-HSIC) are detected on device, returned as a small status vector next to the result and
turned into a ValueError by `raise_for_status`, so a bad input never comes back as a silent NaN.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# GPUs/TPUs default to TF32/bf16 passes for float32 matmuls, which moves CKA in the 3rd digit.
HIGHEST = jax.lax.Precision.HIGHEST


def mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Matrix product at full float32 (or float64) precision."""
    return jnp.matmul(a, b, precision=HIGHEST)


def compute_dtype() -> jnp.dtype:
    """float64 when `jax_enable_x64` is on, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def is_traced(*arrays) -> bool:
    """True when called under a JAX transformation, where value checks are impossible."""
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def as_activations(a, name: str, min_examples: int = 2) -> jax.Array:
    """Checks `a` is a non-empty `[n_examples, n_features]` array and casts it to the compute dtype."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    if len(a.shape) != 2:
        raise ValueError(
            f"{name} must be [n_examples, n_features], got shape {tuple(a.shape)}; "
            "flatten or pool conv activations first (see similarity.activations.capture)")
    n, p = a.shape
    if p == 0:
        raise ValueError(f"{name} has no features (empty layer), shape {tuple(a.shape)}")
    if n < min_examples:
        raise ValueError(f"{name} has {n} examples; this estimator needs at least {min_examples}")
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)
            or a.dtype == bool):
        raise ValueError(f"{name} has dtype {a.dtype}; expected a real numeric dtype")
    return jnp.asarray(a, dtype=compute_dtype())


def as_activation_pair(x, y, min_examples: int = 2) -> tuple[jax.Array, jax.Array]:
    """Validates two activation matrices over the same examples (see `as_activations`)."""
    x = as_activations(x, "x", min_examples)
    y = as_activations(y, "y", min_examples)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same examples: got n_examples {x.shape[0]} vs {y.shape[0]}")
    return x, y


def require_overdetermined(x: jax.Array, y: jax.Array, allow_underdetermined: bool,
                           measure: str) -> None:
    """CCA-type measures are meaningless when features >= examples (Kornblith et al. Thm. 1)."""
    n = x.shape[0]
    p = max(x.shape[1], y.shape[1])
    if p >= n and not allow_underdetermined:
        raise ValueError(
            f"{measure}: n_features ({x.shape[1]}, {y.shape[1]}) >= n_examples ({n}); every "
            "linearly invariant similarity is 1 in this regime. Use more examples (5-10x the "
            "features), reduce features, or pass allow_underdetermined=True")


# Status codes: each measure returns `status = jnp.stack([code_0, code_1, ...])` of booleans that
# must all be True; the messages below say which input property failed.
def finite(a: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(a))


def raise_for_status(status: jax.Array, messages: Sequence[str]) -> None:
    """Raises ValueError with the message of the first False entry of `status` (host sync)."""
    ok = np.asarray(jax.device_get(status))
    for flag, message in zip(ok, messages):
        if not bool(flag):
            raise ValueError(message)


def centre(a: jax.Array) -> jax.Array:
    """Subtracts the per-feature mean over examples (axis 0)."""
    return a - jnp.mean(a, axis=0, keepdims=True)
