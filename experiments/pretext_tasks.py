"""Main job: python experiments/pretext_tasks.py --outdir runs/pretext_tasks

Every pretext task (rotation, jigsaw, counting, colorization) x backbone (alexnet_bn,
resnet18) at the quickstart budget (`configs/<task>.py:quickstart,model=<backbone>`): final
pretext accuracy (mean of the last `--smooth` logged training batches) against chance, and
the best layer's linear accuracy (per-layer 004-protocol probes on global-average-pooled
conv1..conv5 / ResNet stages, test split) against the same network at random initialisation.
Writes OUTDIR/report.md and OUTDIR/report.json; with `--docs docs/PRETEXT.md` replaces that
file's `pretext_tasks` section. Finished runs are not retrained; `--tasks` / `--models` pick a
subset (the report covers every run found in OUTDIR).
"""
from __future__ import annotations

import json
import os
import time

import pretext_progress as pp  # noqa: E402  (a sibling script: sets up env and XLA flags)
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

SECTION = "pretext_tasks"


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/pretext_tasks", None, flag_values=FLAGS)
flags.DEFINE_string("tasks", "rotation,jigsaw,counting,colorization", None, flag_values=FLAGS)
flags.DEFINE_string("models", "alexnet_bn,resnet18", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, None, flag_values=FLAGS)
flags.DEFINE_string("variant", "quickstart", None, flag_values=FLAGS)
flags.DEFINE_integer("smooth", 5, None, flag_values=FLAGS)
flags.DEFINE_integer("probe_grid", 9, None, flag_values=FLAGS)
flags.DEFINE_string("docs", "", None, flag_values=FLAGS)
flags.DEFINE_multi_string("override", [], None, flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def main():
    args = parse_args()
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train

    os.makedirs(args.outdir, exist_ok=True)
    path = os.path.join(args.outdir, "report.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    mesh = sharding.make_mesh()
    for task in args.tasks.split(","):
        for model in args.models.split(","):
            key = f"{task}_{model}"
            config = pp.task_config(task, model, args.variant, args.data_dir, args.override)
            workdir = os.path.join(args.outdir, key)
            seconds = pp.train_once(config, workdir)
            if key in results and not seconds:
                continue
            t0 = time.time()
            config, method, state = train.load_trained(workdir, mesh)
            trained = pp.probe_layers(method, state, config, mesh,
                                      args.probe_grid)
            s0 = pp.random_init_state(method, config, mesh)
            random = pp.probe_layers(method, s0, config, mesh,
                                     args.probe_grid)
            if task == "colorization":
                colorization_preview(method, state, config,
                                     os.path.join(args.outdir, f"{key}_preview.png"))
            steps, _ = pp.logged(workdir)
            results[key] = {
                "task": task, "model": f"{config.model.name} x{config.model.width}",
                "dataset": config.dataset.name,
                # Training times on a 2-core machine mean little without the load.
                "load_after_training": (os.getloadavg()[0] if seconds else
                                        results.get(key, {}).get("load_after_training")),
                "steps": int(steps[-1]), "batch_size": config.batch_size,
                "train_seconds": seconds or results.get(key, {}).get("train_seconds", 0.0),
                "probe_seconds": time.time() - t0,
                "pretext_accuracy": pp.smoothed_at(workdir, int(steps[-1]), args.smooth),
                "chance": pp.smoothed_at(workdir, int(steps[-1]), 1, "pretext_chance"),
                "trained": trained, "random_init": random, "machine": pp.machine()}
            print(f"{key}: pretext {results[key]['pretext_accuracy']:.3f} (chance "
                  f"{results[key]['chance']:.3f}), best trained {pp.best_layer(trained)}, "
                  f"best random {pp.best_layer(random)}", flush=True)
            with open(path, "w") as f:
                json.dump(results, f, indent=2)
    text = report(results, args)
    with open(os.path.join(args.outdir, "report.md"), "w") as f:
        f.write(text)
    if args.docs:
        pp.replace_section(args.docs, SECTION, text)
    print(text)


def colorization_preview(method, state, config, path: str, num: int = 8) -> None:
    """PNG grid of `num` test images: original, the L the network sees, its colourisation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ssl_jax.data import pipeline
    from ssl_jax.methods.colorization import luminance_input

    builder = pipeline.load_builder(config.dataset.name, config.dataset.data_dir)
    batch = next(iter(pipeline.eval_iterator(builder, config.dataset.eval_split, num,
                                             config.dataset.image_size)))
    images = batch["image"][:num].astype(np.float32) / 255.0
    out = np.asarray(method.colorize(state.params, state.model_state, images))
    gray = np.asarray(luminance_input(images))
    fig, axes = plt.subplots(3, num, figsize=(1.4 * num, 4.4))
    for j in range(num):
        for i, (row, name) in enumerate(((images, "input"), (gray, "gray"), (out, "colourised"))):
            axes[i, j].imshow(np.clip(row[j], 0, 1))
            axes[i, j].axis("off")
            if j == 0:
                axes[i, j].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict, args) -> str:
    lines = ["| task | backbone | dataset | steps x batch | train min | pretext acc % | chance % "
             "| best layer (trained) | linear % | best layer (random init) | linear % | "
             "gain (points) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        tn, tb = pp.best_layer(r["trained"])
        rn, rb = pp.best_layer(r["random_init"])
        lines.append(f"| {r['task']} | {r['model']} | `{r['dataset'].split('/')[-1]}` | "
                     f"{r['steps']} x {r['batch_size']} | "
                     f"{r['train_seconds'] / 60:.1f} | {100 * r['pretext_accuracy']:.1f} | "
                     f"{100 * r['chance']:.1f} | {tn} | {tb:.1f} | {rn} | {rb:.1f} | "
                     f"{tb - rb:+.1f} |")
    lines += ["", "Per-layer test top-1 (%), trained / random init:", "",
              "| run | " + " | ".join(f"L{i}" for i in range(1, 7)) + " |",
              "|---|" + "---|" * 6]
    for key, r in results.items():
        cells = [f"{n} {r['trained'][n]['top1']:.1f} / {r['random_init'][n]['top1']:.1f}"
                 for n in r["trained"]]
        lines.append(f"| {key} | " + " | ".join(cells + [""] * (6 - len(cells))) + " |")
    machines = sorted({r["machine"] for r in results.values()})
    loads = [r["load_after_training"] for r in results.values()
             if r.get("load_after_training") is not None]
    load = (f"1-minute load average after each training run {min(loads):.1f}-{max(loads):.1f}"
            if loads else "load not recorded")
    lines += ["", f"Machine: {'; '.join(machines)}; {load}. Command: "
              f"`python experiments/pretext_tasks.py --outdir {args.outdir}"
              + (f" --docs {args.docs}" if args.docs else "") + "`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from ssl_jax import host_memory
    host_memory.restart_with_huge_pages(__name__)  # huge pages (ssl_jax/host_memory.py)
    errors.run(main)
