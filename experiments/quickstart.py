"""Main job: python experiments/quickstart.py --outdir runs/quickstart

Trains SimCLR, BYOL, MoCo v2 and a supervised baseline on the built-in dataset
(`shapes_textures/small32`, generated locally on first use), each at its config's `quickstart`
budget, then evaluates frozen features of each and of a random-init network of the same
architecture (kNN, linear probe, few-shot, ECE) and their behaviour (002: shape bias on the
cue-conflict split, uniform-noise and contrast robustness, attention-map localisation IoU;
ssl_jax.evaluation.behaviour), and writes OUTDIR/report.md, OUTDIR/report.json,
OUTDIR/report.png, OUTDIR/robustness_*.png and OUTDIR/<run>/attention.*. `--runs` picks the runs (any `configs/NAME.py` with its config args, e.g.
`--runs simclr,simclr:version=2,moco:version=1,insdis,supervised`). Re-running resumes unfinished
training from its checkpoints; finished runs are evaluated again, not retrained.
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/quickstart", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("variant", "quickstart", "config variant (smoke for a check)",
                    flag_values=FLAGS)
flags.DEFINE_string("runs", "simclr,byol,moco,supervised",
                    "comma-separated CONFIG[:ARG=VALUE[;ARG=VALUE]] (configs/CONFIG.py), e.g. "
                    "moco:version=1; the first self-supervised run's architecture is the "
                    "random-init baseline's", flag_values=FLAGS)
flags.DEFINE_integer("probe_grid", 9, "points of the linear-probe C grid", flag_values=FLAGS)
flags.DEFINE_integer("few_shot_episodes", 600, None, flag_values=FLAGS)
flags.DEFINE_integer("behaviour_examples", 1000,
                     "test and cue-conflict examples for shape bias and robustness",
                     flag_values=FLAGS)
flags.DEFINE_integer("attention_examples", 128, None, flag_values=FLAGS)
flags.DEFINE_multi_string("override", [],
                          "KEY=VALUE applied to both training configs, e.g. num_epochs=4",
                          flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def build_configs(args) -> dict:
    """{run name: config} from --variant, --runs, --data_dir and --override; every bad value is
    a ValueError naming its flag. Needs no JAX: runs before the heavy imports and before
    anything is written."""
    from configs.common import VARIANTS, apply_override, config_from_spec

    if args.variant not in VARIANTS:
        raise errors.UserError(f"--variant {args.variant!r} is unknown; valid: "
                               f"{', '.join(VARIANTS)}")
    try:
        configs = dict(config_from_spec(spec, args.variant) for spec in args.runs.split(","))
    except ValueError as e:  # unknown config or config arg: one line, naming the flag
        raise errors.UserError(f"--runs: {e}") from None
    for c in configs.values():
        c.dataset.data_dir = args.data_dir
        for item in args.override:
            apply_override(c, item)
    return configs


def main():
    args = parse_args()
    configs = build_configs(args)
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.data import pipeline
    from ssl_jax.evaluation.frozen import evaluate_features, random_init, split_features

    os.makedirs(args.outdir, exist_ok=True)

    # --- Train (resumes if interrupted) ---
    timings = {}
    for name, config in configs.items():
        t0 = time.time()
        print(f"== training {name} ({config.model.name} x{config.model.width}, "
              f"{config.num_epochs} epochs, batch {config.batch_size}) ==", flush=True)
        train.train(config, os.path.join(args.outdir, name))
        timings[f"train_{name}_seconds"] = time.time() - t0

    # --- Evaluate frozen features ---
    mesh = sharding.make_mesh()
    base = next(iter(configs.values()))
    models = {"random-init": random_init(base, mesh, base.seed + 1, args.data_dir)}
    for name in configs:
        _, method, state = train.load_trained(os.path.join(args.outdir, name), mesh)
        models[name] = (method, state)

    results, train_features = {}, {}
    for name, (method, state) in models.items():
        t0 = time.time()
        (trx, try_), (tex, tey) = split_features(method, state, base, mesh, args.data_dir)
        train_features[name] = (trx, try_)  # the behaviour section's linear head is fitted on them
        results[name] = evaluate_features(
            trx, try_, tex, tey, base.dataset.num_classes, knn_k=base.evals.knn.k,
            knn_temperature=base.evals.knn.temperature, probe_grid=args.probe_grid,
            few_shot_episodes=args.few_shot_episodes)
        timings[f"eval_{name}_seconds"] = time.time() - t0
        print(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in results[name].items()),
              flush=True)

    # --- Behaviour (002): the same networks through a linear head fitted on train features ---
    from ssl_jax.evaluation import behaviour
    builder = pipeline.load_builder(base.dataset.name, args.data_dir)
    data = {s: behaviour.load_split(builder, s, args.behaviour_examples)
            for s in ("test", "cue_conflict")}
    behaviours = {}
    for name, (method, state) in models.items():
        t0 = time.time()
        behaviours[name] = behaviour.evaluate_behaviour(
            method, state, *train_features[name], base.dataset.num_classes, data,
            os.path.join(args.outdir, name), title=name, attention_examples=args.attention_examples,
            batch_size=base.eval.batch_size)
        timings[f"behaviour_{name}_seconds"] = time.time() - t0
        print(f"{name}: shape bias {behaviours[name]['shape_bias']:.3f}", flush=True)

    write_report(args.outdir, configs, results, behaviours, timings)


def write_report(outdir, configs, results, behaviours, timings):
    import jax
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssl_jax.data import pipeline
    from ssl_jax.evaluation import behaviour

    base = next(iter(configs.values()))
    builder = pipeline.load_builder(base.dataset.name, base.dataset.data_dir)
    summary = {"dataset": base.dataset.name, "model": f"{base.model.name} width {base.model.width}",
               "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
               "results": results, "behaviour": behaviours, "timings": timings,
               "configs": {k: c.to_dict() for k, c in configs.items()}}
    with open(os.path.join(outdir, "report.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)

    cols = [("knn_top1", "kNN top-1 %"), ("linear_top1", "linear top-1 %"),
            ("linear_mean_per_class", "linear mean/class %"), ("linear_ece", "linear ECE"),
            ("few_shot_5w5s", "5-way 5-shot %")]
    lines = ["# ssl_jax quickstart report", "",
             f"Dataset `{base.dataset.name}` (test split: texture and background independent of "
             f"class), backbone {summary['model']}, on {summary['device']}.", "",
             "| features | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, r in results.items():
        cells = [f"{r[k]:.2f}" if k in r and "ece" not in k else
                 (f"{r[k]:.3f}" if k in r else "-") for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Training: " + ", ".join(
        f"{n} {c.num_steps or c.num_epochs} {'steps' if c.num_steps else 'epochs'} at batch {c.batch_size} "
        f"({timings.get(f'train_{n}_seconds', 0) / 60:.1f} min)" for n, c in configs.items()),
        "", "Curves: `report.png`; TensorBoard: `tensorboard --logdir " + outdir + "`.", "",
        "## Behaviour (002)", "",
        "A linear head fitted on each network's frozen train features decides; shape bias on "
        "the `cue_conflict` split (shape of one class, texture of another), robustness on the "
        "test split, localisation IoU of attention maps with the true masks. "
        f"`{base.dataset.name}`'s train split ties texture to the class with probability "
        f"{getattr(builder.builder_config, 'texture_correlation', '?')} (background: "
        f"{getattr(builder.builder_config, 'background_correlation', '?')}); "
        "`experiments/behaviour.py` runs the comparison with texture shortcuts in training "
        "(docs/BEHAVIOUR.md).", ""]
    lines += behaviour.markdown_lines(behaviours)
    lines += ["", "Curves: `robustness_uniform_noise.png`, `robustness_contrast.png`; attention "
              "overlays: `<run>/attention.png`.", "",
              "## The papers' comparisons, at larger scale", "",
              "- 002, all twelve distortion families, error consistency between networks on "
              "cue-conflict, silhouette and edge stimuli, collapse under noise: "
              "`python experiments/behaviour.py` (docs/BEHAVIOUR.md).",
              "- 001, layer-by-layer CKA between methods and between seeds: "
              "`python experiments/similarity_methods.py` (docs/SIMILARITY.md).", ""]
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write("\n".join(lines))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in configs:
        path = os.path.join(outdir, name, "metrics.jsonl")
        steps, losses = [], []
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if "loss" in rec:
                    steps.append(rec["step"])
                    losses.append(rec["loss"])
        axes[0].plot(steps, losses, label=name)
    axes[0].set(xlabel="step", ylabel="training loss", title="Training loss")
    axes[0].legend()
    names = list(results)
    x = range(len(names))
    for i, (key, label) in enumerate(cols[:2]):
        axes[1].bar([j + 0.4 * i for j in x], [results[n][key] for n in names], width=0.4,
                    label=label)
    axes[1].set_xticks([j + 0.2 for j in x], names)
    axes[1].set(ylabel="accuracy %", title="Frozen-feature accuracy (test split)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "report.png"), dpi=100)
    behaviour.plot_robustness(behaviours, outdir)
    print("\n".join(lines))
    print(f"report written to {outdir}/report.md")


if __name__ == "__main__":
    errors.run(main)
