"""Behaviour of SSL vs supervised (002 in miniature): python experiments/behaviour.py --outdir runs/behaviour

Trains supervised, SimCLR, BYOL, MoCo v2 and InsDis (--methods picks others) on the
built-in dataset with texture tied to the class in 50% of train (`shapes_textures/texture32`,
generated locally on first use; `--dataset shapes_textures/biased32` ties texture and background
in 90%) with the project's trainer and configs (configs/*.py, variant
`quickstart`, budget via --override, e.g. num_epochs=2), then for every network, and for a random-init network of the first self-supervised
method's architecture (--norandom_init leaves it out):
- a linear head fitted on frozen train features (attention_report.fit_linear_head), which makes
  the decisions of every method comparable (self-supervised ones have no classifier);
- test accuracy of that head (test split: texture and background independent of the class);
- shape bias on the cue_conflict split (ssl_jax.evaluation.shape_bias; shape = `label`,
  texture = `texture_class`);
- accuracy and per-image correctness on silhouette and edge stimuli made from the test images'
  shape masks (ssl_jax.evaluation.stimuli);
- robustness curves under 002's twelve distortion families (--families; ssl_jax.evaluation.
  distortions), with the response concentration and confusion matrices per level;
- attention maps and their localisation IoU with the true masks (run_eval's attention evaluator's
  report, ssl_jax.evaluation.attention_report) on --attention_examples test images.
Between networks: error consistency (Cohen's kappa) on the cue-conflict, silhouette and edge
stimuli, with means per group pair (supervised / self-supervised / random) and the consistency
expected by chance. Writes OUTDIR/behaviour.md, behaviour.json, robustness_all.png (the
families' panels, with the humans' curves of 002 from --human_data when present: other images),
robustness_<family>.png, confusion_uniform_noise_<network>.png, shape_bias_per_category.png and
OUTDIR/<network>/attention.*.
Re-running resumes unfinished training; finished runs are evaluated again, not retrained.
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/behaviour", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("dataset", "shapes_textures/texture32", None, flag_values=FLAGS)
flags.DEFINE_string("methods", "supervised,simclr,byol,moco,insdis",
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
flags.DEFINE_string("families", "all",
                    "comma-separated distortion families (distortions.DISTORTION_LEVELS), or all",
                    flag_values=FLAGS)
flags.DEFINE_bool("random_init", True, "also evaluate a random-init network", flag_values=FLAGS)
flags.DEFINE_string("human_data", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared",
    "data", "model-vs-human-raw"),
    "model-vs-human raw data (the humans' curves on robustness_all.png; skipped when absent)",
    flag_values=FLAGS)
flags.DEFINE_integer("edge_thickness", 2, "outline width of the edge stimuli (pixels)",
                     flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def write_report(outdir: str, dataset: str, results: dict, timings: dict,
                 class_names: list[str], human: dict | None) -> list[str]:
    from ssl_jax.evaluation import behaviour
    from ssl_jax.evaluation.shape_bias import plot_shape_bias

    with open(os.path.join(outdir, "behaviour.json"), "w") as f:
        json.dump({"dataset": dataset, "results": results, "timings": timings}, f, indent=2)
    lines = [f"# Behaviour on `{dataset}`", "",
             "Linear head on frozen train features for every network; test split has texture "
             "and background independent of the class.", ""]
    lines += behaviour.markdown_lines(results)
    if "uniform_noise" in next(iter(results.values()))["robustness"]:
        lines += [""] + behaviour.noise_collapse_lines(results)
        behaviour.plot_noise_confusions(results, class_names, outdir)
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
              "", "Curves: `robustness_all.png` (every family; "
              + ("the humans of 002 dashed, on other images" if human else
                 "no human data found") + "), `robustness_<family>.png`; confusions under "
              "uniform noise: `confusion_uniform_noise_<network>.png`; shape bias per shape "
              "class: `shape_bias_per_category.png`; attention overlays: "
              "`<network>/attention.png`."]
    with open(os.path.join(outdir, "behaviour.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    behaviour.plot_robustness(results, outdir)
    behaviour.plot_robustness_grid(results, os.path.join(outdir, "robustness_all.png"), human,
                                   title=dataset)
    plot_shape_bias({n: r["shape_bias_per_category"] for n, r in results.items()},
                    os.path.join(outdir, "shape_bias_per_category.png"),
                    title=f"shape bias per shape class on `{dataset}` cue_conflict")
    return lines


def main():
    args = parse_args()
    from configs.common import apply_override, config_from_spec
    from ssl_jax.evaluation.distortions import DISTORTION_LEVELS

    families = (list(DISTORTION_LEVELS) if args.families == "all" else
                [f for f in args.families.split(",") if f])
    unknown = [f for f in families if f not in DISTORTION_LEVELS]
    if unknown or not families:
        raise errors.UserError(f"--families: unknown {unknown or args.families!r}; valid: all, "
                               f"{', '.join(DISTORTION_LEVELS)}")

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
    from ssl_jax.evaluation import behaviour, human_robustness, stimuli
    from ssl_jax.evaluation.frozen import random_init, split_features

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
    data["silhouette"] = stimuli.stimulus_set(data["test"], "silhouette")
    data["edge"] = stimuli.stimulus_set(data["test"], "edge", args.edge_thickness)
    networks = {}
    if args.random_init:  # the first self-supervised run's architecture
        base = next((c for c in configs.values() if c.method != "supervised"),
                    next(iter(configs.values())))
        networks["random_init"] = (base, *random_init(base, mesh, base.seed + 1, args.data_dir))
    for name, config in configs.items():
        _, method, state = train.load_trained(os.path.join(args.outdir, name), mesh)
        networks[name] = (config, method, state)
    results = {}
    for name, (config, method, state) in networks.items():
        t0 = time.time()
        (feats, labels), _ = split_features(method, state, config, mesh, args.data_dir)
        results[name] = behaviour.evaluate_behaviour(
            method, state, feats, labels, config.dataset.num_classes, data,
            os.path.join(args.outdir, name), title=name,
            attention_examples=args.attention_examples,
            batch_size=config.dataset.get("eval_batch_size", 256), families=families)
        timings[f"eval_{name}"] = time.time() - t0
        print(f"{name}: test acc {results[name]['test_accuracy']:.3f}, shape bias "
              f"{results[name]['shape_bias']:.3f} ({timings[f'eval_{name}']:.0f} s)", flush=True)
    human = (human_robustness.human_robustness_curves(args.human_data, families)
             if os.path.isdir(args.human_data) else None)
    class_names = list(builder.info.features["label"].names)
    print("\n".join(write_report(args.outdir, args.dataset, results, timings, class_names,
                                  human)))


if __name__ == "__main__":
    errors.run(main)
