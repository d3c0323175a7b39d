"""Layer-by-layer comparison of two trained networks (Grigg et al., paper 001).

Over one pass of a dataset, accumulated minibatch by minibatch (memory independent of N):
- the all-layer-pairs minibatch CKA matrix between network A and network B;
- each layer's CKA with the one-hot label matrix (how linearly "class-like" a layer is);
- each layer's CKA between clean and augmented inputs (augmentation invariance).
Activations are taken from the `intermediates` the models sow (see ssl_jax.models.layer_names);
stage aliases that sow the same array as a block (e.g. `layer1` = last `layer1.N`) are kept once.
Which layers are compared is a layer set (`LAYER_SETS`, see `select_layers`): the sown block
outputs, or also the activations inside each residual block (001's all / odd / even views).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ssl_jax.models.taps import IN_BLOCK
from ssl_jax.similarity.activations import flatten_intermediates, to_examples
from ssl_jax.similarity.minibatch import (minibatch_cka_init, minibatch_cka_result,
                                          minibatch_cka_update)


LAYER_SETS = ("blocks", "all", "odd", "even")


def select_layers(intermediates: Mapping, in_block: Mapping, layers: str = "blocks") -> dict:
    """The flattened `intermediates` and `in_block` collections -> {name: activation} of one
    layer set, in forward order:
    - "blocks": every sown `intermediates` layer, aliases kept once (stem, block outputs, pool
      and any head layers); 001's post-residual "even" layers, so "even" is the same set;
    - "odd": the activations inside the residual blocks (`layer1_0/relu1`, ...);
    - "all": "blocks" with each block's inner activations placed just before its output.
    For ResNet-18/34 (one inner activation per block) "all" alternates inner activation and
    block output from the stem to the last block, so odd / even are also "all"'s odd / even
    positions there (001's indexing); pool and heads count as even wherever they fall.
    """
    if layers not in LAYER_SETS:
        raise ValueError(f"layers={layers!r}; valid layer sets: {', '.join(LAYER_SETS)}")
    blocks, seen = {}, []
    for name, a in intermediates.items():
        if any(a is s for s in seen):  # an alias of a layer already kept
            continue
        seen.append(a)
        blocks[name] = a
    if layers in ("blocks", "even"):
        return blocks
    # A block sows its inner activations, then its output as "out": the same array as the
    # block output sown outside it, which is how each group finds its place in "blocks".
    groups, inner = [], {}
    for name, a in in_block.items():
        if name.split("/")[-1] == "out":
            groups.append((a, inner))
            inner = {}
        else:
            inner[name] = a
    if not groups:
        raise ValueError(f"layers={layers!r} needs activations inside residual blocks, and "
                         "this model sows none (only the ResNet family does)")
    if layers == "odd":
        return {name: a for _, g in groups for name, a in g.items()}
    out, placed = {}, 0
    for name, a in blocks.items():
        for block_out, g in groups:
            if a is block_out:
                out.update(g)
                placed += 1
        out[name] = a
    if placed != len(groups):
        raise ValueError("a block's output is not among the sown layers; cannot place its "
                         "inner activations")
    return out


def layer_activations_fn(apply_fn: Callable, mode: str = "gap",
                         layers: str = "blocks") -> Callable:
    """apply_fn(variables, images, train=False, mutable=[...]) -> jitted
    (variables, images) -> (names, [n, p] activations per layer) of the layer set `layers`
    (`select_layers`)."""
    if layers not in LAYER_SETS:  # fail before any data is read
        raise ValueError(f"layers={layers!r}; valid layer sets: {', '.join(LAYER_SETS)}")
    names: list[str] = []

    @jax.jit
    def acts(variables, images):
        _, state = apply_fn(variables, images, train=False,
                            mutable=["intermediates", IN_BLOCK])
        kept = select_layers(flatten_intermediates(state.get("intermediates", {})),
                             flatten_intermediates(state.get(IN_BLOCK, {})), layers)
        names[:] = list(kept)
        return tuple(to_examples(a, mode) for a in kept.values())

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


def cka_matrix(acts_a: list, acts_b: list, debiased: bool = False) -> np.ndarray:
    """[La, Lb] full-batch linear CKA between every layer of A and every layer of B, each a
    [n, p] activation matrix over the same n examples (e.g. `layer_activations_fn`'s outputs
    concatenated over batches). A pair the index is undefined for (a constant layer) is NaN."""
    from ssl_jax.similarity.cka import linear_cka

    out = np.full((len(acts_a), len(acts_b)), np.nan)
    for i, x in enumerate(acts_a):
        for j, y in enumerate(acts_b):
            try:
                out[i, j] = float(linear_cka(x, y, debiased=debiased))
            except ValueError:
                pass
    return out


def thirds(curve) -> list[float]:
    """Means of a per-layer curve over the first, middle and last third of its layers (001's
    early / middle / late summary; with L layers, thirds of sizes L//3 + (1 if L % 3 > k))."""
    parts = np.array_split(np.asarray(curve, float), 3)
    return [float(np.nanmean(p)) if len(p) else float("nan") for p in parts]


def best_match(cka: np.ndarray) -> np.ndarray:
    """For each layer of A (row), the index of B's layer with the highest CKA (001's dots)."""
    return np.argmax(cka, axis=1)


def row_max(cka: np.ndarray) -> np.ndarray:
    """For each layer of A, its CKA with the most similar layer of B (001's "max" curve)."""
    return np.max(cka, axis=1)


def same_layer_curve(cka: np.ndarray, layers_a: list[str], layers_b: list[str]) -> np.ndarray:
    """For each layer of A, its CKA with B's layer of the same name, NaN where B has none
    (001's "diag" curve: the diagonal when both networks have the same layer list; by name so
    that a head only one network has does not shift the backbone's layers)."""
    index_b = {name: j for j, name in enumerate(layers_b)}
    return np.array([cka[i, index_b[name]] if name in index_b else np.nan
                     for i, name in enumerate(layers_a)])


def plot_cka_matrix(cka: np.ndarray, layers_a: list[str], layers_b: list[str], path: str,
                    title_a: str = "A", title_b: str = "B",
                    title: str = "linear CKA (minibatch, unbiased)") -> None:
    """001's figure 2 for one pair of networks: the [La, Lb] CKA heatmap, layers in forward
    order, a white dot on each row's most similar layer of B; beside it, per layer of A, the
    CKA with B's same-named layer (diag) and with its most similar layer of B (max)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def short(names):  # last name component; with its parent where that alone repeats (relu1)
        last = [n.split("/")[-1] for n in names]
        return ["/".join(n.split("/")[-2:]) if last.count(end) > 1 else end
                for n, end in zip(names, last)]

    la, lb = len(layers_a), len(layers_b)
    side = 1.2 + 0.28 * max(la, lb)
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(2 * side + 1.5, side),
                                     gridspec_kw={"width_ratios": [lb / max(la, lb) + 0.1, 1]})
    im = ax.imshow(cka, origin="lower", cmap="magma", vmin=0.0, vmax=1.0)
    ax.scatter(best_match(cka), np.arange(la), s=10, c="white", label="best match in B")
    ax.set_xticks(range(lb), short(layers_b), rotation=90, fontsize=6)
    ax.set_yticks(range(la), short(layers_a), fontsize=6)
    ax.set(xlabel=title_b, ylabel=title_a, title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)

    curves.plot(row_max(cka), marker=".", label="max over layers of B")
    same = same_layer_curve(cka, layers_a, layers_b)
    if not np.all(np.isnan(same)):  # dashed on top: visible where it coincides with max
        curves.plot(same, "x--", label="diag: same layer of B")
    curves.set_xticks(range(la), short(layers_a), rotation=90, fontsize=6)
    curves.set(xlabel=f"layer of {title_a}", ylabel="linear CKA", ylim=(0.0, 1.05))
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
