"""Step-matched methods table: python experiments/methods_table.py --outdir runs/methods_table

Trains every method (default: SimCLR v1/v2, BYOL, MoCo v1/v2, InsDis, supervised) on the
built-in data at its `quickstart` config, all for the same number of optimizer steps
(`--steps`, default 1248, twice SimCLR's quickstart budget, where every method clears random init
by >= 15 points, docs/METHODS.md; 0 keeps each config's own budget), for each seed in `--seeds`,
with the trainer's
periodic kNN evaluation switched on; then scores the frozen backbone features of every run and
of a random-init network per seed, as initialised and with its BatchNorm statistics estimated
on the train split (`frozen.recalibrate_batch_stats`), by weighted kNN and the linear probe on
the test split; writes OUTDIR/methods_table.{md,json} and OUTDIR/knn_curves.png (each method's
kNN top-1 over training, mean over seeds, the two random inits as horizontal lines). Re-running resumes unfinished runs
and reuses finished evaluations (OUTDIR/<run>/eval.json).

`--override KEY=VALUE` (repeatable) applies to every run's config, e.g.
`--override dataset.name=shapes_textures/small32`.
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

DEFAULT_RUNS = "simclr,simclr:version=2,byol,moco,moco:version=1,insdis,supervised"
RANDOM_BN = "random-init, BN stats from data"


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/methods_table", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("runs", DEFAULT_RUNS,
                    "comma-separated CONFIG[:ARG=VALUE[;ARG=VALUE]] (configs/CONFIG.py)",
                    flag_values=FLAGS)
flags.DEFINE_string("seeds", "0,1", "comma-separated training seeds", flag_values=FLAGS)
flags.DEFINE_integer("steps", 1248, "optimizer steps for every run (default: 1248, twice SimCLR's "
                     "quickstart budget; 0: each config's own)", flag_values=FLAGS)
flags.DEFINE_integer("knn_evals", 8,
                     "kNN evaluations during each run (the curves in knn_curves.png)",
                     flag_values=FLAGS)
flags.DEFINE_integer("probe_grid", 9, "points of the linear-probe C grid", flag_values=FLAGS)
flags.DEFINE_multi_string("override", [],
                          "KEY=VALUE applied to every run's config, e.g. dataset.name=...",
                          flag_values=FLAGS)


def parse_args(argv=None):
    return errors.parse_script_flags(FLAGS, argv, doc=__doc__)


def run_configs(args) -> dict[str, object]:
    """{run dir name: config} for every (run spec, seed)."""
    from configs.common import apply_override, config_from_spec
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise errors.UserError(f"--seeds {args.seeds!r}: expected comma-separated integers, "
                               "e.g. 0,1") from None
    out = {}
    for spec in args.runs.split(","):
        for seed in seeds:
            try:
                name, config = config_from_spec(spec, "quickstart")
            except ValueError as e:
                raise errors.UserError(f"--runs: {e}") from None
            config.seed = seed
            config.dataset.data_dir = args.data_dir
            for item in args.override:
                apply_override(config, item)
            if args.steps:
                config.num_steps = args.steps
            out[f"{name}-s{seed}"] = (name, config)
    return out


def knn_curve(workdir: str) -> tuple[list[int], list[float]]:
    """(steps, kNN top-1 %) logged by the trainer's periodic evaluation."""
    steps, accs = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "knn_top1" in rec:
                steps.append(rec["step"])
                accs.append(rec["knn_top1"])
    return steps, accs


def summarise(values: list[float]) -> tuple[float, float]:
    import numpy as np
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def main(argv=None):
    args = parse_args(argv)
    runs = run_configs(args)  # before the heavy imports: a bad flag fails in a second
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.evaluation.frozen import (evaluate_features, random_init,
                                          recalibrate_batch_stats, split_features)

    os.makedirs(args.outdir, exist_ok=True)
    mesh = sharding.make_mesh()

    def evaluate(config, method, state) -> dict[str, float]:
        (trx, try_), (tex, tey) = split_features(method, state, config, mesh)
        return evaluate_features(trx, try_, tex, tey, config.dataset.num_classes,
                                 knn_k=config.evals.knn.k,
                                 knn_temperature=config.evals.knn.temperature,
                                 probe_grid=args.probe_grid, few_shot_episodes=0)

    results: dict[str, dict] = {}
    for run, (name, config) in runs.items():
        workdir = os.path.join(args.outdir, run)
        cached = os.path.join(workdir, "eval.json")
        if os.path.exists(cached):
            with open(cached) as f:
                results[run] = json.load(f)
            continue
        from ssl_jax.data import pipeline
        builder = pipeline.load_builder(config.dataset.name, args.data_dir)
        steps = train.total_steps(config, pipeline.num_examples(builder, config.dataset.train_split))
        config.evals.knn.every_steps = max(1, steps // max(1, args.knn_evals))
        print(f"== {run}: {config.method}, {steps} steps at batch {config.batch_size}, "
              f"{config.dataset.name}, {config.model.name} x{config.model.width} "
              f"(cifar_stem={config.model.cifar_stem}) ==", flush=True)
        t0 = time.time()
        train.train(config, workdir)
        seconds = time.time() - t0
        _, method, state = train.load_trained(workdir, mesh)
        res = dict(evaluate(config, method, state), method=name, seed=config.seed, steps=steps,
                   train_seconds=seconds)
        with open(cached, "w") as f:
            json.dump(res, f, indent=2)
        results[run] = res
        print(f"{run}: linear {res['linear_top1']:.2f}  kNN {res['knn_top1']:.2f}", flush=True)

    # Random init: the first run's architecture, one network per seed, as initialised (its
    # BatchNorms are the identity in eval mode) and with its BatchNorm statistics estimated
    # on the train split (what normalisation alone does to random features).
    base_name, base = next(iter(runs.values()))
    for seed in (int(s) for s in args.seeds.split(",")):
        method, state = None, None
        for label, recalibrate in (("random-init", False), (RANDOM_BN, True)):
            run = f"{label}-s{seed}"
            cached = os.path.join(args.outdir, f"{run}.json")
            if os.path.exists(cached):
                with open(cached) as f:
                    results[run] = json.load(f)
                continue
            if state is None:
                method, state = random_init(base, mesh, seed + 1000, args.data_dir)
            scored = recalibrate_batch_stats(base, state, args.data_dir) if recalibrate else state
            results[run] = dict(evaluate(base, method, scored), method=label, seed=seed)
            with open(cached, "w") as f:
                json.dump(results[run], f, indent=2)

    write_table(args, runs, results)


def write_table(args, runs, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, list[dict]] = {}
    for res in results.values():
        methods.setdefault(res["method"], []).append(res)
    random_linear, _ = summarise([r["linear_top1"] for r in methods["random-init"]])
    random_knn, _ = summarise([r["knn_top1"] for r in methods["random-init"]])
    _, base = next(iter(runs.values()))
    lines = ["# Step-matched methods table", "",
             f"`{base.dataset.name}`, {base.model.name} width {base.model.width} "
             f"(cifar_stem={base.model.cifar_stem}), seeds {args.seeds}; "
             f"frozen backbone features on the test split. Command: `python "
             f"experiments/methods_table.py {' '.join(sys.argv[1:])}`.", "",
             "| features | steps | linear top-1 % (mean +- sd) | kNN top-1 % (mean +- sd) | "
             "linear - random init | per seed (linear) | train min / run |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for name, rows in methods.items():
        lin, lin_sd = summarise([r["linear_top1"] for r in rows])
        knn, knn_sd = summarise([r["knn_top1"] for r in rows])
        steps = rows[0].get("steps", "-")
        minutes = (f"{sum(r['train_seconds'] for r in rows) / len(rows) / 60:.1f}"
                   if "train_seconds" in rows[0] else "-")
        summary[name] = dict(linear_mean=lin, linear_sd=lin_sd, knn_mean=knn, knn_sd=knn_sd,
                             linear_gain=lin - random_linear, seeds=len(rows))
        gain = "-" if name == "random-init" else f"{lin - random_linear:+.2f}"
        per_seed = " / ".join(f"{r['linear_top1']:.2f}" for r in rows)
        lines.append(f"| {name} | {steps} | {lin:.2f} +- {lin_sd:.2f} | {knn:.2f} +- "
                     f"{knn_sd:.2f} | {gain} | {per_seed} | {minutes} |")
    with open(os.path.join(args.outdir, "methods_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.outdir, "methods_table.json"), "w") as f:
        json.dump({"summary": summary, "runs": results,
                   "configs": {r: c.to_dict() for r, (_, c) in runs.items()}}, f, indent=2,
                  default=str)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list] = {}
    for run, (name, _) in runs.items():
        curves.setdefault(name, []).append(knn_curve(os.path.join(args.outdir, run)))
    for name, per_seed in curves.items():
        n = min(len(s) for s, _ in per_seed)
        steps = per_seed[0][0][:n]
        mean = [sum(a[i] for _, a in per_seed) / len(per_seed) for i in range(n)]
        ax.plot(steps, mean, marker="o", ms=3, label=name)
    ax.axhline(random_knn, color="k", ls="--", lw=1, label="random init")
    if RANDOM_BN in methods:
        ax.axhline(summarise([r["knn_top1"] for r in methods[RANDOM_BN]])[0], color="k", ls=":",
                   lw=1, label=RANDOM_BN)
    ax.set(xlabel="optimizer step", ylabel="kNN top-1 % (test split)",
           title=f"kNN accuracy over training ({base.dataset.name})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "knn_curves.png"), dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    errors.run(main)
