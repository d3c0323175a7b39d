"""Capture named layer activations of a Linen model over a dataset, ready for similarity measures.

Contract with ssl_jax models: each named layer calls `self.sow("intermediates", name, x)`, so
`module.apply(variables, x, train=False, mutable=["intermediates"])` returns
`(out, {"intermediates": {...}})`, nested by module path with every sown value in a tuple (one
entry per call). A layer is addressed by its "/"-joined path, e.g. "layer1/0/out"; a module
called k > 1 times (a reused ReLU) yields "path[0]" ... "path[k-1]" rather than one silently
kept call.

Conv activations `[b, h, w, c]` become `[n_examples, n_features]` by `mode`:
- "flatten" (default): `[b, h*w*c]`;
- "gap": global average pool, `[b, c]`;
- "positions": bilinear resize to `positions_size` x `positions_size`, each spatial position an
  example, channels the features: `[b*s*s, c]` (Epstein et al.'s 32x32 CCA protocol).
Dense activations `[b, d]` are kept as they are in "flatten"/"gap" and refused in "positions".
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

MODES = ("flatten", "gap", "positions")


def flatten_intermediates(tree: Mapping) -> dict[str, jax.Array]:
    """{"a": {"b": (x,)}} -> {"a/b": x}; k-tuples -> "a/b[0]" ... "a/b[k-1]"."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, (tuple, list)):
            if len(node) == 1:
                out[prefix] = node[0]
            else:
                for i, value in enumerate(node):
                    out[f"{prefix}[{i}]"] = value
        else:
            out[prefix] = node

    walk(tree, "")
    return out


def to_examples(a: jax.Array, mode: str = "flatten", positions_size: int = 32) -> jax.Array:
    """One layer's activation `[b, ...]` -> `[n_examples, n_features]` by `mode` (module doc)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if a.ndim == 2:
        if mode == "positions":
            raise ValueError(f"mode='positions' needs [b, h, w, c] conv activations, got shape {a.shape}")
        return a
    if mode == "flatten":
        return a.reshape(a.shape[0], -1)
    if a.ndim != 4:
        raise ValueError(f"mode={mode!r} needs [b, h, w, c] activations, got shape {a.shape}")
    if mode == "gap":
        return jnp.mean(a, axis=(1, 2))
    b, _, _, c = a.shape
    # antialias so downsampling averages (as a per-channel image resize would), not aliases
    resized = jax.image.resize(a, (b, positions_size, positions_size, c), "bilinear", antialias=True)
    return resized.reshape(b * positions_size * positions_size, c)


def capture(model: Union[nn.Module, Callable], variables: Mapping, batches: Iterable,
            layers: Optional[Sequence[str]] = None, mode: str = "flatten", positions_size: int = 32,
            batch_key: str = "image", apply_kwargs: Optional[Mapping[str, Any]] = None,
            progress: bool = True) -> dict[str, np.ndarray]:
    """Runs `model` over `batches` and returns {layer name: np.ndarray [n_examples, n_features]}
    in `layers` order (None: the models' sow order).

    model: a Linen module, or an apply function with `module.apply`'s signature.
    batches: iterable of arrays `[b, ...]` or dicts holding one under `batch_key`; a short final
    batch is zero-padded to the first batch's size (then trimmed) so the model is compiled once.
    layers: names to keep (None: all sown values); an unknown name raises ValueError listing
    the available ones. apply_kwargs default to {"train": False}.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "positions" and not (isinstance(positions_size, int) and positions_size > 0):
        raise ValueError(f"positions_size must be a positive int, got {positions_size!r}")
    apply = model.apply if isinstance(model, nn.Module) else model
    kwargs = dict({"train": False} if apply_kwargs is None else apply_kwargs)

    names: list[str] = []  # filled at trace time; jit would return a dict in sorted key order

    @jax.jit
    def features(variables, x):  # variables as an argument: closed-over weights become constants
        _, state = apply(variables, x, mutable=["intermediates"], **kwargs)
        acts = flatten_intermediates(state.get("intermediates", {}))
        if layers is not None:
            missing = [name for name in layers if name not in acts]
            if missing:  # raised at trace time, before any batch is processed
                raise ValueError(f"unknown layers {missing}; available: {sorted(acts)}")
            acts = {name: acts[name] for name in layers}
        names[:] = list(acts)
        return tuple(to_examples(a, mode, positions_size) for a in acts.values())

    chunks: dict[str, list[np.ndarray]] = {}
    batch_size = None
    for batch in tqdm(batches, desc="capture activations", disable=not progress):
        x = batch[batch_key] if isinstance(batch, Mapping) else batch
        x = np.asarray(x)
        b = x.shape[0]
        if batch_size is None:
            batch_size = b
        elif b > batch_size:
            raise ValueError(f"batch of {b} examples is larger than the first batch ({batch_size})")
        if b < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - b,) + x.shape[1:], x.dtype)])
        per_example = 1 if mode != "positions" else positions_size * positions_size
        outputs = features(variables, x)  # the first call traces and fills `names`
        for name, a in zip(names, outputs):
            chunks.setdefault(name, []).append(np.asarray(a)[: b * per_example])
    if batch_size is None:
        raise ValueError("batches is empty")
    if not chunks:
        raise ValueError("the model sowed no 'intermediates'; nothing to capture")
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
