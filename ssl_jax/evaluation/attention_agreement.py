"""Attention compared BETWEEN networks on the same images (Epstein et al., 000, section 6).

attention_report scores the maps of ONE network against each other; here every network
contributes one map per image (e.g. Grad-CAM at its last conv layer, for the true label) and
the question is whether two networks look at the same places:

    maps = {"supervised": cam_sup, "simclr": cam_simclr, "random": cam_rand}   # [N, h, w] each
    pair = pairwise_agreement(maps, size=8)                  # 000 Figure 7 (all pairs)
    plot_agreement({"IoU": pair["iou"], "Spearman": pair["spearman"]}, pair["names"], "fig7.png")
    scores = per_image_scores(maps, "supervised", size=8)   # vs the reference, per image
    rows = agreement_table(maps, "supervised", size=8)      # 000 Table 3
    best = per_class_agreement(scores["simclr"]["iou"], labels, class_names)  # 000 Table 2

Networks may produce maps of different resolutions (a ResNet's layer3 vs a ViT's patch grid),
so every map is first resized, bilinearly (jax.image.resize, as grad_cam upsamples), to one
common ``size``: IoU and rank correlation are only defined between maps on the same grid.
Sharpness is also measured on that grid, so that every network's fraction is of the same set
of image locations.

Scores per image (ssl_jax.evaluation.attention): IoU of the two maps each binarised at > 50% of
its own max (000: "all locations with >50% of max attention get a value of 1"; two empty masks,
i.e. two all-zero maps, agree: IoU 1), Spearman rank correlation of the map values (NaN when a
map is constant, e.g. an all-zero Grad-CAM; such images are skipped in means and counted), and
sharpness (fraction of locations below half the map's max; NaN for an all-zero map).
"""
from __future__ import annotations

import itertools
from functools import partial
from typing import Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.evaluation import attention as A

Size = Union[int, tuple[int, int]]
METRICS = ("iou", "spearman", "sharpness")
METRIC_TITLES = {"iou": "IoU", "spearman": "Spearman's rho", "sharpness": "sharpness"}


def pair_key(a: str, b: str) -> str:
    """Key of the pair (a, b) in pairwise_agreement's per_image / nan_counts: "a~b", with a the
    network that comes first in the maps' order."""
    return f"{a}~{b}"


def _size(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def check_maps(maps: Mapping[str, np.ndarray]) -> int:
    """Raises ValueError unless there is at least one network and every network's maps are
    [N, h, w] with the same N (the same images, in the same order); returns N."""
    if not maps:
        raise ValueError("maps is empty; need at least one network")
    for name, m in maps.items():
        if np.ndim(m) != 3:
            raise ValueError(f"maps[{name!r}] must be [N, h, w], got shape {np.shape(m)}")
    counts = {name: np.shape(m)[0] for name, m in maps.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every network needs maps of the same N images, got {counts}")
    return next(iter(counts.values()))


def resize_maps(maps: Mapping[str, np.ndarray], size: Size) -> dict[str, np.ndarray]:
    """{network: float32 [N, H, W]}: each network's maps bilinearly resized to size = H or
    (H, W); maps already that size are returned unchanged (as float32)."""
    check_maps(maps)
    h, w = _size(size)
    out = {}
    for name, m in maps.items():
        m = np.asarray(m, np.float32)
        if m.shape[1:] != (h, w):
            m = np.asarray(jax.image.resize(jnp.asarray(m), (m.shape[0], h, w), "bilinear"))
        out[name] = m
    return out


@partial(jax.jit, static_argnames="fraction")
def _scores(a: jax.Array, b: jax.Array, fraction: float) -> dict[str, jax.Array]:
    """Per-image IoU and Spearman of maps a vs b and a's sharpness, [N] each: one compiled
    program per map shape (eagerly, every op of the rank computation compiles on its own)."""
    return {"iou": A.map_iou(a, b, fraction), "spearman": A.spearman(a, b),
            "sharpness": A.sharpness(a, fraction)}


def _host(scores: Mapping[str, jax.Array], keys: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: np.asarray(scores[k], np.float64) for k in keys}


def _nanmean(v: np.ndarray) -> float:
    finite = v[np.isfinite(v)]
    return float(finite.mean()) if finite.size else float("nan")


def pairwise_agreement(maps: Mapping[str, np.ndarray], size: Size,
                       fraction: float = 0.5) -> dict:
    """Agreement of every pair of networks' maps of the same N images (000 Figure 7).

    maps: {network: [N, h, w]} (h, w may differ between networks; all resized to ``size``).
    Returns {"names": [M] networks in the maps' order, "size": (H, W),
    "iou" / "spearman": float64 [M, M] symmetric matrices of the mean over images (diagonal 1:
    a map agrees with itself), "per_image": {pair_key(a, b): {"iou": [N], "spearman": [N]}}
    for every unordered pair (a before b in names), "nan_counts": {pair_key: images whose
    Spearman is undefined (a constant map), left out of the mean}}.
    IoU binarises each map at > ``fraction`` of its own max (000: 0.5)."""
    resized = resize_maps(maps, size)
    names = list(resized)
    iou_m, rho_m = np.eye(len(names)), np.eye(len(names))
    per_image, nan_counts = {}, {}
    for i, j in itertools.combinations(range(len(names)), 2):
        scores = _host(_scores(resized[names[i]], resized[names[j]], fraction),
                       ("iou", "spearman"))
        iou, rho = scores["iou"], scores["spearman"]
        key = pair_key(names[i], names[j])
        per_image[key] = scores
        nan_counts[key] = int(np.isnan(rho).sum())
        iou_m[i, j] = iou_m[j, i] = _nanmean(iou)
        rho_m[i, j] = rho_m[j, i] = _nanmean(rho)
    return {"names": names, "size": _size(size), "iou": iou_m, "spearman": rho_m,
            "per_image": per_image, "nan_counts": nan_counts}


def per_image_scores(maps: Mapping[str, np.ndarray], reference: str, size: Size,
                     fraction: float = 0.5) -> dict[str, dict[str, np.ndarray]]:
    """{network: {"iou": [N], "spearman": [N], "sharpness": [N]}}: each network's maps vs the
    ``reference`` network's on the same images (the reference itself included: IoU 1, Spearman
    1 or NaN for a constant map), and its own sharpness, all on the common ``size`` grid.
    These per-image values feed agreement_table (000 Table 3) and per_class_agreement (Table 2).
    """
    if reference not in maps:
        raise ValueError(f"unknown reference {reference!r}; networks: {', '.join(maps)}")
    resized = resize_maps(maps, size)
    ref = resized[reference]
    return {name: _host(_scores(m, ref, fraction), METRICS) for name, m in resized.items()}


def summarise(values: np.ndarray) -> dict:
    """{"mean", "sd", "n", "undefined"} of per-image values, NaNs (undefined scores) left out
    and counted; sd is the sample standard deviation over images (ddof=1; NaN below 2 values),
    the spread 000's Table 3 reports after "±"."""
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    return {"mean": float(finite.mean()) if finite.size else float("nan"),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "n": int(finite.size), "undefined": int(v.size - finite.size)}


def agreement_table(maps: Mapping[str, np.ndarray], reference: str, size: Size,
                    fraction: float = 0.5) -> list[dict]:
    """000 Table 3: one row per network (maps' order), {"network", "is_reference", "iou",
    "spearman", "sharpness"}, each metric a summarise() dict (mean ± sd over images) of
    per_image_scores: IoU and Spearman with the ``reference`` network, and the network's own
    sharpness."""
    scores = per_image_scores(maps, reference, size, fraction)
    return [{"network": name, "is_reference": name == reference,
             **{metric: summarise(s[metric]) for metric in METRICS}}
            for name, s in scores.items()]


def per_class_agreement(per_image_values: np.ndarray, labels: np.ndarray,
                        class_names: Sequence[str], top: int = 3) -> dict:
    """000 Table 2: the mean of a per-image metric (e.g. per_image_scores' IoU with the
    reference, or sharpness) within each class, and the ``top`` classes with the highest and
    lowest means.

    Returns {"mean": float64 [C] (NaN for a class without a defined value), "count": [C]
    images with a defined value, "top": highest first, "bottom": lowest first}; top / bottom
    rows are {"class", "index", "value", "count"}; ties go to the lower class index; classes
    without images are never listed."""
    v = np.asarray(per_image_values, np.float64)
    y = np.asarray(labels, np.int64)
    c = len(class_names)
    if v.shape != y.shape or v.ndim != 1:
        raise ValueError(f"per_image_values {v.shape} and labels {y.shape} must both be [N]")
    if y.size and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got [{y.min()}, {y.max()}]")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    ok = np.isfinite(v)
    counts = np.bincount(y[ok], minlength=c)
    sums = np.bincount(y[ok], weights=v[ok], minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    present = np.flatnonzero(counts > 0)

    def row(k):
        return {"class": class_names[k], "index": int(k), "value": float(means[k]),
                "count": int(counts[k])}

    highest = present[np.argsort(-means[present], kind="stable")]
    lowest = present[np.argsort(means[present], kind="stable")]
    return {"mean": means, "count": counts, "top": [row(k) for k in highest[:top]],
            "bottom": [row(k) for k in lowest[:top]]}


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

def _pm(summary: Mapping, digits: int) -> str:
    if not np.isfinite(summary["mean"]):
        return "-"
    sd = "-" if not np.isfinite(summary["sd"]) else f"{summary['sd']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {sd}"


def agreement_markdown(rows: Sequence[Mapping], digits: int = 3) -> str:
    """000 Table 3 as a markdown table: agreement_table rows, mean ± sd over images; the
    reference network's row in italics (it agrees with itself by construction)."""
    ref = [r["network"] for r in rows if r["is_reference"]]
    lines = [f"| network | IoU with {ref[0] if ref else 'reference'} | Spearman's rho | "
             "sharpness |", "|---|---|---|---|"]
    for r in rows:
        cells = [r["network"]] + [_pm(r[m], digits) for m in METRICS]
        if r["is_reference"]:
            cells = [f"*{c}*" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_markdown(results: Mapping[str, Mapping[str, Mapping]], digits: int = 3) -> str:
    """000 Table 2 as a markdown table: results = {network: {metric: per_class_agreement
    result}}; one line per (network, metric) with its top and bottom classes and their means."""
    def cell(rows):
        return "; ".join(f"{r['class']} ({r['value']:.{digits}f})" for r in rows)

    lines = ["| network | metric | top | bottom |", "|---|---|---|---|"]
    for network, by_metric in results.items():
        for metric, res in by_metric.items():
            lines.append(f"| {network} | {METRIC_TITLES.get(metric, metric)} | "
                         f"{cell(res['top'])} | {cell(res['bottom'])} |")
    return "\n".join(lines)


def pairwise_markdown(result: Mapping, digits: int = 3) -> str:
    """pairwise_agreement's two matrices as markdown tables (rows and columns = networks)."""
    names = result["names"]
    out = []
    for metric in ("iou", "spearman"):
        m = result[metric]
        out += [f"**{METRIC_TITLES[metric]}** (mean over images, maps at "
                f"{result['size'][0]}x{result['size'][1]})", "",
                "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for i, name in enumerate(names):
            out.append(f"| {name} | " + " | ".join(
                "-" if not np.isfinite(v) else f"{v:.{digits}f}" for v in m[i]) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def plot_agreement(matrices: Mapping[str, np.ndarray], names: Sequence[str], path: str,
                   title: str = "") -> None:
    """000 Figure 7: one heatmap per matrix (e.g. {"IoU": ..., "Spearman": ...} from
    pairwise_agreement) over all network pairs, the value written in each cell. The colour
    range is [0, 1], or [-1, 1] for a matrix with a negative entry (a rank correlation), so
    panels of one figure and figures of different runs share a scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    for label, m in matrices.items():
        if np.shape(m) != (n, n):
            raise ValueError(f"matrix {label!r} has shape {np.shape(m)}, expected ({n}, {n})")
    side = 1.2 + 0.6 * n
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices) + 1.0, side),
                             squeeze=False)
    for ax, (label, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m, np.float64)
        signed = bool(np.nanmin(m) < 0) if np.isfinite(m).any() else False
        cmap = plt.get_cmap("RdBu_r" if signed else "viridis")
        norm = matplotlib.colors.Normalize(-1.0 if signed else 0.0, 1.0)
        im = ax.imshow(m, cmap=cmap, norm=norm)
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                if not np.isfinite(v):
                    ax.text(j, i, "-", ha="center", va="center", fontsize=8)
                    continue
                r, g, b, _ = cmap(norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
