"""kNN evaluator: weighted cosine k-nearest neighbours of the eval split among the train split
(settings `k`, `temperature`); reports `knn_top1` (percent)."""
from __future__ import annotations

from ssl_jax.evaluation.knn import knn


def evaluate(inputs, settings, outdir: str | None = None) -> dict[str, float]:
    del outdir  # no figures
    (train_x, train_y), (test_x, test_y) = inputs.train(), inputs.test()
    result = knn(train_x, train_y, test_x, test_y, k=settings.k,
                 temperature=settings.temperature, num_classes=inputs.num_classes)
    return {"knn_top1": result["top1"]}
