"""HSV -> RGB for both array libraries: numpy (the built-in dataset's renderer, which imports
neither JAX nor TensorFlow) and jax.numpy (the on-device colour jitter). Pass the module as
`xp`; this file imports numpy only."""
from __future__ import annotations

from typing import Any

import numpy as np


def wrap(x: Any, period: float, xp: Any = np) -> Any:
    """x mod period via floor: jnp.mod lowers to fmod, ~30x slower on XLA:CPU."""
    return x - period * xp.floor(x / period)


def hsv_to_rgb(hsv: Any, xp: Any = np) -> Any:
    """[..., 3] HSV in [0, 1] (hue taken mod 1) -> [..., 3] RGB in [0, 1], in hsv's dtype."""
    hue, sat, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hue6 = wrap(hue, 1.0, xp) * 6.0

    # Closed form: channel n (R=5, G=3, B=1) = v - v s clip(min(k, 4 - k), 0, 1),
    # k = (n + 6h) mod 6; avoids a 6-way sector switch.
    def channel(n: float) -> Any:
        k = wrap(n + hue6, 6.0, xp)
        return value - value * sat * xp.clip(xp.minimum(k, 4.0 - k), 0.0, 1.0)
    return xp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)
