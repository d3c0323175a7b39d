"""Evaluate a trained model's frozen features:

    python run_eval.py --checkpoint runs/quickstart/simclr --outdir runs/eval_simclr

Restores the newest readable checkpoint of a run_train workdir, extracts backbone features of
the train and eval splits (sharded over all devices), then runs kNN, the linear probe (004
protocol), few-shot and calibration, and writes OUTDIR/metrics.json and OUTDIR/report.md.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ssl_jax  # noqa: E402,F401  (sets XLA:CPU flags before JAX starts)
from absl import app, flags  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A run_train workdir (config.json + checkpoints/).")
flags.DEFINE_string("outdir", None, "Where metrics.json and report.md are written.")
flags.DEFINE_string("dataset", None, "TFDS dataset to evaluate on (default: the run's own).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's own).")
flags.DEFINE_string("train_split", None, "Split the probes are fitted on (default: the run's).")
flags.DEFINE_string("eval_split", None, "Split the probes are scored on (default: the run's).")
flags.DEFINE_integer("num_classes", None, "Classes of --dataset (default: the run's).")
flags.DEFINE_integer("probe_grid", 45, "Points of the linear probe's C grid (004: 45).")
flags.DEFINE_integer("few_shot_episodes", 600, "ProtoNet episodes (0 to skip).")
flags.mark_flags_as_required(["checkpoint", "outdir"])
FLAGS = flags.FLAGS


def evaluate() -> dict:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.data import pipeline
    from ssl_jax.evaluation.frozen import evaluate_features

    mesh = sharding.make_mesh()
    config, method, state = train.load_trained(FLAGS.checkpoint, mesh)
    ds = config.dataset
    name = FLAGS.dataset or ds.name
    builder = pipeline.load_builder(name, FLAGS.data_dir or ds.data_dir)
    kw = dict(global_batch_size=config.eval.batch_size, image_size=ds.image_size,
              crop_fraction=ds.eval_crop_fraction)
    splits = (FLAGS.train_split or ds.train_split, FLAGS.eval_split or ds.eval_split)
    (trx, try_), (tex, tey) = [train.extract_features(
        method, state, pipeline.eval_iterator(builder, s, **kw), mesh) for s in splits]
    num_classes = FLAGS.num_classes or builder.info.features["label"].num_classes
    metrics = evaluate_features(trx, try_, tex, tey, num_classes, knn_k=config.eval.knn_k,
                                knn_temperature=config.eval.knn_temperature,
                                probe_grid=FLAGS.probe_grid,
                                few_shot_episodes=FLAGS.few_shot_episodes)
    os.makedirs(FLAGS.outdir, exist_ok=True)
    record = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "method": config.method,
              "model": config.model.to_dict(), "dataset": name, "splits": splits,
              "step": int(state.step), "metrics": metrics}
    with open(os.path.join(FLAGS.outdir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    lines = [f"# Evaluation of `{FLAGS.checkpoint}` (step {int(state.step)})", "",
             f"{config.method}, {config.model.name} width {config.model.width}; features of "
             f"`{name}` {splits[0]} -> {splits[1]}.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    with open(os.path.join(FLAGS.outdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


def main(argv):
    del argv
    try:
        evaluate()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
