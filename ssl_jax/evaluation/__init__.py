"""Evaluators on frozen features: linear probe, weighted kNN, few-shot ProtoNet, calibration.

All take features as arrays (numpy or jax, possibly sharded on the batch axis) and return
plain dicts of Python floats; accuracies are in percent, ECE is a fraction in [0, 1].
Note: the names ``linear_probe``, ``knn`` and ``few_shot`` here are the evaluator functions;
import helpers from their modules, e.g. ``from ssl_jax.evaluation.linear_probe import c_grid``.
"""
from ssl_jax.evaluation.calibration import (
    expected_calibration_error,
    reliability_diagram,
    temperature_scale,
    temperature_scaled_ece,
)
from ssl_jax.evaluation.few_shot import few_shot, sample_episodes
from ssl_jax.evaluation.knn import knn
from ssl_jax.evaluation.linear_probe import fit_logistic_regression, linear_probe, linear_probe_sgd

__all__ = [
    "expected_calibration_error",
    "few_shot",
    "fit_logistic_regression",
    "knn",
    "linear_probe",
    "linear_probe_sgd",
    "reliability_diagram",
    "sample_episodes",
    "temperature_scale",
    "temperature_scaled_ece",
]
