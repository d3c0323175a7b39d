"""Main job: python experiments/pretext_progress.py --outdir runs/pretext_progress

Epstein et al. (000) figure 2 in miniature: train one pretext task (rotation by default) on
AlexNet-BN at the quickstart budget (`configs/<task>.py:quickstart`), checkpointing every
`--checkpoint_every` steps; pick the checkpoints whose pretext accuracy is closest to 20, 40,
60, 80 and 100% of the way from chance to the final pretext accuracy; fit per-layer linear
probes (004 protocol, `--probe_grid` C values, global-average-pooled conv1..conv5 or ResNet
stages) on each of them and on the random initialisation; report the best layer's linear
accuracy against pretext accuracy and their Pearson correlation.
Writes OUTDIR/progress_report.md, OUTDIR/progress_report.json, OUTDIR/pretext_progress.png
(OUTDIR may be experiments/pretext_tasks.py's: the training run is then shared), and with
`--docs docs/PRETEXT.md` replaces that file's `pretext_progress` section (and copies the PNG to
docs/images/). Re-running reuses finished training (it resumes an unfinished one).

Pretext accuracy of a checkpoint: the mean of the logged training-batch `pretext_accuracy`
over the `--smooth` logged steps up to it (each checkpoint's own step is in its meta too).
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
import jax  # noqa: E402
import numpy as np  # noqa: E402

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
SECTION = "pretext_progress"


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/pretext_progress", None, flag_values=FLAGS)
flags.DEFINE_enum("task", "rotation", ["rotation", "jigsaw", "counting", "colorization"], None,
                  flag_values=FLAGS)
flags.DEFINE_string("model", "alexnet_bn", "alexnet_bn | resnet18 | resnet50", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("variant", "quickstart", "config variant (smoke for a check)",
                    flag_values=FLAGS)
flags.DEFINE_integer("checkpoint_every", 20, None, flag_values=FLAGS)
flags.DEFINE_integer("smooth", 5, "logged steps averaged per checkpoint", flag_values=FLAGS)
flags.DEFINE_integer("probe_grid", 9, "points of the linear-probe C grid", flag_values=FLAGS)
flags.DEFINE_string("docs", "", "Markdown file whose section to replace", flag_values=FLAGS)
flags.DEFINE_multi_string("override", [],
                          "KEY=VALUE applied to the training config, e.g. num_steps=200",
                          flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


# ---------------------------------------------------------------------------------------------
# Pieces shared with experiments/pretext_tasks.py
# ---------------------------------------------------------------------------------------------

def task_config(task: str, model: str, variant: str, data_dir, overrides=()):
    from configs.common import apply_override

    config = importlib.import_module(f"configs.{task}").get_config(f"{variant},model={model}")
    config.dataset.data_dir = data_dir
    for item in overrides:
        apply_override(config, item)
    return config


def train_once(config, workdir: str) -> float:
    """Train (or resume) unless the final checkpoint exists; returns the seconds spent."""
    from ssl_jax import train
    from ssl_jax.data import pipeline

    builder = pipeline.load_builder(config.dataset.name, config.dataset.data_dir)
    steps = train.total_steps(config, pipeline.num_examples(builder, config.dataset.train_split))
    if os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
        return 0.0
    t0 = time.time()
    print(f"== training {config.method} on {config.model.name} x{config.model.width} "
          f"({steps} steps, batch {config.batch_size}) -> {workdir} ==", flush=True)
    train.train(config, workdir)
    return time.time() - t0


def logged(workdir: str, key: str = "pretext_accuracy") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in the run's metrics.jsonl (last value per step)."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if key in r:
                rows[r["step"]] = r[key]
    steps = np.array(sorted(rows))
    return steps, np.array([rows[s] for s in steps])


def smoothed_at(workdir: str, step: int, smooth: int, key: str = "pretext_accuracy") -> float:
    """Mean of `key` over the last `smooth` logged steps <= `step`."""
    steps, values = logged(workdir, key)
    return float(values[steps <= step][-smooth:].mean())


def probe_layers(method, state, config, mesh, probe_grid: int, progress: bool = True
                 ) -> dict[str, dict[str, float]]:
    """Per-layer linear probes (the per_layer evaluator: default layers, global average
    pooling) of a method's network at `state` on the config's dataset."""
    import ml_collections

    from ssl_jax import evaluators
    from ssl_jax.data import pipeline

    builder = pipeline.load_builder(config.dataset.name, config.dataset.data_dir)
    inputs = evaluators.EvalInputs.from_network(
        evaluators.network_of_run(config, method, state, label=config.method),
        evaluators.data_of_run(config, builder), mesh)
    settings = ml_collections.ConfigDict(dict(layers="", pooling="gap", probe_grid=probe_grid,
                                              progress=progress))
    return evaluators.get_evaluator("per_layer").evaluate(inputs, settings)["layers"]


def random_init_state(method, config, mesh):
    from ssl_jax import train

    _, tx = train.build_optimizer(config, 1)
    init_fn, _ = train.abstract_train_state(method, tx, mesh, config.dataset.image_size)
    return init_fn(jax.random.key(config.seed))


def best_layer(per_layer: dict) -> tuple[str, float]:
    name = max(per_layer, key=lambda n: per_layer[n]["top1"])
    return name, per_layer[name]["top1"]


def replace_section(path: str, name: str, text: str) -> None:
    """Replace the lines between `<!-- name:begin -->` and `<!-- name:end -->` in `path`
    (appending the marked section when absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def machine() -> str:
    return f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores"


# ---------------------------------------------------------------------------------------------
# This experiment
# ---------------------------------------------------------------------------------------------

def pick_checkpoints(ckpt_steps, accs, chance: float, fractions=FRACTIONS) -> list[int]:
    """For each fraction f, the checkpoint step whose accuracy is closest to
    chance + f * (final - chance) (final = the last checkpoint's); duplicates dropped."""
    accs = np.asarray(accs)
    final = accs[-1]
    picked = []
    for f in fractions:
        target = chance + f * (final - chance)
        step = int(ckpt_steps[int(np.argmin(np.abs(accs - target)))])
        if step not in picked:
            picked.append(step)
    return picked


def main():
    args = parse_args()
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from scipy import stats

    from ssl_jax import sharding, train
    from ssl_jax.methods import get_method

    os.makedirs(args.outdir, exist_ok=True)
    config = task_config(args.task, args.model, args.variant, args.data_dir,
                         [f"checkpoint_every={args.checkpoint_every}", "keep_checkpoints=1000",
                          *args.override])
    workdir = os.path.join(args.outdir, f"{args.task}_{args.model}")
    train_seconds = train_once(config, workdir)

    from ssl_jax import checkpointing
    manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), keep=None,
                                         save_every=1, async_save=False,
                                         read_only=True)
    ckpt_steps = sorted(manager.all_steps())
    manager.close()
    accs = [smoothed_at(workdir, s, args.smooth) for s in ckpt_steps]
    chance = smoothed_at(workdir, ckpt_steps[-1], 1, "pretext_chance")
    picked = pick_checkpoints(ckpt_steps, accs, chance)
    print(f"checkpoints {ckpt_steps[0]}..{ckpt_steps[-1]}; picked {picked}", flush=True)

    mesh = sharding.make_mesh()
    method = get_method(config.method, train.with_total_steps(config, ckpt_steps[-1]))
    rows = []
    t0 = time.time()
    state0 = random_init_state(method, config, mesh)
    rows.append({"step": 0, "pretext_accuracy": None,
                 "layers": probe_layers(method, state0, config,
                                        mesh, args.probe_grid)})
    for step in picked:
        _, method, state = train.load_trained(workdir, mesh, step=step)
        rows.append({"step": step,
                     "pretext_accuracy": accs[ckpt_steps.index(step)],
                     "layers": probe_layers(method, state, config,
                                            mesh, args.probe_grid)})
        print(f"step {step}: pretext {rows[-1]['pretext_accuracy']:.3f}, best layer "
              f"{best_layer(rows[-1]['layers'])}", flush=True)
    probe_seconds = time.time() - t0
    trained = [r for r in rows if r["pretext_accuracy"] is not None]
    xs = [r["pretext_accuracy"] for r in trained]
    ys = [best_layer(r["layers"])[1] for r in trained]
    r_value = float(stats.pearsonr(xs, ys)[0]) if len(set(xs)) > 1 and len(xs) > 2 else None

    summary = {"task": args.task, "model": f"{config.model.name} x{config.model.width}",
               "dataset": f"{config.dataset.name} at {config.dataset.image_size} px",
               "machine": machine(), "train_seconds": train_seconds,
               "probe_seconds": probe_seconds, "chance": chance,
               "checkpoints": dict(zip(map(int, ckpt_steps), accs)), "picked": picked,
               "rows": rows, "pearson_r": r_value, "config": config.to_dict()}
    # progress_* names: the outdir may be experiments/pretext_tasks.py's too (shared runs).
    with open(os.path.join(args.outdir, "progress_report.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    text = report(summary, config, args)
    with open(os.path.join(args.outdir, "progress_report.md"), "w") as f:
        f.write(text)
    png = os.path.join(args.outdir, "pretext_progress.png")
    plot(summary, png)
    if args.docs:
        images = os.path.join(os.path.dirname(args.docs), "images")
        os.makedirs(images, exist_ok=True)
        shutil.copy(png, os.path.join(images, f"pretext_progress_{args.task}_{args.model}.png"))
        replace_section(args.docs, SECTION, text.replace(
            "pretext_progress.png", f"images/pretext_progress_{args.task}_{args.model}.png"))
    print(text)


def report(summary: dict, config, args) -> str:
    layers = list(summary["rows"][0]["layers"])
    lines = [
        f"Task **{summary['task']}** on {summary['model']}, `{summary['dataset']}`, "
        f"{config.num_steps} steps at batch {config.batch_size} "
        f"(`configs/{summary['task']}.py:{args.variant},model={args.model}`), checkpoint every "
        f"{args.checkpoint_every} steps; chance {100 * summary['chance']:.1f}%. Machine: "
        f"{summary['machine']}; training " + (
            f"{summary['train_seconds'] / 60:.1f} min" if summary["train_seconds"] else
            "reused (finished run found in the outdir)") + ", probes "
        + f"{summary['probe_seconds'] / 60:.1f} min (1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end).",
        "",
        "Command: `python experiments/pretext_progress.py --task " + summary["task"] +
        f" --model {args.model} --outdir {args.outdir}" +
        (f" --docs {args.docs}" if args.docs else "") + "`",
        "",
        "| checkpoint | pretext acc % | progress | " + " | ".join(layers) +
        " | best layer | best linear % |",
        "|---|---|---|" + "---|" * len(layers) + "---|---|"]
    final = list(summary["checkpoints"].values())[-1]
    for r in summary["rows"]:
        name, best = best_layer(r["layers"])
        acc = r["pretext_accuracy"]
        prog = ("random init" if acc is None else
                f"{100 * (acc - summary['chance']) / max(final - summary['chance'], 1e-9):.0f}%")
        lines.append(f"| step {r['step']} | {'-' if acc is None else f'{100 * acc:.1f}'} | "
                     f"{prog} | " + " | ".join(f"{r['layers'][n]['top1']:.1f}" for n in layers)
                     + f" | {name} | {best:.1f} |")
    r_value = summary["pearson_r"]
    lines += ["", "Pearson r (pretext accuracy vs best-layer linear accuracy, the trained "
              f"checkpoints): **{'n/a' if r_value is None else f'{r_value:.3f}'}** "
              f"(n = {len(summary['rows']) - 1}).", "",
              "Progress = (pretext accuracy - chance) / (final - chance). Linear accuracy: "
              "test top-1 of the 004-protocol probe on global-average-pooled activations.", "",
              "![pretext progress](pretext_progress.png)", ""]
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = summary["rows"]
    trained = [r for r in rows if r["pretext_accuracy"] is not None]
    axes[0].plot([100 * r["pretext_accuracy"] for r in trained],
                 [best_layer(r["layers"])[1] for r in trained], "o-")
    for r in trained:
        axes[0].annotate(f"step {r['step']}", (100 * r["pretext_accuracy"],
                                               best_layer(r["layers"])[1]), fontsize=7)
    axes[0].axhline(best_layer(rows[0]["layers"])[1], color="gray", ls="--", label="random init")
    r_value = summary["pearson_r"]
    axes[0].set(xlabel="pretext accuracy %", ylabel="best-layer linear accuracy %",
                title=f"{summary['task']}, {summary['model']}: Pearson r = "
                      f"{'n/a' if r_value is None else f'{r_value:.2f}'}")
    axes[0].legend()
    layers = list(rows[0]["layers"])
    for r in rows:
        label = "random init" if r["pretext_accuracy"] is None else f"step {r['step']}"
        axes[1].plot(range(len(layers)), [r["layers"][n]["top1"] for n in layers], marker="o",
                     label=label)
    axes[1].set_xticks(range(len(layers)), layers)
    axes[1].set(xlabel="layer", ylabel="linear accuracy %", title="per-layer linear probes")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    errors.run(main)
