"""Human accuracy per distortion level from the model-vs-human raw data (002's 12 families),
to overlay on networks' robustness curves (ssl_jax.evaluation.distortions): the raw-data
condition strings mapped to the levels of `distortions.DISTORTION_LEVELS`, and the curves pooled
over subjects and per subject."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ssl_jax.evaluation.distortions import DISTORTION_LEVELS

# Family names of the human raw-data folders (model-vs-human) -> our family names.
HUMAN_EXPERIMENT_NAMES = {
    "colour": "colour", "contrast": "contrast", "high-pass": "high_pass",
    "low-pass": "low_pass", "phase-scrambling": "phase_scrambling",
    "power-equalisation": "power_equalisation", "false-colour": "false_colour",
    "rotation": "rotation", "eidolonI": "eidolon_I", "eidolonII": "eidolon_II",
    "eidolonIII": "eidolon_III", "uniform-noise": "uniform_noise",
}
_HUMAN_NAMED_LEVELS = {
    "colour": {"cr": "colour", "bw": "greyscale"},
    "power_equalisation": {"0": "original", "pow": "equalised"},
    "false_colour": {"true": "true", "false": "false"},
}


def human_condition_level(family: str, condition: str):
    """Level in DISTORTION_LEVELS[family] of a human raw-data ``condition`` string.

    E.g. contrast 'c05' -> 0.05, eidolon 'R-C-G' (reach, 10 x coherence, grain) -> R,
    high_pass 'inf' -> inf, colour 'bw' -> 'greyscale'.
    """
    if family not in DISTORTION_LEVELS:
        raise ValueError(f"unknown distortion {family!r}; choose from {sorted(DISTORTION_LEVELS)}")
    if family in _HUMAN_NAMED_LEVELS:
        level = _HUMAN_NAMED_LEVELS[family].get(condition)
    elif family == "contrast":
        level = float(condition.lstrip("c")) / 100.0
    elif family.startswith("eidolon"):
        level = float(condition.split("-")[0])
    elif family == "rotation":
        level = int(condition)
    else:
        level = float(condition)
    if level not in DISTORTION_LEVELS[family]:
        raise ValueError(f"condition {condition!r} of {family!r} maps to {level!r}, not one of "
                         f"{DISTORTION_LEVELS[family]}")
    return level


def human_robustness_curves(root: str, families: Sequence[str] | None = None) -> dict:
    """Human accuracy per level from the model-vs-human raw CSVs under ``root``.

    Returns {family: {'levels', 'accuracy' (all subjects' trials pooled), 'n_trials',
    'per_subject': {subject: [accuracy per level]}}}, levels in DISTORTION_LEVELS order, ready
    to overlay on model curves with ``plot_robustness_curves``.
    """
    from ssl_jax.evaluation.error_consistency import load_human_trials

    wanted = set(DISTORTION_LEVELS if families is None else families)
    unknown = wanted - set(DISTORTION_LEVELS)
    if unknown:
        raise ValueError(f"unknown distortions {sorted(unknown)}; choose from "
                         f"{sorted(DISTORTION_LEVELS)}")
    out = {}
    for experiment, family in HUMAN_EXPERIMENT_NAMES.items():
        if family not in wanted:
            continue
        levels = list(DISTORTION_LEVELS[family])
        hits: dict = {lv: [] for lv in levels}
        per_subject = {}
        for subject, trials in load_human_trials(root, experiment).items():
            mine: dict = {lv: [] for lv in levels}
            for t in trials.values():
                ok = t["response"] == t["category"]
                level = human_condition_level(family, t["condition"])
                mine[level].append(ok)
                hits[level].append(ok)
            per_subject[subject] = [float(np.mean(v)) if v else float("nan")
                                    for v in mine.values()]
        out[family] = {"levels": levels,
                       "accuracy": [float(np.mean(hits[lv])) if hits[lv] else float("nan")
                                    for lv in levels],
                       "n_trials": [len(hits[lv]) for lv in levels],
                       "per_subject": per_subject}
    return out
