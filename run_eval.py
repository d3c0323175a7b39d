"""Evaluate trained models: python run_eval.py --config configs/eval/EVALUATOR.py[:ARGS] --config.checkpoint=DIR --outdir OUT

    python run_eval.py --config configs/eval/linear.py --config.checkpoint=runs/quickstart/simclr \
        --outdir runs/eval/simclr_linear
    python run_eval.py --config configs/eval/per_layer.py:dataset=shapes_textures/small32 \
        --config.checkpoint=runs/quickstart/simclr --outdir runs/eval/simclr_layers

Evaluators (ssl_jax/evaluators/<name>.py, the same modules the trainer runs; one config file
each, see its docstring): linear (kNN, 004 linear probe, ECE,
few-shot), per_layer (linear probe per named layer), confusion (hierarchically ordered
confusion matrix, within-group top-5 errors, class differences vs a reference), retrieval
(cosine nearest-neighbour grid), similarity (layer-by-layer CKA between two checkpoints),
attention (Grad-CAM, Guided Grad-CAM, saliency through a linear head, feature-space occlusion;
localisation against the built-in dataset's masks).
Every run writes OUTDIR/metrics.json, its PNG figures and OUTDIR/report.md. Features are
extracted once per (checkpoint, dataset, split, layer, pooling, resolution) and cached in
OUTDIR/feature_cache (or --config.cache_dir), so a second run on them skips the forward passes.
`--config.checkpoint` is a run_train workdir or a converted zoo checkpoint directory.
"""
from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax import errors  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Evaluator config, e.g. configs/eval/linear.py.",
                                lock_config=True)
flags.DEFINE_string("outdir", None, "Where metrics.json, figures and report.md are written.")
flags.mark_flags_as_required(["config", "outdir"])
FLAGS = flags.FLAGS


def check_config(config) -> None:
    """What can be checked without JAX or TensorFlow (a bad command fails in a second): the
    evaluator, and that every checkpoint directory named exists."""
    from ssl_jax import evaluators

    evaluators.check_name(config.evaluator)
    if not config.checkpoint:
        raise ValueError("--config.checkpoint is required (a run_train workdir or a converted "
                         "checkpoint directory)")
    for key in ("checkpoint", "checkpoint_b", "reference"):
        path = config.get(key)
        if path and not os.path.isdir(path):
            raise FileNotFoundError(f"--config.{key}={path}: no such directory; pass a "
                                    "run_train workdir or a converted checkpoint directory")


def run(config, outdir: str) -> dict:
    """Runs the evaluator `config.evaluator` (ssl_jax/evaluators) on `config.checkpoint`;
    writes OUTDIR/metrics.json, its figures and report.md; returns the metrics.json record."""
    check_config(config)
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX
    from ssl_jax import evaluators, sharding

    mesh = sharding.make_mesh()
    network = evaluators.load_network(config.checkpoint, config.image_size, mesh)
    data = evaluators.open_data(config, network)
    os.makedirs(outdir, exist_ok=True)
    inputs = evaluators.EvalInputs.from_network(
        network, data, mesh, cache_dir=config.cache_dir or os.path.join(outdir, "feature_cache"),
        progress=config.progress)
    metrics = evaluators.get_evaluator(config.evaluator).evaluate(inputs, config, outdir)
    record = {"evaluator": config.evaluator, "checkpoint": os.path.abspath(config.checkpoint),
              "source": network.describe, "dataset": data.name, "splits": list(data.splits),
              "config": config.to_dict(), "feature_cache_hits": inputs.cache_hits,
              "metrics": metrics}
    with open(os.path.join(outdir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    lines = [f"# {config.evaluator} evaluation of `{config.checkpoint}`", "",
             f"{network.describe}; `{data.name}` {data.train_split} -> {data.eval_split}. "
             f"Metrics: `metrics.json`.", ""]
    lines += evaluators.markdown(config.evaluator, metrics, config)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


def main():
    # Flags and the config file are checked before JAX and TensorFlow are imported (seconds).
    errors.parse_flags(FLAGS, sys.argv, module=__name__)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every restore step at INFO
    run(FLAGS.config, FLAGS.outdir)


def cli():
    """Console entry point (`ssl-jax-eval`): main() under the one-line error policy."""
    errors.run(main)


if __name__ == "__main__":
    cli()
