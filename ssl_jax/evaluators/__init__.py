"""Evaluators chosen by name: the same ones run during training and after it (run_eval.py).

An evaluator is a module `ssl_jax/evaluators/<name>.py` with one entry point,

    evaluate(inputs: EvalInputs, settings, outdir: str | None = None) -> dict

over a network's frozen features on a dataset's train and eval splits and, where it needs
them, the network and dataset themselves (`EvalInputs`, ssl_jax/evaluators/inputs.py: each
split's features are extracted once, so evaluators run together share one forward pass per
split), with its settings (a ConfigDict: `config.evals.<name>` for the trainer, the
configs/eval/<name>.py config for run_eval). With an `outdir` it also writes its figures
there. It returns its metrics: numbers (accuracies in percent) and, for run_eval's
metrics.json, any JSON-able detail. A module may define `markdown(metrics, settings) ->
list[str]`, the lines of its section of run_eval's report.md; without one, the report is a
table of the numeric metrics.

The trainer runs every evaluator of `config.evals` whose `every_steps` > 0 at each multiple of
it and at the end of the run, logging its numeric metrics to metrics.jsonl and TensorBoard. To
add an evaluator: one new module here plus its name in EVALUATORS (to run it while training,
an entry in configs/common.py's `evals`; to run it with run_eval, a configs/eval/ file).
"""
from __future__ import annotations

import importlib
import numbers

from ssl_jax.evaluators.inputs import (  # noqa: F401  (the evaluators' API)
    EvalData, EvalInputs, Network, data_of_run, load_network, network_of_run, open_data)

EVALUATORS = ("knn", "linear_probe", "linear", "per_layer", "confusion", "retrieval",
              "similarity", "attention", "task_quality")


def get_evaluator(name: str):
    """The evaluator module `name` (its `evaluate` is the entry point)."""
    check_name(name)
    return importlib.import_module(f"ssl_jax.evaluators.{name}")


def check_name(name: str) -> None:
    """Fail on an unknown name without importing anything heavy."""
    if name not in EVALUATORS:
        raise ValueError(f"unknown evaluator {name!r}; valid: {', '.join(EVALUATORS)}")


def check_evals(evals) -> None:
    """Fail at start-up, not at the first evaluation, on an unknown evaluator name."""
    for name in evals:
        check_name(name)


def due(evals, step: int, is_last: bool) -> list[str]:
    """Names of the evaluators of `evals` ({name: settings with every_steps}) to run after
    `step`: those with every_steps > 0 at its multiples and at the last step."""
    return [name for name, settings in evals.items()
            if settings.every_steps and (step % settings.every_steps == 0 or is_last)]


def run(names, evals, inputs: EvalInputs, outdir: str | None = None) -> dict:
    """Every evaluator of `names` with its settings from `evals`, metrics merged."""
    metrics: dict = {}
    for name in names:
        metrics.update(get_evaluator(name).evaluate(inputs, evals[name], outdir))
    return metrics


def scalars(metrics: dict) -> dict[str, float]:
    """The numeric metrics (what the trainer logs), as floats."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def markdown(name: str, metrics: dict, settings) -> list[str]:
    """The report.md section of evaluator `name`'s `metrics`."""
    module = get_evaluator(name)
    if hasattr(module, "markdown"):
        return module.markdown(metrics, settings)
    return ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.4g} |" for k, v in scalars(metrics).items()]
