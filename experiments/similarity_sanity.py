"""python experiments/similarity_sanity.py --outdir runs/similarity_sanity

Kornblith et al. 2019's sanity check (their Table 2) on the built-in dataset: train several
Plain-10 CNNs (ssl_jax.models "plain10") from different seeds, supervised, on
`shapes_textures/small32`; capture every conv layer's activations on the first --examples test
images (global-average-pooled, so every layer has far fewer features than examples and the CCA
family is well-posed); then, for each similarity index, report the fraction of (layer, ordered
pair of different networks) for which the most similar layer of the other network is the
corresponding one. Writes OUTDIR/sanity.json, OUTDIR/sanity.md and OUTDIR/sanity.png.
Re-running skips networks whose training finished (OUTDIR/seed_K/final_metrics.json).
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
import types
from typing import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
import numpy as np  # noqa: E402

MODEL = "plain10"

# Kornblith et al. 2019, Table 2 (Plain-10 CNNs on CIFAR-10, 10 seeds), for comparison only.
# The published RBF CKA row uses sigma = 0.4 x median distance, whatever --rbf_thresholds is.
PUBLISHED = {"linear_cka": 0.993, "rbf_cka": 0.991, "mean_cca": 0.014, "svcca": 0.099,
             "pwcca": 0.111}


def published(name: str) -> float:
    """Published fraction for a metric name such as "rbf_cka_0.5" (family "rbf_cka"); NaN if none."""
    family = "rbf_cka" if name.startswith("rbf_cka") else name
    return PUBLISHED.get(family, float("nan"))


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/similarity_sanity", None, flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_string("dataset", "shapes_textures/small32", None, flag_values=FLAGS)
flags.DEFINE_integer("seeds", 5, "number of networks (seeds 0..K-1), >= 2", flag_values=FLAGS)
flags.DEFINE_float("epochs", 15.0,
                   "training epochs per network (15: 97-99% test accuracy on small32)",
                   flag_values=FLAGS)
flags.DEFINE_float("width", 0.25, "Plain-10 width (1.0: 64-128-256)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, None, flag_values=FLAGS)
flags.DEFINE_integer("examples", 500,
                     "test images for similarity (RBF CKA costs O(n^2) per layer pair)",
                     flag_values=FLAGS)
flags.DEFINE_enum("activations", "gap", ["gap", "flatten"],
                  "conv layers -> [n, C] (gap) or [n, H*W*C] (flatten; CCA needs n > H*W*C)",
                  flag_values=FLAGS)
flags.DEFINE_string("rbf_thresholds", "0.5",
                    "comma-separated RBF CKA bandwidths (x median distance)", flag_values=FLAGS)
flags.DEFINE_float("svcca_keep", 0.99, None, flag_values=FLAGS)


def parse_args(argv=None) -> types.SimpleNamespace:
    args = errors.parse_script_flags(FLAGS, argv, doc=__doc__)
    if args.seeds < 2:
        raise errors.UserError(f"--seeds must be >= 2 (pairs of different networks), got "
                               f"{args.seeds} (see similarity_sanity.py --help)")
    if args.examples < 4:
        raise errors.UserError(f"--examples must be >= 4, got {args.examples}"
                               " (see similarity_sanity.py --help)")
    if args.epochs <= 0:
        raise errors.UserError(f"--epochs must be > 0, got {args.epochs}"
                               " (see similarity_sanity.py --help)")
    return args


def metric_functions(rbf_thresholds: list[float], svcca_keep: float
                     ) -> dict[str, tuple[Callable, bool]]:
    """{name: (fn(x [n, p1], y [n, p2]) -> scalar, symmetric)}. Symmetric indices are computed
    once per unordered network pair; PWCCA weights by the narrower layer, so both orders."""
    from ssl_jax import similarity as sim
    out: dict[str, tuple[Callable, bool]] = {"linear_cka": (sim.linear_cka, True)}
    for t in rbf_thresholds:
        out[f"rbf_cka_{t:g}"] = (lambda x, y, t=t: sim.rbf_cka(x, y, threshold=t), True)
    out["mean_cca"] = (sim.mean_cca, True)
    out["svcca"] = (lambda x, y: sim.svcca(x, y, keep=svcca_keep), True)
    out["pwcca"] = (sim.pwcca, False)
    return out


def similarity_tensor(acts: list[list[np.ndarray]], fn: Callable, symmetric: bool,
                      desc: str) -> np.ndarray:
    """acts[a][i]: layer i of network a, [n, p_i]. Returns [M, M, L, L] with entry [a, b, i, j]
    = fn(acts[a][i], acts[b][j]) for a != b; the a == b blocks are NaN (not used)."""
    from tqdm import tqdm
    m, n_layers = len(acts), len(acts[0])
    out = np.full((m, m, n_layers, n_layers), np.nan)
    pairs = list(itertools.combinations(range(m), 2) if symmetric
                 else itertools.permutations(range(m), 2))
    for a, b in tqdm(pairs, desc=desc, leave=False):
        for i, j in itertools.product(range(n_layers), repeat=2):
            out[a, b, i, j] = float(fn(acts[a][i], acts[b][j]))
        if symmetric:
            out[b, a] = out[a, b].T
    return out


def markdown_table(accuracy: dict[str, float], per_layer: dict[str, list[float]],
                   layers: list[str]) -> list[str]:
    """Rows: metric | measured | published | per-layer fractions."""
    lines = ["| index | measured | Kornblith 2019 Table 2 | per layer (" + ", ".join(layers) + ") |",
             "|---|---|---|---|"]
    for name, acc in accuracy.items():
        ref = published(name)
        ref_cell = "-" if np.isnan(ref) else f"{100 * ref:.1f}%" + (
            " (sigma 0.4)" if name.startswith("rbf_cka") else "")
        cells = " ".join(f"{100 * v:.0f}" for v in per_layer[name])
        lines.append(f"| {name} | {100 * acc:.1f}% | {ref_cell} | {cells} |")
    return lines


def plot(accuracy: dict[str, float], sims: dict[str, np.ndarray], layers: list[str],
         path: str) -> None:
    """Measured vs published bars, and net 0 vs net 1 heatmaps of linear CKA and mean CCA."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    names = list(accuracy)
    x = np.arange(len(names))
    axes[0].bar(x - 0.2, [100 * accuracy[n] for n in names], 0.4, label="measured")
    axes[0].bar(x + 0.2, [100 * published(n) for n in names], 0.4,
                label="Kornblith 2019")
    axes[0].set_xticks(x, names, rotation=30, ha="right")
    axes[0].set_ylabel("% layers identified")
    axes[0].set_ylim(0, 105)
    axes[0].legend()
    for ax, name in zip(axes[1:], ("linear_cka", "mean_cca")):
        im = ax.imshow(sims[name][0, 1], origin="lower", cmap="magma")
        ax.set_xticks(range(len(layers)), layers, rotation=90)
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("network seed 1")
        ax.set_ylabel("network seed 0")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def test_images(builder, split: str, n: int, image_size: int, batch: int = 200
                ) -> Iterator[dict[str, np.ndarray]]:
    """The first n images of `split` in order, float [b, S, S, 3] in [0, 1], plus labels."""
    from ssl_jax.data import pipeline
    seen = 0
    for b in pipeline.eval_iterator(builder, split, batch, image_size):
        keep = min(int(b["valid"].sum()), n - seen)
        if keep <= 0:
            return
        yield {"image": b["image"][:keep].astype(np.float32) / 255.0, "label": b["label"][:keep]}
        seen += keep
    if seen < n:
        raise ValueError(f"--examples={n} but split {split!r} has only {seen} examples")


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    import jax
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from configs import supervised as supervised_cfg
    from ssl_jax import models, sharding, similarity as sim, train
    from ssl_jax.data import pipeline

    os.makedirs(args.outdir, exist_ok=True)
    # --- Train (a finished network is not retrained) ---
    t0 = time.time()
    workdirs = []
    for seed in range(args.seeds):
        c = supervised_cfg.get_config("quickstart")
        c.model.update(name=MODEL, width=args.width, cifar_stem=False)
        c.dataset.update(name=args.dataset, data_dir=args.data_dir)
        c.update(seed=seed, num_epochs=args.epochs, batch_size=args.batch_size)
        workdir = os.path.join(args.outdir, f"seed_{seed}")
        workdirs.append(workdir)
        if os.path.exists(os.path.join(workdir, "final_metrics.json")):
            print(f"== seed {seed}: trained already ({workdir}) ==", flush=True)
            continue
        print(f"== training seed {seed}: {MODEL} x{args.width}, {args.epochs} epochs ==",
              flush=True)
        train.train(c, workdir)
    train_seconds = time.time() - t0

    # --- Capture conv activations on a fixed set of test images ---
    t0 = time.time()
    mesh = sharding.make_mesh()
    # "pool" is dropped: with GAP it is exactly conv8's activation, a duplicate layer that no
    # index could tell apart from conv8.
    layers = [n for n in models.layer_names(MODEL) if n != "pool"]
    acts, test_accuracy = [], []
    for workdir in workdirs:
        config, method, state = train.load_trained(workdir, mesh)
        builder = pipeline.load_builder(config.dataset.name, config.dataset.get("data_dir"))
        variables = {"params": state.params, **state.model_state}
        images = list(test_images(builder, config.dataset.eval_split, args.examples,
                                  config.dataset.image_size))
        captured = sim.capture(method.net.apply, variables, images,
                               layers=[f"backbone/{n}" for n in layers], mode=args.activations)
        acts.append([captured[f"backbone/{n}"] for n in layers])
        logits = jax.jit(method.logits)
        correct = sum(int((np.argmax(logits(state.params, state.model_state, b["image"]), -1)
                           == b["label"]).sum()) for b in images)
        test_accuracy.append(correct / args.examples)
    capture_seconds = time.time() - t0
    print("test accuracy per seed:", ", ".join(f"{a:.3f}" for a in test_accuracy), flush=True)

    # --- Similarity of every layer pair of every network pair, and identification ---
    t0 = time.time()
    thresholds = [float(t) for t in args.rbf_thresholds.split(",") if t]
    sims, accuracy, per_layer = {}, {}, {}
    for name, (fn, symmetric) in metric_functions(thresholds, args.svcca_keep).items():
        sims[name] = similarity_tensor(acts, fn, symmetric, desc=name)
        accuracy[name], layer_acc = sim.corresponding_layer_accuracy(sims[name])
        per_layer[name] = layer_acc.tolist()
        print(f"{name}: {100 * accuracy[name]:.1f}% of layers identified", flush=True)
    similarity_seconds = time.time() - t0

    total = time.time() - t_start
    widths = [int(a.shape[1]) for a in acts[0]]
    record = dict(
        command=" ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
        args=vars(args), model=MODEL, layers=layers, features_per_layer=widths,
        test_accuracy=test_accuracy, accuracy=accuracy, per_layer_accuracy=per_layer,
        published=PUBLISHED, similarity={k: v.tolist() for k, v in sims.items()},
        seconds=dict(train=train_seconds, capture=capture_seconds,
                     similarity=similarity_seconds, total=total),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                     jax_devices=[str(d) for d in jax.devices()]))
    with open(os.path.join(args.outdir, "sanity.json"), "w") as f:
        json.dump(record, f, indent=1)
    lines = [f"# Layer identification across {args.seeds} seeds (Kornblith 2019, Table 2)", "",
             f"{MODEL} x{args.width} ({', '.join(f'{n}:{w}' for n, w in zip(layers, widths))} "
             f"features, {args.activations}), {args.epochs:g} epochs, batch {args.batch_size}, "
             f"{args.examples} `{args.dataset}` test images; test accuracy "
             + ", ".join(f"{a:.3f}" for a in test_accuracy) + ".", "",
             *markdown_table(accuracy, per_layer, layers), "",
             f"Runtime: {total:.0f} s (train {train_seconds:.0f}, capture {capture_seconds:.0f}, "
             f"similarity {similarity_seconds:.0f}); {os.cpu_count()} CPUs."]
    with open(os.path.join(args.outdir, "sanity.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(accuracy, sims, layers, os.path.join(args.outdir, "sanity.png"))
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    errors.run(main)
