"""Confusion structure of a classifier (Epstein et al., paper 000): a confusion matrix with
classes ordered by a hierarchy, the share of top-5 errors that stay inside the true class's
group, and the classes a model is strongest / weakest at relative to a reference model.

A *grouping* is a list of `(group name, [class indices])`; every class must appear exactly once.
Built-in groupings (see docs/EVALUATION.md for the exact definitions and sources):
- `shapes_textures_grouping()`: the built-in dataset's 10 shapes by outline geometry;
- `imagenet_grouping()`: ImageNet-1k by index ranges (RestrictedImageNet super-classes of
  Tsipras et al. 2019 / the `robustness` library, then the other animals 0-397, then 398-999).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Grouping = list[tuple[str, list[int]]]

# Built-in dataset, grouped by outline geometry (ssl_jax.data.builtin_textures.SHAPE_NAMES).
SHAPES_TEXTURES_GROUPS: dict[str, tuple[str, ...]] = {
    "curved": ("circle", "ring", "crescent", "heart"),
    "convex polygon": ("triangle", "square"),
    "non-convex polygon": ("star", "cross", "arrow", "ell"),
}
# ImageNet-1k: inclusive index ranges of RestrictedImageNet's 9 super-classes (robustness
# library, `constants.RESTRICTED_IMAGNET_RANGES`); WordNet animals are indices 0-397.
IMAGENET_RANGES: tuple[tuple[str, int, int], ...] = (
    ("fish", 389, 397), ("frog", 30, 32), ("turtle", 33, 37), ("bird", 80, 100),
    ("crab", 118, 121), ("insect", 300, 319), ("dog", 151, 268), ("cat", 281, 285),
    ("monkey", 365, 382),
)
IMAGENET_ANIMALS_END = 398  # exclusive


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                     skip_negative_preds: bool = False) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted class (sklearn's layout).

    With `skip_negative_preds`, a negative prediction (no response, e.g. a human trial whose
    answer is not one of the classes) is left out of the counts instead of being an error."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    if skip_negative_preds:
        labels, preds = labels[preds >= 0], preds[preds >= 0]
    for name, v in (("labels", labels), ("preds", preds)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{v.min()}, {v.max()}]")
    return np.bincount(labels * num_classes + preds,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """[C] recall per class in percent (NaN for classes absent from the labels)."""
    totals = cm.sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.diag(cm) / totals


def check_grouping(grouping: Grouping, num_classes: int) -> None:
    """Raises ValueError unless every class in [0, num_classes) is in exactly one group."""
    flat = [c for _, members in grouping for c in members]
    bad = sorted(c for c in flat if not 0 <= c < num_classes)
    if bad:
        raise ValueError(f"grouping has classes outside [0, {num_classes}): {bad[:10]}")
    counts = np.bincount(flat, minlength=num_classes)
    if (counts != 1).any():
        raise ValueError(f"every class must be in exactly one group; missing "
                         f"{np.flatnonzero(counts == 0)[:10].tolist()}, repeated "
                         f"{np.flatnonzero(counts > 1)[:10].tolist()}")


def group_ids(grouping: Grouping, num_classes: int) -> np.ndarray:
    """[C] index of each class's group."""
    check_grouping(grouping, num_classes)
    out = np.empty(num_classes, np.int64)
    for g, (_, members) in enumerate(grouping):
        out[list(members)] = g
    return out


def class_order(grouping: Grouping) -> np.ndarray:
    """Class indices group by group (the order of the heatmap's rows and columns)."""
    return np.array([c for _, members in grouping for c in members], np.int64)


def parse_grouping(spec: str, class_names: Sequence[str]) -> Grouping:
    """'curved:circle+ring;straight:square+triangle' -> grouping; members are class names or
    integer indices."""
    grouping: Grouping = []
    for part in filter(None, spec.split(";")):
        if ":" not in part:
            raise ValueError(f"grouping entry {part!r} is not 'group:class+class+...'")
        name, members = part.split(":", 1)
        idx = []
        for m in filter(None, members.split("+")):
            if m.isdigit():
                idx.append(int(m))
            elif m in class_names:
                idx.append(list(class_names).index(m))
            else:
                raise ValueError(f"unknown class {m!r} in grouping; valid: {', '.join(class_names)}")
        grouping.append((name, idx))
    return grouping


def shapes_textures_grouping(class_names: Sequence[str]) -> Grouping:
    """SHAPES_TEXTURES_GROUPS as indices of `class_names` (the dataset's label names)."""
    return [(g, [list(class_names).index(n) for n in names])
            for g, names in SHAPES_TEXTURES_GROUPS.items()]


def imagenet_grouping() -> Grouping:
    """IMAGENET_RANGES groups (in that order), then 'other animal' (the rest of 0-397), then
    'non-animal' (398-999); within a group, classes in index order."""
    grouping: Grouping = [(n, list(range(lo, hi + 1))) for n, lo, hi in IMAGENET_RANGES]
    taken = {c for _, m in grouping for c in m}
    grouping.append(("other animal", [c for c in range(IMAGENET_ANIMALS_END) if c not in taken]))
    grouping.append(("non-animal", list(range(IMAGENET_ANIMALS_END, 1000))))
    return grouping


def within_group_top5_error_fraction(logits: np.ndarray, labels: np.ndarray,
                                     groups: np.ndarray, k: int = 5) -> float:
    """Of all wrong classes among the top-`k` predictions (logits [N, C], labels [N]), the
    fraction (0..1) whose group (`groups` [C]) is the true class's group. NaN if none."""
    logits, labels = np.asarray(logits), np.asarray(labels, np.int64)
    # stable argsort on -logits: ties rank the lower class first, as knn's top-5
    topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    wrong = topk != labels[:, None]
    same = groups[topk] == groups[labels][:, None]
    n = wrong.sum()
    return float((wrong & same).sum() / n) if n else float("nan")


def class_differences(acc: np.ndarray, ref_acc: np.ndarray, class_names: Sequence[str],
                      k: int = 5) -> dict[str, list[dict]]:
    """Per-class accuracy difference `acc - ref_acc` (000 Table 1): the `k` classes where the
    model beats the reference most (`strongest`) and trails it most (`weakest`)."""
    diff = np.asarray(acc, np.float64) - np.asarray(ref_acc, np.float64)
    valid = np.flatnonzero(~np.isnan(diff))
    order = valid[np.argsort(-diff[valid], kind="stable")]
    row = lambda c: {"class": class_names[c], "index": int(c), "accuracy": float(acc[c]),  # noqa: E731
                     "reference_accuracy": float(ref_acc[c]), "difference": float(diff[c])}
    k = min(k, len(order))
    return {"strongest": [row(c) for c in order[:k]],
            "weakest": [row(c) for c in order[::-1][:k]]}


def plot_confusion(cm: np.ndarray, grouping: Grouping, class_names: Sequence[str],
                   path: str, title: str = "") -> None:
    """Row-normalised confusion heatmap (rows = true) with classes in grouping order and lines
    between groups; class names are drawn when there are at most 50 classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = class_order(grouping)
    m = cm[np.ix_(order, order)].astype(np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(order)
    fig, ax = plt.subplots(figsize=(min(4 + 0.35 * n, 14),) * 2)
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    bounds = np.cumsum([len(members) for _, members in grouping])[:-1] - 0.5
    for b in bounds:
        ax.axhline(b, color="white", lw=1)
        ax.axvline(b, color="white", lw=1)
    if n <= 50:
        names = [class_names[c] for c in order]
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalised, classes by group)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
