"""Linear probe accuracy layer by layer (Grigg et al. 001; Epstein et al. 000): the same
004-protocol probe (`linear_probe`) fitted on each named layer's pooled activations."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ssl_jax.evaluation.linear_probe import linear_probe


def per_layer_probe(train_feats: Mapping[str, np.ndarray], train_y: np.ndarray,
                    test_feats: Mapping[str, np.ndarray], test_y: np.ndarray,
                    num_classes: int | None = None, probe_grid: int = 45,
                    progress: bool = True) -> dict[str, dict[str, float]]:
    """{layer: {top1, mean_per_class, best_C}} for each layer of `train_feats` ({name: [N, D_l]},
    insertion order kept) scored on `test_feats` ({name: [M, D_l]}). Accuracies in percent."""
    from tqdm import tqdm

    missing = [n for n in train_feats if n not in test_feats]
    if missing:
        raise ValueError(f"layers {missing} have train but no test features")
    out: dict[str, dict[str, float]] = {}
    for name in tqdm(list(train_feats), desc="per-layer probes", disable=not progress):
        res = linear_probe(train_feats[name], train_y, test_feats[name], test_y,
                           num_grid=probe_grid, num_classes=num_classes, calibrate=False)
        out[name] = {k: float(res[k]) for k in ("top1", "mean_per_class", "best_C")}
    return out


def plot_per_layer(results: Mapping[str, Mapping[str, Mapping[str, float]]], path: str,
                   metric: str = "top1", title: str = "") -> None:
    """Line plot of `metric` vs layer, one line per model: results = {model: {layer: metrics}}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, per_layer in results.items():
        layers: Sequence[str] = list(per_layer)
        ax.plot(range(len(layers)), [per_layer[n][metric] for n in layers], marker="o",
                label=model)
        ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"linear probe {metric} (%)")
    ax.set_title(title or "linear probe accuracy by layer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
