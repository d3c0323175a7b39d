"""The evaluator registry (ssl_jax/evaluators): choice by name, schedule, shared features, and
the trainer running config.evals (that one under `-m slow`: a trainer run)."""
import json

import ml_collections
import numpy as np
import pytest

from ssl_jax import evaluators


def _evals(**every):
    return ml_collections.ConfigDict({
        "knn": dict(every_steps=every.get("knn", 0), k=5, temperature=0.07),
        "linear_probe": dict(every_steps=every.get("linear_probe", 0), probe_grid=2,
                             calibrate=False)})


def test_unknown_evaluator_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown evaluator 'knnn'; valid: knn, linear_probe, linear, per_layer"):
        evaluators.check_evals({"knnn": {}})


def test_evaluators_run_at_their_multiples_and_at_the_end():
    evals = _evals(knn=2, linear_probe=3)
    assert [evaluators.due(evals, s, s == 5) for s in range(1, 6)] == [
        [], ["knn"], ["linear_probe"], ["knn"], ["knn", "linear_probe"]]
    assert evaluators.due(_evals(), 5, True) == []  # every_steps 0: never


def test_evaluators_share_one_extraction_per_split():
    rng = np.random.default_rng(0)
    calls = []

    def extract(split):
        calls.append(split)
        y = np.arange(40) % 4
        return (rng.normal(size=(40, 6)) + 4.0 * np.eye(6)[y]).astype(np.float32), y

    features = evaluators.EvalInputs(extract, "train", "test", num_classes=4)
    metrics = evaluators.run(["knn", "linear_probe"], _evals(), features)
    assert calls == ["train", "test"]
    assert set(metrics) == {"knn_top1", "linear_top1", "linear_mean_per_class", "linear_best_C"}
    assert metrics["knn_top1"] > 90 and metrics["linear_top1"] > 90


@pytest.mark.slow  # a 2-step trainer run with both evaluators (~1 min on 2 cores)
def test_trainer_logs_the_configured_evaluators(tiny_data_dir, tmp_path):
    from configs import simclr as simclr_config
    from ssl_jax import train

    config = simclr_config.get_config("smoke")
    config.dataset.data_dir = tiny_data_dir
    config.num_steps = 2
    config.evals.knn.every_steps = 1
    config.evals.linear_probe.every_steps = 2
    final = train.train(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if "loss" not in r]
    assert [(r["step"], sorted(k for k in r if k.endswith("top1"))) for r in evals] == [
        (1, ["knn_top1"]), (2, ["knn_top1", "linear_top1"])]
    assert {"knn_top1", "linear_top1", "online_linear_top1"} <= set(final)
