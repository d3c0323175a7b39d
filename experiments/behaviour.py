"""Behaviour of SSL vs supervised: python experiments/behaviour.py --outdir runs/behaviour

Trains supervised, SimCLR and BYOL (--methods picks others, e.g. supervised,simclr,moco) on the
built-in dataset with texture tied to the class in 50% of train (`shapes_textures/texture32`,
generated locally on first use; `--dataset shapes_textures/biased32` ties texture and background
in 90%) with the project's trainer and configs (configs/*.py, variant
`quickstart`, budget via --override, e.g. num_epochs=2), then for every network:
- a linear head fitted on frozen train features (attention_report.fit_linear_head), which makes
  the decisions of every method comparable (self-supervised ones have no classifier);
- test accuracy of that head (test split: texture and background independent of the class);
- shape bias on the cue_conflict split (ssl_jax.evaluation.shape_bias; shape = `label`,
  texture = `texture_class`);
- uniform-noise and contrast robustness curves (ssl_jax.evaluation.distortions);
- attention maps and their localisation IoU with the true masks (run_eval's attention evaluator's
  report, ssl_jax.evaluation.attention_report) on --attention_examples test images.
Writes OUTDIR/behaviour.md, behaviour.json, robustness_{uniform_noise,contrast}.png and
OUTDIR/<method>/attention.*.
Re-running resumes unfinished training; finished runs are evaluated again, not retrained.
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

from ssl_jax import xla_flags  # noqa: E402
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/behaviour", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("dataset", "shapes_textures/texture32", None, flag_values=FLAGS)
flags.DEFINE_string("methods", "supervised,simclr,byol",
                    "comma-separated CONFIG[:ARG=VALUE[;ARG=VALUE]] (configs/CONFIG.py), "
                    "e.g. byol:epochs=12", flag_values=FLAGS)
flags.DEFINE_string("variant", "quickstart", "config variant (smoke for a check)",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("override", [],
                          "KEY=VALUE applied to every training config, e.g. num_epochs=2",
                          flag_values=FLAGS)
flags.DEFINE_integer("eval_examples", 2000,
                     "test / cue-conflict examples used for accuracy, robustness, shape bias",
                     flag_values=FLAGS)
flags.DEFINE_integer("attention_examples", 256, None, flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def write_report(outdir: str, dataset: str, results: dict, timings: dict) -> list[str]:
    from ssl_jax.evaluation import behaviour
    from ssl_jax.evaluation.shape_bias import plot_shape_bias

    with open(os.path.join(outdir, "behaviour.json"), "w") as f:
        json.dump({"dataset": dataset, "results": results, "timings": timings}, f, indent=2)
    lines = [f"# Behaviour on `{dataset}`", "",
             "Linear head on frozen train features for every network; test split has texture "
             "and background independent of the class.", ""]
    lines += behaviour.markdown_lines(results)
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
              "", "Curves: `robustness_<family>.png`; shape bias per shape class: "
              "`shape_bias_per_category.png`; attention overlays: `<network>/attention.png`."]
    with open(os.path.join(outdir, "behaviour.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    behaviour.plot_robustness(results, outdir)
    plot_shape_bias({n: r["shape_bias_per_category"] for n, r in results.items()},
                    os.path.join(outdir, "shape_bias_per_category.png"),
                    title=f"shape bias per shape class on `{dataset}` cue_conflict")
    return lines


def main():
    args = parse_args()
    from configs.common import apply_override, config_from_spec

    configs = {}  # built first: a bad --methods / --override fails before the heavy imports
    for spec in args.methods.split(","):
        try:
            name, c = config_from_spec(spec, args.variant)
        except ValueError as e:
            raise errors.UserError(f"--methods: {e}") from None
        c.dataset.name, c.dataset.data_dir = args.dataset, args.data_dir
        for item in args.override:
            apply_override(c, item)
        configs[name] = c
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.data import pipeline
    from ssl_jax.evaluation import behaviour

    os.makedirs(args.outdir, exist_ok=True)
    timings = {}
    for name, config in configs.items():
        t0 = time.time()
        print(f"== training {name} on {args.dataset} ==", flush=True)
        train.train(config, os.path.join(args.outdir, name))
        timings[f"train_{name}"] = time.time() - t0

    mesh = sharding.make_mesh()
    builder = pipeline.load_builder(args.dataset, args.data_dir)
    data = {s: behaviour.load_split(builder, s, args.eval_examples)
            for s in ("test", "cue_conflict")}
    results = {}
    for name, config in configs.items():
        t0 = time.time()
        _, method, state = train.load_trained(os.path.join(args.outdir, name), mesh)
        batch_size = config.dataset.get("eval_batch_size", 256)
        feats, labels = train.extract_features(
            method.features, (state.params, state.model_state),
            pipeline.eval_iterator(builder, config.dataset.train_split,
                                   global_batch_size=batch_size,
                                   image_size=config.dataset.image_size, crop_fraction=1.0), mesh)
        results[name] = behaviour.evaluate_behaviour(
            method, state, feats, labels, config.dataset.num_classes, data,
            os.path.join(args.outdir, name), title=name,
            attention_examples=args.attention_examples, batch_size=batch_size)
        timings[f"eval_{name}"] = time.time() - t0
        print(f"{name}: test acc {results[name]['test_accuracy']:.3f}, shape bias "
              f"{results[name]['shape_bias']:.3f}", flush=True)
    print("\n".join(write_report(args.outdir, args.dataset, results, timings)))


if __name__ == "__main__":
    errors.run(main)
