"""Frozen-feature evaluation of a model: features once per split, then every evaluator on them.

Used by the trainer's final report, run_eval.py and the quickstart main job, so all three give
the same numbers for the same checkpoint.
"""
from __future__ import annotations

import numpy as np

from ssl_jax.evaluation.calibration import reliability_diagram
from ssl_jax.evaluation.few_shot import few_shot
from ssl_jax.evaluation.knn import knn
from ssl_jax.evaluation.linear_probe import linear_probe


def evaluate_features(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                      test_y: np.ndarray, num_classes: int, *, knn_k: int = 200,
                      knn_temperature: float = 0.07, probe_grid: int = 45,
                      few_shot_episodes: int = 600,
                      reliability_path: str | None = None) -> dict[str, float]:
    """kNN, linear probe (004 protocol with a `probe_grid`-point C grid), test ECE of the probe
    and 5-way 5-shot ProtoNet on the test split. Accuracies in percent. `reliability_path`:
    also save the probe's reliability diagram (test softmax, 15 bins) there as a PNG."""
    out: dict[str, float] = {}
    res = knn(train_x, train_y, test_x, test_y, k=knn_k, temperature=knn_temperature,
              num_classes=num_classes)
    out["knn_top1"] = res["top1"]
    probe = linear_probe(train_x, train_y, test_x, test_y, num_grid=probe_grid,
                         num_classes=num_classes, return_logits=reliability_path is not None)
    if reliability_path is not None:
        logits = probe["test_logits"]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        reliability_diagram(probs / probs.sum(axis=1, keepdims=True), test_y, reliability_path)
    out["linear_top1"] = probe["top1"]
    out["linear_mean_per_class"] = probe["mean_per_class"]
    out["linear_best_C"] = probe["best_C"]
    for key in ("ece", "ece_temperature_scaled"):
        if key in probe:
            out[f"linear_{key}"] = probe[key]
    if few_shot_episodes:
        fs = few_shot(test_x, test_y, ways=min(5, num_classes), shots=5, queries=15,
                      episodes=few_shot_episodes, seed=0)
        out["few_shot_5w5s"] = fs["mean"]
        out["few_shot_5w5s_ci95"] = fs["ci95"]
    return {k: float(v) for k, v in out.items()}
