"""Layer-by-layer comparison of two trained networks (Grigg et al., paper 001).

Over one pass of a dataset, accumulated minibatch by minibatch (memory independent of N):
- the all-layer-pairs minibatch CKA matrix between network A and network B;
- each layer's CKA with the one-hot label matrix (how linearly "class-like" a layer is);
- each layer's CKA between clean and augmented inputs (augmentation invariance).
Activations are taken from the `intermediates` the models sow (see ssl_jax.models.layer_names);
stage aliases that sow the same array as a block (e.g. `layer1` = last `layer1.N`) are kept once.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ssl_jax.similarity.activations import flatten_intermediates, to_examples
from ssl_jax.similarity.minibatch import (minibatch_cka_init, minibatch_cka_result,
                                          minibatch_cka_update)


def layer_activations_fn(apply_fn: Callable, mode: str = "gap") -> Callable:
    """apply_fn(variables, images, train=False, mutable=[...]) -> jitted
    (variables, images) -> (names, [n, p] activations per layer), aliases removed."""
    names: list[str] = []

    @jax.jit
    def acts(variables, images):
        _, state = apply_fn(variables, images, train=False, mutable=["intermediates"])
        flat = flatten_intermediates(state.get("intermediates", {}))
        kept, seen = {}, []
        for name, a in flat.items():
            if any(a is s for s in seen):  # an alias of a layer already kept
                continue
            seen.append(a)
            kept[name] = to_examples(a, mode)
        names[:] = list(kept)
        return tuple(kept.values())

    def run(variables, images):
        out = acts(variables, images)
        return list(names), list(out)

    return run


def compare_networks(acts_a: Callable, vars_a: Mapping, acts_b: Callable, vars_b: Mapping,
                     batches: Iterable[dict], num_classes: int,
                     augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                     mesh=None, progress: bool = True) -> dict:
    """batches: dicts with "image" (float [b, H, W, 3] in [0, 1]) and "label" [b]; every batch
    the same size b >= 4 (unbiased HSIC). augment(key, images) -> augmented images, or None.
    Returns {"layers_a", "layers_b", "cka" [La, Lb], "label_cka_a" [La], "label_cka_b" [Lb],
    "augment_cka_a" [La] (if augment)} as numpy/lists."""
    state_ab = state_la = state_lb = state_aug = None
    names_a = names_b = None
    key = jax.random.key(0)
    for i, batch in enumerate(tqdm(batches, desc="layer similarity", disable=not progress)):
        images = jnp.asarray(batch["image"])
        onehot = [jax.nn.one_hot(jnp.asarray(batch["label"]), num_classes)]
        names_a, xa = acts_a(vars_a, images)
        names_b, xb = acts_b(vars_b, images)
        if state_ab is None:
            state_ab = minibatch_cka_init(len(xa), len(xb))
            state_la = minibatch_cka_init(len(xa), 1)
            state_lb = minibatch_cka_init(len(xb), 1)
            state_aug = minibatch_cka_init(len(xa), len(xa)) if augment else None
        state_ab = minibatch_cka_update(state_ab, xa, xb, mesh=mesh)
        state_la = minibatch_cka_update(state_la, xa, onehot, mesh=mesh)
        state_lb = minibatch_cka_update(state_lb, xb, onehot, mesh=mesh)
        if augment is not None:
            _, xaug = acts_a(vars_a, augment(jax.random.fold_in(key, i), images))
            state_aug = minibatch_cka_update(state_aug, xa, xaug, mesh=mesh)
    if state_ab is None:
        raise ValueError("batches is empty")
    out = {"layers_a": names_a, "layers_b": names_b, "cka": minibatch_cka_result(state_ab),
           "label_cka_a": minibatch_cka_result(state_la)[:, 0],
           "label_cka_b": minibatch_cka_result(state_lb)[:, 0]}
    if augment is not None:
        out["augment_cka_a"] = np.diag(minibatch_cka_result(state_aug))
    return out


def plot_cka_matrix(cka: np.ndarray, layers_a: list[str], layers_b: list[str], path: str,
                    title_a: str = "A", title_b: str = "B") -> None:
    """Heatmap of the [La, Lb] CKA matrix, layers in forward order (001's figure style)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 0.28 * len(layers_b), 1.2 + 0.28 * len(layers_a)))
    im = ax.imshow(cka, origin="lower", cmap="magma", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(layers_b)), [n.split("/")[-1] for n in layers_b], rotation=90,
                  fontsize=7)
    ax.set_yticks(range(len(layers_a)), [n.split("/")[-1] for n in layers_a], fontsize=7)
    ax.set(xlabel=title_b, ylabel=title_a, title="linear CKA (minibatch, unbiased)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
