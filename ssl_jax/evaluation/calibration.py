"""Calibration of a classifier's softmax: ECE, temperature scaling, reliability diagrams (004).

ECE (Guo et al. 2017; netcal's ``ECE``): confidence = max probability, prediction = argmax;
``num_bins`` equal-width bins on [0, 1], each [lo, hi) except the last, which is closed;
``ECE = sum_b (N_b / N) |acc_b - conf_b|``, a fraction in [0, 1] (not percent).

Temperature-scaled ECE as 004's ``cross_validate_temp_scaling``: shuffle the examples with the
legacy seeded RNG, cut ``folds`` folds of floor(N / folds) (the remainder is left out), fit T by
NLL on one fold, measure ECE on the other folds, average over folds.

These are host-side metrics in float64 numpy: inputs may be numpy or (sharded) jax arrays and
are gathered first, so sharded and unsharded inputs give identical numbers.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.optimize
import scipy.special

ArrayLike = Any


def _check(probs_or_logits: np.ndarray, labels: np.ndarray, what: str) -> None:
    if probs_or_logits.ndim != 2 or labels.shape != (probs_or_logits.shape[0],):
        raise ValueError(f"{what} must be [N, K] and labels [N]; got {probs_or_logits.shape}, {labels.shape}")
    if labels.size == 0:
        raise ValueError("need at least one example, got N=0")


def _bin_statistics(probs: np.ndarray, labels: np.ndarray, num_bins: int):
    """Per-bin (count, mean confidence, accuracy) with [lo, hi) bins and the last bin closed."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    mean_conf = np.bincount(bins, weights=conf, minlength=num_bins) / safe
    acc = np.bincount(bins, weights=correct, minlength=num_bins) / safe
    return count, mean_conf, acc


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15) -> float:
    """ECE of probabilities probs [N, K] (rows sum to 1) against int labels [N]; fraction in [0, 1]."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    _check(probs, labels, "probs")
    count, mean_conf, acc = _bin_statistics(probs, labels, num_bins)
    return float(np.sum(count / labels.size * np.abs(acc - mean_conf)))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(scipy.special.logsumexp(z, axis=1) - z[np.arange(labels.size), labels]))


def temperature_scale(logits: ArrayLike, labels: ArrayLike) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T); logits [N, K], labels [N].

    The NLL is convex in 1/T, hence unimodal in log T: a bounded 1-D search over
    log T in [-7, 7] (T in [1e-3, 1e3]) finds the global minimum.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    _check(logits, labels, "logits")
    res = scipy.optimize.minimize_scalar(
        lambda log_t: _nll(logits, labels, float(np.exp(log_t))),
        bounds=(-7.0, 7.0), method="bounded", options={"xatol": 1e-7})
    return float(np.exp(res.x))


def temperature_scaled_ece(
    logits: ArrayLike, labels: ArrayLike, folds: int = 5, seed: int = 0, num_bins: int = 15
) -> dict[str, Any]:
    """004's k-fold temperature-scaled ECE. logits [N, K], labels [N].

    Returns {"ece": unscaled ECE on all N, "scaled_ece": mean over folds of the ECE on the other
    folds after fitting T on this fold, "temperatures": list of the fitted T per fold}.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    _check(logits, labels, "logits")
    if folds < 2 or labels.size < folds:
        raise ValueError(f"folds must be in [2, N={labels.size}], got {folds}")
    perm = np.random.RandomState(seed).permutation(labels.size)
    size = labels.size // folds
    parts = [perm[i * size:(i + 1) * size] for i in range(folds)]
    scaled, temps = [], []
    for i in range(folds):
        fit_idx = parts[i]
        eval_idx = np.concatenate(parts[:i] + parts[i + 1:])
        t = temperature_scale(logits[fit_idx], labels[fit_idx])
        probs = scipy.special.softmax(logits[eval_idx] / t, axis=1)
        scaled.append(expected_calibration_error(probs, labels[eval_idx], num_bins))
        temps.append(t)
    ece = expected_calibration_error(scipy.special.softmax(logits, axis=1), labels, num_bins)
    return {"ece": ece, "scaled_ece": float(np.mean(scaled)), "temperatures": temps}


def reliability_diagram(
    probs: ArrayLike, labels: ArrayLike, path: str, num_bins: int = 15, title: str | None = None
) -> str:
    """Save a reliability diagram PNG (per-bin accuracy vs confidence, gap to the diagonal
    shaded, bin occupancy below) for probs [N, K], labels [N]; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")  # headless; figures are only ever written to files here
    import matplotlib.pyplot as plt

    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    _check(probs, labels, "probs")
    count, mean_conf, acc = _bin_statistics(probs, labels, num_bins)
    ece = expected_calibration_error(probs, labels, num_bins)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    width = 1.0 / num_bins
    filled = count > 0

    fig, (ax, ax_hist) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][filled], acc[filled], width=width, align="edge", color="tab:blue",
           edgecolor="black", label="accuracy")
    gap_lo = np.minimum(acc, mean_conf)[filled]
    ax.bar(edges[:-1][filled], np.abs(mean_conf - acc)[filled], bottom=gap_lo, width=width,
           align="edge", color="tab:red", alpha=0.35, edgecolor="tab:red", hatch="//", label="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"Reliability diagram (ECE = {100 * ece:.2f}%)")
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.bar(edges[:-1], count / count.sum(), width=width, align="edge", color="gray",
                edgecolor="black")
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("fraction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
