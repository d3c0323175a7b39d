"""Evaluators on frozen features: linear probe, weighted kNN, few-shot ProtoNet, calibration,
per-layer probes, confusion structure and nearest-neighbour retrieval.

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
from ssl_jax.evaluation.confusion import (
    block_diagonal_fraction,
    class_differences,
    confusion_matrix,
    imagenet_grouping,
    per_class_accuracy,
    plot_binarised_confusions,
    plot_confusion,
    shapes_textures_grouping,
    topk_confusion_counts,
    within_group_top5_error_fraction,
)
from ssl_jax.evaluation.few_shot import few_shot, sample_episodes
from ssl_jax.evaluation.knn import knn
from ssl_jax.evaluation.linear_probe import fit_logistic_regression, linear_probe, linear_probe_sgd
from ssl_jax.evaluation.per_layer import per_layer_probe, plot_per_layer
from ssl_jax.evaluation.retrieval import nearest_neighbours, plot_retrieval_grid

__all__ = [
    "block_diagonal_fraction",
    "class_differences",
    "confusion_matrix",
    "expected_calibration_error",
    "few_shot",
    "fit_logistic_regression",
    "imagenet_grouping",
    "knn",
    "linear_probe",
    "linear_probe_sgd",
    "nearest_neighbours",
    "per_class_accuracy",
    "per_layer_probe",
    "plot_binarised_confusions",
    "plot_confusion",
    "plot_per_layer",
    "plot_retrieval_grid",
    "reliability_diagram",
    "sample_episodes",
    "shapes_textures_grouping",
    "temperature_scale",
    "temperature_scaled_ece",
    "topk_confusion_counts",
    "within_group_top5_error_fraction",
]
