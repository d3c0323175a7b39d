"""Error consistency (Geirhos, Meding & Wichmann 2020; 002 Sec. 3.3) and the human-data loader.

Error consistency of two observers on the same trials is Cohen's kappa on trial correctness:
  c_obs = fraction of trials where both are right or both are wrong,
  c_exp = p_a p_b + (1 - p_a)(1 - p_b) with p_i the accuracy of observer i,
  kappa = (c_obs - c_exp) / (1 - c_exp).
kappa > 0: errors on the same images more often than two independent observers with these
accuracies would; kappa = 0: chance overlap.

Human trial data: model-vs-human raw-data CSVs (columns subj, session|Session, trial, rt,
object_response, category, condition, imagename; one file per subject and session). Trials of
different subjects are matched by ``image_key``: the part of ``imagename`` after its first three
'_'-separated fields (trial number, experiment code, subject), e.g.
'0002_s5n_s01_0_bird_00_bird2-clock3.png' -> '0_bird_00_bird2-clock3.png'.
"""
from __future__ import annotations

import csv
import glob
import os
from typing import Mapping, Sequence

import numpy as np


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per trial), got shape {a.shape}")
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be boolean / 0-1 correctness, got values {np.unique(a)}")
    return a.astype(bool)


def expected_consistency(acc_a: float, acc_b: float) -> float:
    """Consistency of two independent observers with accuracies acc_a, acc_b."""
    return acc_a * acc_b + (1.0 - acc_a) * (1.0 - acc_b)


def error_consistency(correct_a, correct_b) -> float:
    """Cohen's kappa between two observers' per-trial correctness ([N] bool each, same trials).

    Returns nan when c_exp == 1 (both observers always right, or both always wrong): kappa is
    undefined there.
    """
    a, b = _as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two non-empty arrays of equal length, got {a.shape}, {b.shape}")
    c_obs = float(np.mean(a == b))
    c_exp = expected_consistency(float(a.mean()), float(b.mean()))
    if c_exp >= 1.0:
        return float("nan")
    return (c_obs - c_exp) / (1.0 - c_exp)


def error_consistency_matrix(correct: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pairwise kappa of observers evaluated on the same trials.

    correct: {observer: [N] bool}, all aligned to the same N trials (use ``align_trials``).
    Returns (names, [n_obs, n_obs] matrix with 1 on the diagonal).
    """
    names = list(correct)
    n = len(names)
    m = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = error_consistency(correct[names[i]], correct[names[j]])
    return names, m


def group_consistency(names: Sequence[str], matrix: np.ndarray,
                      groups: Mapping[str, str]) -> dict[tuple[str, str], dict]:
    """Kappa summarised over pairs of observer groups (002 Fig. 2: hum, sup, self-sup).

    groups: {observer: group}. For each unordered group pair returns {'mean', 'std', 'n'} over
    all observer pairs across the two groups (distinct observers only; within a group, each
    unordered pair once). Nan kappas are skipped.
    """
    missing = [n for n in names if n not in groups]
    if missing:
        raise ValueError(f"observers without a group: {missing}")
    order = list(dict.fromkeys(groups[n] for n in names))
    out = {}
    for gi, g1 in enumerate(order):
        for g2 in order[gi:]:
            vals = [matrix[i, j] for i in range(len(names)) for j in range(i + 1, len(names))
                    if {groups[names[i]], groups[names[j]]} == {g1, g2}
                    and not np.isnan(matrix[i, j])]
            out[(g1, g2)] = {"mean": float(np.mean(vals)) if vals else float("nan"),
                             "std": float(np.std(vals)) if vals else float("nan"),
                             "n": len(vals)}
    return out


# ---------------------------------------------------------------------------------------------
# model-vs-human raw CSVs
# ---------------------------------------------------------------------------------------------
def image_key(imagename: str) -> str:
    """Subject-independent stimulus id: drop the first three '_'-separated fields."""
    parts = imagename.split("_")
    if len(parts) < 4:
        raise ValueError(f"imagename {imagename!r} has fewer than four '_'-separated fields")
    return "_".join(parts[3:])


def cue_conflict_texture(imagename: str) -> str:
    """Texture class of a cue-conflict stimulus: '..._bird3-clock3.png' -> 'clock'."""
    stem = os.path.splitext(imagename)[0].split("_")[-1]
    if "-" not in stem:
        raise ValueError(f"{imagename!r} is not a cue-conflict name (no '<shape>-<texture>')")
    return stem.split("-", 1)[1].rstrip("0123456789")


def load_human_trials(root: str, experiment: str) -> dict[str, dict[str, dict]]:
    """Read all CSVs of one experiment folder (``root/<experiment>/*.csv``).

    Returns {subject: {image_key: {'response', 'category', 'condition', 'imagename', 'rt',
    'session'}}}. Several sessions of one subject are merged; a repeated image key within a
    subject raises ValueError (it would make trial matching ambiguous).
    """
    folder = os.path.join(root, experiment)
    files = sorted(glob.glob(os.path.join(folder, "*.csv")))
    if not files:
        available = sorted(os.listdir(root)) if os.path.isdir(root) else []
        raise ValueError(f"no CSV files in {folder!r}; experiments here: {available}")
    subjects: dict[str, dict[str, dict]] = {}
    for path in files:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                row = {k.lower(): v for k, v in row.items()}
                trials = subjects.setdefault(row["subj"], {})
                key = image_key(row["imagename"])
                if key in trials:
                    raise ValueError(f"{path}: image {key!r} appears twice for {row['subj']}")
                trials[key] = {"response": row["object_response"], "category": row["category"],
                               "condition": row["condition"], "imagename": row["imagename"],
                               "rt": float(row["rt"]), "session": row["session"]}
    return subjects


def align_trials(observers: Mapping[str, Mapping[str, dict]],
                 keys: Sequence[str] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Correctness of each observer on the common images, matched by image key.

    observers: {name: {image_key: {'response', 'category', ...}}} (the loader's format; model
    decisions can be put in the same format). keys: the images to use (default: those every
    observer saw, sorted). Returns (keys, {name: [len(keys)] bool correct}).
    """
    if keys is None:
        common = set.intersection(*(set(t) for t in observers.values()))
        keys = sorted(common)
    correct = {name: np.array([t[k]["response"] == t[k]["category"] for k in keys])
               for name, t in observers.items()}
    return list(keys), correct


def observer_from_decisions(image_keys: Sequence[str], responses: Sequence[str],
                            categories: Sequence[str],
                            conditions: Sequence[str] | None = None) -> dict[str, dict]:
    """Put a model's decisions in the loader's per-observer format, to compare with humans.

    image_keys: [N] stimulus ids (``image_key`` of the human CSV names, or any ids shared with
    the other observers); responses / categories: [N] class names (decision, ground truth).
    Returns {image_key: {'response', 'category', 'condition'}}.
    """
    n = len(image_keys)
    conditions = ["0"] * n if conditions is None else list(conditions)
    if not len(responses) == len(categories) == len(conditions) == n:
        raise ValueError(f"lengths differ: {n} keys, {len(responses)} responses, "
                         f"{len(categories)} categories, {len(conditions)} conditions")
    if len(set(image_keys)) != n:
        raise ValueError("image_keys contains duplicates")
    return {k: {"response": r, "category": c, "condition": str(cond)}
            for k, r, c, cond in zip(image_keys, responses, categories, conditions)}


def pairwise_consistency(observers: Mapping[str, Mapping[str, dict]],
                         condition: str | None = None) -> dict[tuple[str, str], float]:
    """Kappa for every pair of observers over the images both saw (optionally one condition).

    Unlike ``align_trials`` + ``error_consistency_matrix`` (all observers on a common set),
    each pair uses its own overlap, which matters when subjects saw different image subsets.
    """
    names = sorted(observers)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ta, tb = observers[a], observers[b]
            keys = sorted(k for k in set(ta) & set(tb)
                          if condition is None or ta[k]["condition"] == condition)
            if not keys:
                continue
            ca = np.array([ta[k]["response"] == ta[k]["category"] for k in keys])
            cb = np.array([tb[k]["response"] == tb[k]["category"] for k in keys])
            out[(a, b)] = error_consistency(ca, cb)
    return out


def accuracy_by_condition(trials: Mapping[str, dict]) -> dict[str, float]:
    """Accuracy per condition of one observer's trials ({image_key: trial})."""
    hits: dict[str, list[bool]] = {}
    for t in trials.values():
        hits.setdefault(t["condition"], []).append(t["response"] == t["category"])
    return {c: float(np.mean(v)) for c, v in hits.items()}


def plot_error_consistency(names: Sequence[str], matrix: np.ndarray,
                           groups: Mapping[str, str], path: str, title: str = "") -> None:
    """002 Fig. 2: the observer x observer kappa matrix ordered by group, plus group means.

    Left: heatmap with group boundaries; right: mean kappa (+- std over pairs) for every group
    pair (e.g. hum-hum, hum-sup, sup-self-sup).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(names)), key=lambda i: list(dict.fromkeys(
        groups[n] for n in names)).index(groups[names[i]]))
    m = matrix[np.ix_(order, order)]
    ordered = [names[i] for i in order]
    summary = group_consistency(names, matrix, groups)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    im = ax1.imshow(m, vmin=-0.2, vmax=1.0, cmap="magma")
    ax1.set_xticks(range(len(ordered)), ordered, rotation=90, fontsize=5)
    ax1.set_yticks(range(len(ordered)), ordered, fontsize=5)
    boundaries = [i for i in range(1, len(ordered))
                  if groups[ordered[i]] != groups[ordered[i - 1]]]
    for b in boundaries:
        ax1.axhline(b - 0.5, color="white", linewidth=1)
        ax1.axvline(b - 0.5, color="white", linewidth=1)
    fig.colorbar(im, ax=ax1, fraction=0.046, label="error consistency (kappa)")
    labels = [f"{a}-{b}" for a, b in summary]
    ax2.errorbar(range(len(summary)), [v["mean"] for v in summary.values()],
                 yerr=[v["std"] for v in summary.values()], fmt="D", capsize=3)
    ax2.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax2.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax2.set_ylabel("mean kappa over observer pairs")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
