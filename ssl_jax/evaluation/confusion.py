"""Confusion structure of a classifier (Epstein et al., paper 000): a confusion matrix with
classes ordered by a hierarchy, the share of top-5 errors that stay inside the true class's
group, the classes a model is strongest / weakest at relative to a reference model, and
Figure 5's binarised top-k confusion matrices with the fraction of predictions that stay inside
the true class's block (`topk_confusion_counts`, `block_diagonal_fraction`,
`plot_binarised_confusions`).

A *grouping* is a list of `(group name, [class indices])`; every class must appear exactly once.
Built-in groupings (see docs/EVALUATION.md for the exact definitions and sources):
- `shapes_textures_grouping()`: the built-in dataset's 10 shapes by outline geometry;
- `imagenet_grouping()`: ImageNet-1k by index ranges (RestrictedImageNet super-classes of
  Tsipras et al. 2019 / the `robustness` library, then the other animals 0-397, then 398-999).
"""
from __future__ import annotations

from typing import Mapping, Sequence

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


def topk_confusion_counts(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """000 Figure 5's top-k confusion counts [C, C] int64 (rows = true class, columns =
    predicted): for each image, if the true label is among its top-``k`` classes the image
    counts as correct and only the diagonal cell [label, label] is incremented; otherwise each
    of the ``k`` cells [label, p] of its top-k classes p is incremented (so a wrong image adds
    k, a correct one 1). Logit ties: the lower class ranks first (stable argsort, as
    within_group_top5_error_fraction).

    000 uses k = 5 on ImageNet's 1000 classes; with few classes (the built-in dataset has 10)
    top-5 contains the label for most images and the matrix is almost diagonal, so ``k`` is a
    parameter: use a small k (e.g. 2) there. 000's binarised display is ``counts > 0`` (every
    cell predicted at least once is on); see plot_binarised_confusions."""
    logits, labels = np.asarray(logits), np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
    n, c = logits.shape
    if not 1 <= k <= c:
        raise ValueError(f"k must lie in [1, {c}] (the number of classes), got {k}")
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]")
    topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hit = (topk == labels[:, None]).any(axis=1)
    rows = np.concatenate([labels[hit], np.repeat(labels[~hit], k)])
    cols = np.concatenate([labels[hit], topk[~hit].ravel()])
    return np.bincount(rows * c + cols, minlength=c * c).reshape(c, c)


def block_diagonal_fraction(counts: np.ndarray, groups: np.ndarray) -> float:
    """Of all increments of a confusion count matrix ``counts`` [C, C] (rows = true class),
    the fraction (0..1) that fall in a block-diagonal cell, i.e. whose predicted class is in
    the true class's group (``groups`` [C], e.g. group_ids(grouping, C)); diagonal cells
    (correct predictions) are in-group. NaN for an all-zero matrix.

    On topk_confusion_counts this is 000 Figure 5's "fraction of predictions within
    block-diagonal sections" counted per increment: a wrong image weighs k, a correct one 1.
    On the binarised matrix ``(counts > 0).astype(int)`` it is instead the fraction of
    activated cells that lie inside the blocks (000 does not say which it reports)."""
    counts, groups = np.asarray(counts), np.asarray(groups, np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or groups.shape != counts.shape[:1]:
        raise ValueError(f"need counts [C, C] and groups [C], got {counts.shape} and {groups.shape}")
    total = counts.sum()
    if total == 0:
        return float("nan")
    same = groups[:, None] == groups[None, :]
    return float(counts[same].sum() / total)


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


def plot_binarised_confusions(matrices: Mapping[str, np.ndarray], grouping: Grouping,
                              class_names: Sequence[str], path: str, title: str = "") -> None:
    """000 Figure 5: one panel per network of its binarised confusion matrix (``counts > 0``,
    e.g. of topk_confusion_counts; rows = true), classes in grouping order, each group's
    diagonal block outlined, and block_diagonal_fraction of the (unbinarised) counts in the
    panel title. Class names are drawn when there are at most 50 classes. With few classes and
    many images every cell is soon predicted once and the binarised panels saturate (000 had
    1000 classes); the title's fraction, which counts every increment, does not."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not matrices:
        raise ValueError("matrices is empty; need at least one network")
    order = class_order(grouping)
    n = len(order)
    groups = group_ids(grouping, n)
    for name, cm in matrices.items():
        if np.shape(cm) != (n, n):
            raise ValueError(f"matrix {name!r} has shape {np.shape(cm)}, the grouping has {n} classes")
    side = min(3 + 0.3 * n, 8)
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side + 0.4),
                             squeeze=False)
    starts = np.concatenate([[0], np.cumsum([len(members) for _, members in grouping])])
    for ax, (name, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm)
        ax.imshow(cm[np.ix_(order, order)] > 0, cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest")
        for lo, hi in zip(starts[:-1], starts[1:]):
            ax.add_patch(Rectangle((lo - 0.5, lo - 0.5), hi - lo, hi - lo, fill=False,
                                   edgecolor="tab:red", lw=1.2))
        ax.set_title(f"{name}: {block_diagonal_fraction(cm, groups):.0%} in blocks", fontsize=9)
        if n <= 50:
            names = [class_names[c] for c in order]
            ax.set_xticks(range(n), names, rotation=90, fontsize=7)
            ax.set_yticks(range(n), names, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
