"""Frozen-feature evaluation of a model: features once per split, then every evaluator on them.

Used by run_eval.py's `linear` evaluator and the experiments (quickstart main job, methods
table, copy-paste), so all give the same numbers for the same checkpoint as the trainer's
`knn` and `linear_probe` evaluators.
"""
from __future__ import annotations

import numpy as np

from ssl_jax.evaluation.few_shot import few_shot


def evaluate_features(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                      test_y: np.ndarray, num_classes: int, *, knn_k: int = 200,
                      knn_temperature: float = 0.07, probe_grid: int = 45,
                      few_shot_episodes: int = 600,
                      outdir: str | None = None) -> dict[str, float]:
    """kNN, linear probe (004 protocol with a `probe_grid`-point C grid), test ECE of the probe
    (the `knn` and `linear_probe` evaluators of ssl_jax.evaluators, as the trainer runs them)
    and 5-way 5-shot ProtoNet on the test split. Accuracies in percent. `outdir`: also save
    the probe's reliability diagram (test softmax, 15 bins) as outdir/reliability.png."""
    import ml_collections

    from ssl_jax import evaluators

    splits = {"train": (train_x, train_y), "test": (test_x, test_y)}
    features = evaluators.FrozenFeatures(splits.__getitem__, "train", "test", num_classes)
    settings = ml_collections.ConfigDict({
        "knn": dict(k=knn_k, temperature=knn_temperature),
        "linear_probe": dict(probe_grid=probe_grid, calibrate=True)})
    out = evaluators.run(["knn", "linear_probe"], settings, features, outdir)
    if few_shot_episodes:
        fs = few_shot(test_x, test_y, ways=min(5, num_classes), shots=5, queries=15,
                      episodes=few_shot_episodes, seed=0)
        out["few_shot_5w5s"] = fs["mean"]
        out["few_shot_5w5s_ci95"] = fs["ci95"]
    return {k: float(v) for k, v in out.items()}


def split_features(method, state, config, mesh, data_dir: str | None = None):
    """((train_x, train_y), (test_x, test_y)): `method`'s frozen features of a trained or
    random-init `state` on `config`'s train and eval splits (the eval transform: centre
    crop at `config.dataset.eval_crop_fraction`, no augmentation)."""
    from ssl_jax import train
    from ssl_jax.data import pipeline
    builder = pipeline.load_builder(config.dataset.name, data_dir or config.dataset.get("data_dir"))
    kw = dict(global_batch_size=config.eval.batch_size, image_size=config.dataset.image_size,
              crop_fraction=config.dataset.get("eval_crop_fraction", 1.0))
    variables = (state.params, state.model_state)
    return tuple(train.extract_features(method.features, variables,
                                        pipeline.eval_iterator(builder, split, **kw), mesh)
                 for split in (config.dataset.train_split, config.dataset.eval_split))


def random_init(config, mesh, seed: int, data_dir: str | None = None):
    """(method, state): `config`'s method and network at initialisation, drawn from `seed`:
    the baseline every learned representation has to beat."""
    import jax
    from ssl_jax import train
    from ssl_jax.data import pipeline
    from ssl_jax.methods import get_method
    builder = pipeline.load_builder(config.dataset.name, data_dir or config.dataset.get("data_dir"))
    _, index_space = pipeline.split_offsets(builder, config.dataset.train_split)
    method = get_method(config.method, train.with_total_steps(config, 1, index_space))
    _, tx = train.build_optimizer(config, 1)
    init_fn, _ = train.abstract_train_state(method, tx, mesh, config.dataset.image_size)
    return method, init_fn(jax.random.key(seed))
