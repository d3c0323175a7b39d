"""Task-quality evaluator: a task-bank network (method `task_bank`) scored on its own task over
the eval split, beside the task's trivial baseline fitted on the train split
(ssl_jax/evaluation/task_quality.py). Settings: `baseline_examples` (train images the baseline
statistics use; 0: all). Reports `task_score`, `task_baseline` and `task_gain` (the score's
margin over the baseline, positive when the network is better, in the metric's units).
"""
from __future__ import annotations

import jax
import numpy as np

from ssl_jax.evaluation import task_quality as tq


def _task_net(inputs):
    network, _ = inputs.needs_network("task_quality")
    from ssl_jax.methods import task_bank

    if not isinstance(network.module, task_bank.TaskNet):
        raise ValueError(f"task_quality scores task-bank networks (method task_bank); this one "
                         f"is {network.name!r}")
    return network, task_bank


def _valid(batch: dict, key: str) -> np.ndarray:
    return np.asarray(batch[key])[batch["valid"]]


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    del outdir  # no figures
    network, task_bank = _task_net(inputs)
    net, task = network.module, network.module.task
    keys = task_bank.get_task(task).targets

    def targets_of(batch):
        images = _valid(batch, "image").astype(np.float32) / 255.0
        extra = {k: _valid(batch, k) for k in keys}
        return images, np.asarray(task_bank.task_targets(task, images, _valid(batch, "label"),
                                                          extra))

    # The baseline: statistics of the training targets only.
    stats = tq.TargetStats(task, net.out_channels)
    limit = settings.get("baseline_examples", 0) or None
    seen = 0
    for batch in inputs.batches(inputs.train_split, "baseline targets", limit=limit,
                                extra_keys=keys):
        _, y = targets_of(batch)
        stats.update(y)
        seen += len(y)
        if limit and seen >= limit:
            break

    predict = jax.jit(lambda variables, x, rng: task_bank.predict(net, variables, x, rng))
    preds, inputs_seen, ys = [], [], []
    for i, batch in enumerate(inputs.batches(inputs.eval_split, "task predictions",
                                             extra_keys=keys)):
        images, y = targets_of(batch)
        # A fixed key per batch: the denoising score is the same on every evaluation.
        pred, seen_x = predict(network.apply_variables, images, jax.random.key(i))
        preds.append(np.asarray(pred))
        inputs_seen.append(np.asarray(seen_x))
        ys.append(y)
    pred, y = np.concatenate(preds), np.concatenate(ys)
    hole = np.asarray(task_bank.hole_mask(network.image_size, net.hole))

    def scored(p):
        return tq.score(task, p, y, hole)

    model = scored(pred)
    baselines = {k: scored(p) for k, p in tq.baseline_predictions(task, stats, len(y)).items()}
    if task_bank.get_task(task).corruption in ("noise", "grey"):
        # Returning the corrupted input is a trivial answer too.
        baselines["input"] = scored(np.concatenate(inputs_seen))
    higher = tq.METRICS[task][2]
    baseline = (max if higher else min)(baselines.values())  # the strongest baseline counts
    return {"task_score": model, "task_baseline": baseline,
            "task_gain": model - baseline if higher else baseline - model}


def markdown(metrics: dict, settings) -> list[str]:
    del settings
    return ["| score | trivial baseline | gain |", "|---|---|---|",
            f"| {metrics['task_score']:.4g} | {metrics['task_baseline']:.4g} | "
            f"{metrics['task_gain']:.4g} |"]
