"""Metric writers (JSON lines + TensorBoard), and the NaN guard."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Mapping

import jax

from ssl_jax.errors import UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """A diverged run: an expected failure (one line at the command line, ssl_jax.errors)."""


def check_finite(step: int, metrics: Mapping[str, float],
                 hint: Callable[[], str] | None = None) -> None:
    """Raise before anything is checkpointed when a metric (loss, gradient norm, norm of the
    updated parameters) is NaN/inf. `hint()` says what to do next (one line)."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        what = hint() if hint else ("lower the learning rate or set "
                                    "optimizer.clip_grad_norm, then resume")
        raise NonFiniteLossError(
            f"non-finite metrics at step {step}: {bad}; no checkpoint was written for this "
            f"step; {what}")


class MetricWriter:
    """Appends `{"step": s, "time": t, **metrics}` to `metrics.jsonl` and mirrors scalars to
    TensorBoard event files in the same directory. Only process 0 writes."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            from tensorboardX import SummaryWriter  # imported lazily: slow import
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
