"""Linear evaluator (run_eval's configs/eval/linear.py): on frozen final features, weighted kNN
(`knn_k`, `knn_temperature`), the 004 linear probe (`probe_grid`) with its test ECE raw and
temperature-scaled, and 5-way 5-shot ProtoNet (`few_shot_episodes`, 0 to skip); with an
`outdir`, the probe's reliability diagram (reliability.png)."""
from __future__ import annotations

from ssl_jax.evaluation.frozen import evaluate_features


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    (train_x, train_y), (test_x, test_y) = inputs.train(), inputs.test()
    return evaluate_features(train_x, train_y, test_x, test_y, inputs.num_classes,
                             knn_k=settings.knn_k, knn_temperature=settings.knn_temperature,
                             probe_grid=settings.probe_grid,
                             few_shot_episodes=settings.few_shot_episodes, outdir=outdir)


def markdown(metrics: dict, settings) -> list[str]:
    del settings
    return ["Reliability diagram of the linear probe (test split, 15 bins): "
            "`reliability.png`.", "", "| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.4g} |" for k, v in metrics.items()]
