"""python experiments/copy_paste.py --outdir runs/copy_paste

Does copy-paste background augmentation (003) help when backgrounds are a shortcut? On
`shapes_textures/biased32` (background style tied to the class in 90% of train; test split
independent of the class), MoCo v2 (configs/moco.py:quickstart, standard ResNet stem) is
trained without copy-paste, with copy-paste on RBD masks (ssl_jax/data/saliency.py, computed
once for the train split) and with copy-paste on the dataset's true masks, for each of
`--seeds`; then a linear probe on frozen features (train split -> test split,
ssl_jax.evaluation.frozen.evaluate_features), plus a "shape probe" fit and scored on halves
of the test split (see `shape_probe`). Writes OUTDIR/copy_paste.json and
OUTDIR/copy_paste.md (mean and spread over seeds). Re-running resumes unfinished training and
only re-evaluates finished runs.
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
import jax  # noqa: E402
import numpy as np  # noqa: E402

CONDITIONS = {"none": None, "rbd": "rbd", "true_masks": "ground_truth"}


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/copy_paste", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("dataset", "shapes_textures/biased32", None, flag_values=FLAGS)
flags.DEFINE_enum("method", "moco", ["moco", "insdis", "simclr", "byol"], None, flag_values=FLAGS)
flags.DEFINE_string("seeds", "0,1", None, flag_values=FLAGS)
flags.DEFINE_string("conditions", ",".join(CONDITIONS),
                    f"comma-separated subset of {tuple(CONDITIONS)}", flag_values=FLAGS)
flags.DEFINE_float("epochs", 6.0, None, flag_values=FLAGS)
flags.DEFINE_float("prob", 0.3, "copy-paste probability per view", flag_values=FLAGS)
flags.DEFINE_integer("probe_grid", 9, "points of the linear-probe C grid", flag_values=FLAGS)
flags.DEFINE_multi_string("override", [],
                          "KEY=VALUE applied to every training config, e.g. batch_size=128",
                          flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def run_config(args, condition: str, seed: int):
    import importlib

    from configs.common import apply_override
    c = importlib.import_module(f"configs.{args.method}").get_config("quickstart")
    c.seed = seed
    c.num_epochs = args.epochs
    c.model.cifar_stem = False  # ~8x faster on CPU than the CIFAR stem at 32 px
    c.dataset.name = args.dataset
    c.dataset.data_dir = args.data_dir
    masks = CONDITIONS[condition]
    if masks:
        c.augment.copy_paste.update(prob=args.prob, masks=masks)
    for item in args.override:
        apply_override(c, item)
    return c


def shape_probe(x: np.ndarray, y: np.ndarray, num_classes: int, grid: int) -> float:
    """Linear probe fit on one half of the TEST split and scored on the other (both ways,
    averaged). The test split's texture and background are independent of the class, so
    unlike the train -> test probe this one cannot lean on a shortcut the probe itself
    learned from the biased train split: it asks whether the features hold shape at all."""
    from ssl_jax.evaluation.linear_probe import linear_probe
    order = np.random.default_rng(0).permutation(len(y))
    a, b = order[: len(y) // 2], order[len(y) // 2:]
    return float(np.mean([linear_probe(x[i], y[i], x[j], y[j], num_grid=grid,
                                       num_classes=num_classes)["top1"]
                          for i, j in ((a, b), (b, a))]))


def summarise(results: dict) -> dict:
    out = {}
    for condition, per_seed in results.items():
        acc = np.array([r["linear_top1"] for r in per_seed.values()])
        knn = np.array([r["knn_top1"] for r in per_seed.values()])
        shape = np.array([r["shape_probe_top1"] for r in per_seed.values()])
        out[condition] = {"linear_mean": float(acc.mean()), "linear_std": float(acc.std(ddof=1))
                          if len(acc) > 1 else 0.0, "linear_min": float(acc.min()),
                          "linear_max": float(acc.max()), "knn_mean": float(knn.mean()),
                          "shape_probe_mean": float(shape.mean()),
                          "shape_probe_std": float(shape.std(ddof=1)) if len(shape) > 1 else 0.0,
                          "seeds": len(acc)}
    return out


def main():
    args = parse_args()
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.evaluation.frozen import evaluate_features, random_init, split_features

    conditions = args.conditions.split(",")
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"unknown condition(s) {bad}; valid: {tuple(CONDITIONS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.outdir, exist_ok=True)
    mesh = sharding.make_mesh()

    def evaluate(config, method, state) -> dict[str, float]:
        (trx, try_), (tex, tey) = split_features(method, state, config, mesh, args.data_dir)
        out = evaluate_features(trx, try_, tex, tey, config.dataset.num_classes,
                                knn_k=config.evals.knn.k, knn_temperature=config.evals.knn.temperature,
                                probe_grid=args.probe_grid, few_shot_episodes=0)
        out["shape_probe_top1"] = shape_probe(tex, tey, config.dataset.num_classes,
                                              args.probe_grid)
        return out

    # Reference row: the same backbone untrained (what "beats chance" means on this data).
    base = run_config(args, "none", seeds[0])
    results, timings = {"random_init": {seeds[0]: evaluate(
        base, *random_init(base, mesh, base.seed + 1, args.data_dir))}}, {}
    print(f"random init: linear {results['random_init'][seeds[0]]['linear_top1']:.2f}%",
          flush=True)
    for condition in conditions:
        results[condition] = {}
        for seed in seeds:
            config = run_config(args, condition, seed)
            workdir = os.path.join(args.outdir, f"{condition}_seed{seed}")
            print(f"== {condition}, seed {seed}: {config.method} "
                  f"{config.num_steps or config.num_epochs} {'steps' if config.num_steps else 'epochs'} on "
                  f"{config.dataset.name} ==", flush=True)
            t0 = time.time()
            # A finished run (final_metrics.json is written last) is only re-evaluated.
            if not os.path.exists(os.path.join(workdir, "final_metrics.json")):
                train.train(config, workdir)
                timings[f"train_{condition}_seed{seed}_s"] = time.time() - t0
            t0 = time.time()
            _, method, state = train.load_trained(workdir, mesh)
            res = evaluate(config, method, state)
            timings[f"eval_{condition}_seed{seed}_s"] = time.time() - t0
            results[condition][seed] = res
            print(f"{condition} seed {seed}: linear {res['linear_top1']:.2f}%, "
                  f"kNN {res['knn_top1']:.2f}%", flush=True)

    summary = summarise(results)
    report = {"dataset": args.dataset, "method": args.method, "epochs": args.epochs,
              "copy_paste_prob": args.prob, "seeds": seeds, "overrides": args.override,
              "results": {c: {str(s): r for s, r in v.items()} for c, v in results.items()},
              "summary": summary, "timings_s": timings, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg(),
              "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}
    with open(os.path.join(args.outdir, "copy_paste.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    lines = [f"{args.method} {args.epochs:g} epochs on `{args.dataset}`, copy-paste p = "
             f"{args.prob} per view, seeds {seeds}; linear probe train -> test (%).", "",
             "| copy-paste masks | linear top-1 mean | std | min..max | kNN top-1 mean "
             "| shape probe (test halves) mean | std |", "|---|---|---|---|---|---|---|"]
    for condition, s in summary.items():
        lines.append(f"| {condition} | {s['linear_mean']:.2f} | {s['linear_std']:.2f} | "
                     f"{s['linear_min']:.2f}..{s['linear_max']:.2f} | {s['knn_mean']:.2f} | "
                     f"{s['shape_probe_mean']:.2f} | {s['shape_probe_std']:.2f} |")
    with open(os.path.join(args.outdir, "copy_paste.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    errors.run(main)
