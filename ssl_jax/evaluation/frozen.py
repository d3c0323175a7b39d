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

    inputs = evaluators.EvalInputs.from_arrays((train_x, train_y), (test_x, test_y), num_classes)
    settings = ml_collections.ConfigDict({
        "knn": dict(k=knn_k, temperature=knn_temperature),
        "linear_probe": dict(probe_grid=probe_grid, calibrate=True)})
    out = evaluators.run(["knn", "linear_probe"], settings, inputs, outdir)
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
    from ssl_jax import evaluators
    from ssl_jax.data import pipeline
    builder = pipeline.load_builder(config.dataset.name, data_dir or config.dataset.get("data_dir"))
    inputs = evaluators.EvalInputs.from_network(
        evaluators.network_of_run(config, method, state, label=config.method),
        evaluators.data_of_run(config, builder), mesh)
    return inputs.train(), inputs.test()


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


def recalibrate_batch_stats(config, state, data_dir: str | None = None, batch_size: int = 128):
    """`state` with its backbone's BatchNorm running statistics replaced by their average over
    `config`'s train split (one pass, eval transform, train-mode BN: each batch's mean and
    biased variance, averaged over the full batches, as torch's `update_bn` does).

    Why: an untrained network's running statistics are the initial (mean 0, variance 1), so
    in eval mode its BatchNorms are the identity and its features are those of an
    unnormalised random network. Any trained network runs its BatchNorms with statistics of
    the data instead. The random network with recalibrated statistics separates what
    training learned from what normalisation alone changes. Every method here keeps its
    encoder under the `backbone` parameter subtree and feeds it `normalize(images)`."""
    import jax
    import jax.numpy as jnp
    from ssl_jax import train
    from ssl_jax.data import pipeline
    from ssl_jax.methods.common import build_backbone, normalize

    backbone = build_backbone(config)
    params = state.params["backbone"]
    initial = state.model_state["batch_stats"]["backbone"]

    @jax.jit
    def batch_statistics(images):
        """Each BatchNorm's statistics of this batch. Flax only exposes the updated running
        average m * old + (1 - m) * batch; with old = 0 and old = 1 the two results give
        m = difference and batch = result(0) / (1 - m), whatever the modules' momentum."""
        def updated(old):
            _, new = backbone.apply({"params": params, "batch_stats": old},
                                    normalize(train.to_float(images)), train=True,
                                    mutable=["batch_stats"])
            return new["batch_stats"]
        from_zero = updated(jax.tree.map(jnp.zeros_like, initial))
        from_one = updated(jax.tree.map(jnp.ones_like, initial))
        return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), from_zero, from_one)

    builder = pipeline.load_builder(config.dataset.name, data_dir or config.dataset.get("data_dir"))
    total, count = None, 0
    for batch in pipeline.eval_iterator(builder, config.dataset.train_split,
                                        global_batch_size=batch_size,
                                        image_size=config.dataset.image_size,
                                        crop_fraction=config.dataset.get("eval_crop_fraction", 1.0)):
        if not batch["valid"].all():  # the padded last batch would skew the statistics
            continue
        stats = batch_statistics(jnp.asarray(batch["image"]))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += 1
    if not count:
        raise ValueError(f"{config.dataset.train_split!r} has fewer than {batch_size} examples: "
                         "no full batch to estimate BatchNorm statistics from")
    batch_stats = {**state.model_state["batch_stats"],
                   "backbone": jax.tree.map(lambda t: t / count, total)}
    return state.replace(model_state={**state.model_state, "batch_stats": batch_stats})
