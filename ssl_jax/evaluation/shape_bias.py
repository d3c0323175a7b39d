"""Shape bias on texture-vs-shape cue-conflict stimuli (Geirhos et al. 2019; 002 Sec. 3.4).

Shape bias = #(decision == shape) / (#(decision == shape) + #(decision == texture)), over the
stimuli whose shape and texture classes differ. Decisions in the 16 entry-level categories come
from ImageNet-1k models via ``imagenet_probabilities_to_16`` (mean softmax probability over each
category's ImageNet classes, then argmax), or directly from a model trained on the categories.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The 16 entry-level categories, in the sorted order model-vs-human uses for decisions.
HUMAN_CATEGORIES: tuple[str, ...] = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock",
    "dog", "elephant", "keyboard", "knife", "oven", "truck")

# ImageNet-1k class indices (standard ILSVRC-2012 0..999 order) of each category, as listed in
# model-vs-human's helper/human_categories.py (WordNet hyponyms of the category, with some
# classes excluded by hand there). Names in the comments are the ImageNet class names.
IMAGENET_16_CLASS_INDICES: dict[str, tuple[int, ...]] = {
    "airplane": (404,),  # airliner
    "bear": (294, 295, 296, 297),  # brown, American black, ice (polar), sloth bear
    "bicycle": (444, 671),  # tandem bicycle, mountain bike
    "bird": (8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88,
             89, 90, 91, 92, 93, 94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133,
             135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145),
    "boat": (472, 554, 625, 814, 914),  # canoe, fireboat, lifeboat, speedboat, yawl
    "bottle": (440, 720, 737, 898, 899, 901, 907),  # beer, pill, pop, water bottle; water jug,
                                                    # whiskey jug, wine bottle
    "car": (436, 511, 817),  # beach wagon, convertible, sports car
    "cat": (281, 282, 283, 284, 285, 286),  # tabby, tiger cat, Persian, Siamese, Egyptian, cougar
    "chair": (423, 559, 765, 857),  # barber chair, folding chair, rocking chair, throne
    "clock": (409, 530, 892),  # analog clock, digital clock, wall clock
    "dog": tuple(i for i in range(152, 269)
                 if i not in (192, 204, 227, 242, 251, 258, 260, 264)),
    "elephant": (385, 386),  # Indian elephant, African elephant
    "keyboard": (508, 878),  # computer keyboard, typewriter keyboard
    "knife": (499,),  # cleaver
    "oven": (766,),  # rotisserie
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),  # fire engine, garbage truck, minivan,
    # moving van, pickup, police van, tow truck, trailer truck
}


# [1000, 16]: column c averages the probabilities of category c's ImageNet classes.
_IMAGENET_16_AVERAGING = np.zeros((1000, len(HUMAN_CATEGORIES)), np.float32)
for _c, _name in enumerate(HUMAN_CATEGORIES):
    _IMAGENET_16_AVERAGING[list(IMAGENET_16_CLASS_INDICES[_name]), _c] = (
        1.0 / len(IMAGENET_16_CLASS_INDICES[_name]))


def imagenet_probabilities_to_16(probabilities: jax.Array) -> jax.Array:
    """16-class decisions from ImageNet-1k softmax probabilities [N, 1000] -> [N] ints.

    Each category scores the mean probability of its ImageNet classes; indices refer to
    HUMAN_CATEGORIES.
    """
    if probabilities.shape[-1] != 1000:
        raise ValueError(f"expected 1000 ImageNet probabilities, got shape {probabilities.shape}")
    scores = probabilities @ jnp.asarray(_IMAGENET_16_AVERAGING, probabilities.dtype)
    return jnp.argmax(scores, axis=-1)


def shape_bias(predictions: np.ndarray, shape_labels: np.ndarray,
               texture_labels: np.ndarray) -> float:
    """Fraction of shape decisions among shape-or-texture decisions on cue-conflict stimuli.

    predictions, shape_labels, texture_labels: [N] ints (same label space; a negative
    prediction means "no response"). Stimuli with shape == texture are dropped. Returns nan if
    no decision matches either cue.
    """
    p, s, t = (np.asarray(a) for a in (predictions, shape_labels, texture_labels))
    if not p.shape == s.shape == t.shape or p.ndim != 1:
        raise ValueError(f"need three equal 1-D arrays, got {p.shape}, {s.shape}, {t.shape}")
    keep = s != t
    n_shape = int(np.sum(p[keep] == s[keep]))
    n_texture = int(np.sum(p[keep] == t[keep]))
    return n_shape / (n_shape + n_texture) if n_shape + n_texture else float("nan")


def shape_bias_per_category(predictions: np.ndarray, shape_labels: np.ndarray,
                            texture_labels: np.ndarray,
                            categories: Sequence[str] = HUMAN_CATEGORIES) -> dict[str, float]:
    """Shape bias computed separately over the stimuli of each *shape* category (002 Fig. 3)."""
    p, s, t = (np.asarray(a) for a in (predictions, shape_labels, texture_labels))
    return {name: shape_bias(p[s == i], s[s == i], t[s == i])
            for i, name in enumerate(categories)}


def cue_decision_fractions(predictions: np.ndarray, shape_labels: np.ndarray,
                           texture_labels: np.ndarray) -> dict[str, float]:
    """Fractions of shape, texture and other decisions over the conflicting stimuli."""
    p, s, t = (np.asarray(a) for a in (predictions, shape_labels, texture_labels))
    keep = s != t
    n = max(int(keep.sum()), 1)
    fs, ft = np.sum(p[keep] == s[keep]) / n, np.sum(p[keep] == t[keep]) / n
    return {"shape": float(fs), "texture": float(ft), "other": float(1 - fs - ft)}


# Names like "cat3-elephant1.png": shape class + instance, '-', texture class + instance.
_CUE_CONFLICT_NAME = re.compile(r"^([A-Za-z_]+?)\d*-([A-Za-z_]+?)\d*\.(png|jpe?g)$")


def parse_cue_conflict_name(filename: str) -> tuple[str, str]:
    """'cat3-elephant1.png' -> ('cat', 'elephant'): shape and texture class of a stimulus."""
    m = _CUE_CONFLICT_NAME.match(os.path.basename(filename))
    if m is None:
        raise ValueError(f"{filename!r} is not named like 'shapeN-textureM.png'")
    return m.group(1), m.group(2)


def load_cue_conflict_folder(root: str, categories: Sequence[str] = HUMAN_CATEGORIES,
                             image_size: int | None = 224) -> dict:
    """Read a folder tree of cue-conflict stimuli named ``shapeN-textureM.png``.

    Works for rgeirhos/texture-vs-shape's ``stimuli/style-transfer-preprocessed-512`` (one
    sub-folder per shape class) or any flat folder. Returns {'images': [N, S, S, 3] float32 in
    [0, 1] (resized to ``image_size`` unless None), 'shape_labels': [N], 'texture_labels': [N],
    'paths': [N]} with labels indexing ``categories``.
    """
    from PIL import Image

    if not os.path.isdir(root):
        raise ValueError(f"cue-conflict folder {root!r} does not exist")
    index = {c: i for i, c in enumerate(categories)}
    paths, shapes, textures = [], [], []
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if not _CUE_CONFLICT_NAME.match(f):
                continue
            s, t = parse_cue_conflict_name(f)
            if s not in index or t not in index:
                raise ValueError(f"{f}: classes {s!r}/{t!r} not in categories {list(categories)}")
            paths.append(os.path.join(dirpath, f))
            shapes.append(index[s])
            textures.append(index[t])
    images = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        if image_size is not None:
            im = im.resize((image_size, image_size), Image.BILINEAR)
        images.append(np.asarray(im, np.float32) / 255.0)
    return {"images": np.stack(images) if images else np.zeros((0, 0, 0, 3), np.float32),
            "shape_labels": np.asarray(shapes, np.int64),
            "texture_labels": np.asarray(textures, np.int64), "paths": paths}


def evaluate_shape_bias(predict_fn: Callable[[jax.Array], jax.Array], images: np.ndarray,
                        shape_labels: np.ndarray, texture_labels: np.ndarray,
                        categories: Sequence[str] = HUMAN_CATEGORIES,
                        batch_size: int = 64) -> dict:
    """Run ``predict_fn`` ([B, H, W, 3] -> decisions [B]) on cue-conflict images.

    Works for the built-in dataset's cue_conflict split (its own classes as ``categories``) and
    for texture-vs-shape stimuli (16 categories, decisions via imagenet_probabilities_to_16).
    Returns shape bias overall and per shape category, decision fractions and predictions.
    """
    preds = np.concatenate([np.asarray(predict_fn(jnp.asarray(images[i:i + batch_size])))
                            for i in range(0, len(images), batch_size)])
    return {"shape_bias": shape_bias(preds, shape_labels, texture_labels),
            "per_category": shape_bias_per_category(preds, shape_labels, texture_labels,
                                                    categories),
            "fractions": cue_decision_fractions(preds, shape_labels, texture_labels),
            "predictions": preds}


def plot_shape_bias(per_category: Mapping[str, Mapping[str, float]], path: str,
                    categories: Sequence[str] | None = None, title: str = "") -> None:
    """002 Fig. 3: per category (rows) the fraction of shape decisions of each observer.

    per_category: {observer: {category: shape bias}}. Bottom axis: fraction of shape
    decisions; top axis: fraction of texture decisions (1 - shape). Vertical lines: each
    observer's mean over categories.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    observers = list(per_category)
    if categories is None:
        categories = list(next(iter(per_category.values())))
    fig, ax = plt.subplots(figsize=(4.0, 0.28 * len(categories) + 1.2))
    markers = "Dosv^<>phx*"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, obs in enumerate(observers):
        vals = np.array([per_category[obs].get(c, np.nan) for c in categories], float)
        col = colours[i % len(colours)]
        ax.plot(vals, range(len(categories)), linestyle="none", marker=markers[i % len(markers)],
                color=col, label=obs, alpha=0.85)
        ax.axvline(np.nanmean(vals), color=col, linewidth=1)
    ax.set_yticks(range(len(categories)), categories, fontsize=7)
    ax.set_xlim(-0.02, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of 'shape' decisions")
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda x: 1 - x))
    top.set_xlabel("fraction of 'texture' decisions")
    ax.legend(fontsize=6, frameon=False, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
