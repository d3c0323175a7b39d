"""Evaluators chosen by name: the same ones run during training and after it.

An evaluator is a module `ssl_jax/evaluators/<name>.py` with one entry point,

    evaluate(features: FrozenFeatures, settings, outdir: str | None = None) -> dict[str, float]

over a network's frozen features on a dataset's train and eval splits (`FrozenFeatures`,
extracted on first use, so evaluators run together share one forward pass per split) and its
settings (a ConfigDict: `config.evals.<name>` for the trainer); with `outdir` it may also
write figures there. Metrics are flat {name: float}; accuracies in percent.

The trainer runs every evaluator of `config.evals` whose `every_steps` > 0 at each multiple of
it and at the end of the run, logging what it returns to metrics.jsonl and TensorBoard. To add
an evaluator: one new module here plus its name in EVALUATORS (and, to run it while training,
an entry in configs/common.py's `evals`).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import numpy as np

EVALUATORS = ("knn", "linear_probe")

Split = tuple[np.ndarray, np.ndarray]  # (features [N, D] float32, labels [N])


@dataclasses.dataclass
class FrozenFeatures:
    """A network's frozen features on a train and an eval split. `extract(split)` computes
    (features, labels) of one split; each split is extracted at most once."""
    extract: Callable[[str], Split]
    train_split: str
    eval_split: str
    num_classes: int
    _done: dict[str, Split] = dataclasses.field(default_factory=dict, repr=False)

    def split(self, name: str) -> Split:
        if name not in self._done:
            self._done[name] = self.extract(name)
        return self._done[name]

    def train(self) -> Split:
        return self.split(self.train_split)

    def test(self) -> Split:
        return self.split(self.eval_split)


def get_evaluator(name: str):
    """The evaluator module `name` (its `evaluate` is the entry point)."""
    if name not in EVALUATORS:
        raise ValueError(f"unknown evaluator {name!r}; valid: {', '.join(EVALUATORS)}")
    return importlib.import_module(f"ssl_jax.evaluators.{name}")


def check_evals(evals) -> None:
    """Fail at start-up, not at the first evaluation, on an unknown evaluator name."""
    for name in evals:
        get_evaluator(name)


def due(evals, step: int, is_last: bool) -> list[str]:
    """Names of the evaluators of `evals` ({name: settings with every_steps}) to run after
    `step`: those with every_steps > 0 at its multiples and at the last step."""
    return [name for name, settings in evals.items()
            if settings.every_steps and (step % settings.every_steps == 0 or is_last)]


def run(names, evals, features: FrozenFeatures, outdir: str | None = None) -> dict[str, float]:
    """Every evaluator of `names` with its settings from `evals`, metrics merged."""
    metrics: dict[str, float] = {}
    for name in names:
        metrics.update(get_evaluator(name).evaluate(features, evals[name], outdir))
    return metrics
