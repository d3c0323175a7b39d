"""Nearest-neighbour retrieval in feature space (Zhao et al., paper 003, Fig. 2): for chosen
query images, the gallery images with the highest cosine similarity, drawn as a grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int = 5,
                       batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` cosine neighbours of each query ([Q, D]) in the gallery ([N, D]): (indices
    [Q, k] int64, similarities [Q, k]), most similar first; ties -> lower gallery index."""
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k must be in [1, {len(gallery)}] (gallery size), got {k}")
    q, g = _normalise(queries), _normalise(gallery)
    idx, sims = [], []
    for start in range(0, len(q), batch_size):  # memory batch_size x N
        s = q[start:start + batch_size] @ g.T
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        idx.append(top)
        sims.append(np.take_along_axis(s, top, axis=1))
    return np.concatenate(idx).astype(np.int64), np.concatenate(sims)


def plot_retrieval_grid(query_images: np.ndarray, neighbour_images: np.ndarray,
                        path: str, query_labels: Sequence[str] | None = None,
                        neighbour_labels: Sequence[Sequence[str]] | None = None,
                        similarities: np.ndarray | None = None) -> None:
    """One row per query: the query ([Q, H, W, 3] uint8) then its k neighbours ([Q, k, H, W, 3]),
    captioned with labels and cosine similarity when given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nq, k = neighbour_images.shape[:2]
    fig, axes = plt.subplots(nq, k + 1, figsize=(1.4 * (k + 1), 1.5 * nq), squeeze=False)
    for r in range(nq):
        for c in range(k + 1):
            ax = axes[r, c]
            ax.imshow(query_images[r] if c == 0 else neighbour_images[r, c - 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(f"query: {query_labels[r]}" if query_labels is not None
                             else "query", fontsize=7)
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
            else:
                parts = []
                if neighbour_labels is not None:
                    parts.append(str(neighbour_labels[r][c - 1]))
                if similarities is not None:
                    parts.append(f"{similarities[r, c - 1]:.2f}")
                ax.set_title(" ".join(parts), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
