"""Linear-probe evaluator: the 004 logistic-regression probe on frozen features (C picked on 20%
of the train split over a `probe_grid`-point grid, refit on all of it, scored on the eval
split). Reports linear_top1, linear_mean_per_class (percent), linear_best_C and, with
`calibrate`, the probe's test ECE raw and temperature-scaled (fractions); with an `outdir`
and `calibrate`, also its reliability diagram, outdir/reliability.png."""
from __future__ import annotations

import os

import numpy as np

from ssl_jax.evaluation.calibration import reliability_diagram
from ssl_jax.evaluation.linear_probe import linear_probe


def evaluate(inputs, settings, outdir: str | None = None) -> dict[str, float]:
    (train_x, train_y), (test_x, test_y) = inputs.train(), inputs.test()
    calibrate = bool(settings.get("calibrate", False))
    diagram = calibrate and outdir is not None
    probe = linear_probe(train_x, train_y, test_x, test_y, num_grid=settings.probe_grid,
                         num_classes=inputs.num_classes, calibrate=calibrate,
                         return_logits=diagram)
    if diagram:
        reliability_diagram(softmax(probe["test_logits"]), test_y,
                            os.path.join(outdir, "reliability.png"))
    metrics = {"linear_top1": probe["top1"], "linear_mean_per_class": probe["mean_per_class"],
               "linear_best_C": probe["best_C"]}
    for key in ("ece", "ece_temperature_scaled"):
        if key in probe:
            metrics[f"linear_{key}"] = probe[key]
    return {k: float(v) for k, v in metrics.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)
