"""001 in miniature: python experiments/similarity_methods.py --outdir runs/similarity_methods

Do self-supervised and supervised networks learn similar representations, layer by layer
(Grigg et al., paper 001)? On the built-in dataset:
- the networks: experiments/methods_table.py's runs (`--runs` x `--seeds`, the same configs and
  `--steps`), reused from `--runs_dir` where they finished training (e.g. a methods-table
  outdir; as they were trained) and trained there otherwise;
- the activations of every layer (`--layers`: "all" = the stem, each residual block's inner
  activation and output, the pool), global-average pooled, on the first `--examples` test
  images;
- full-batch linear CKA between every pair of layers of every pair of networks: within one
  method across seeds, and across methods; per pair the best-matching layer and the diagonal
  (same layer) and row-maximum curves, heatmaps for the first seed pairs;
- each layer's CKA with the one-hot labels, and with itself on augmented images, under each
  method's training augmentations (its host crop and flip, then its photometric ops) passed
  through every network;
- a linear probe (the per_layer evaluator) on each stage output of every network;
- mean CKA of the same layer between methods and between seeds over the first, middle and last
  third of the layers (all / odd = in-block / even = block outputs), with the spread over seed
  pairs: 001's finding is that methods agree early and in the middle and diverge at the end.
Writes OUTDIR/similarity_methods.{md,json} and the figures named there.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import flags  # noqa: E402

from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402

host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/similarity_methods", "reports and figures",
                    flag_values=FLAGS)
flags.DEFINE_string("runs_dir", "runs/methods_table",
                    "where the runs are (reused when trained, trained otherwise)",
                    flag_values=FLAGS)
flags.DEFINE_string("runs", "supervised,simclr,moco,byol,insdis",
                    "comma-separated CONFIG[:ARG=VALUE] as in methods_table.py", flag_values=FLAGS)
flags.DEFINE_string("seeds", "0,1", "comma-separated training seeds", flag_values=FLAGS)
flags.DEFINE_integer("steps", 1248, "optimizer steps of every run (methods_table.py's)",
                     flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("override", [], "KEY=VALUE applied to every run's config",
                          flag_values=FLAGS)
flags.DEFINE_integer("examples", 2000, "test images the CKA is computed on", flag_values=FLAGS)
flags.DEFINE_enum("layers", "all", ["all", "blocks"], "layer set (ssl_jax.similarity.compare)",
                  flag_values=FLAGS)
flags.DEFINE_integer("probe_grid", 9, "points of the per-layer probes' C grid (0: no probes)",
                     flag_values=FLAGS)

THIRDS = ("first", "middle", "last")
VIEWS = ("all", "odd", "even")


def parse_args(argv=None):
    return errors.parse_script_flags(FLAGS, argv, doc=__doc__)


def run_configs(args) -> dict:
    """{run name: (method name, config)}: methods_table.py's configs for these runs and seeds."""
    import types

    import methods_table
    return methods_table.run_configs(types.SimpleNamespace(
        runs=args.runs, seeds=args.seeds, steps=args.steps, data_dir=args.data_dir,
        override=args.override))


def is_inner(layer: str) -> bool:
    """An activation inside a residual block (001's odd layers), by its sown name
    (`.../layer1_0/relu1`)."""
    return re.search(r"_\d+/relu\d+$", layer) is not None


def short_name(layer: str) -> str:
    """'layer1_0/relu1' for an in-block activation, else the last name component."""
    parts = layer.split("/")
    return "/".join(parts[-2:]) if is_inner(layer) else parts[-1]


def view_mask(layers: list[str], view: str) -> list[bool]:
    return [view == "all" or (view == "odd") == is_inner(n) for n in layers]


def pair_kind(run_a: str, run_b: str, method_of: dict) -> str:
    """'simclr ~ simclr' (seeds of one method) or 'simclr ~ supervised' (sorted)."""
    return " ~ ".join(sorted((method_of[run_a], method_of[run_b])))


def summarise_pairs(cka: dict, layers: list[str], method_of: dict) -> dict:
    """{view: {pair kind: {"curve": mean diagonal per layer, "thirds": [[mean, sd] x 3],
    "pairs": n}}}: the same-layer CKA of every network pair, grouped by kind, its mean over
    the kind's pairs per layer, and the thirds' means with their spread over pairs."""
    from ssl_jax.similarity import compare

    out = {}
    for view in VIEWS:
        keep = np.array(view_mask(layers, view))
        kinds: dict[str, list] = {}
        for (a, b), m in cka.items():
            kinds.setdefault(pair_kind(a, b, method_of), []).append(np.diag(m)[keep])
        out[view] = {}
        for kind, diags in sorted(kinds.items()):
            per_pair = np.array([compare.thirds(d) for d in diags])  # [pairs, 3]
            sd = per_pair.std(axis=0, ddof=1) if len(diags) > 1 else np.zeros(3)
            out[view][kind] = {"curve": np.mean(diags, axis=0).tolist(), "pairs": len(diags),
                               "thirds": [[float(m), float(s)] for m, s in
                                          zip(per_pair.mean(axis=0), sd)]}
    return out


def group_of(method: str) -> str:
    return "supervised" if method.startswith("supervised") else "self-supervised"


def group_thirds(cka: dict, method_of: dict) -> dict:
    """{"seeds" | "<group> ~ <group>": {"thirds": [[mean, sd over pairs] x 3], "pairs": n}}:
    the same-layer CKA (all layers) of every network pair by third of the layers, grouped as
    two seeds of one method, or by the methods' groups (supervised / self-supervised)."""
    from ssl_jax.similarity import compare

    groups: dict[str, list] = {}
    for (a, b), m in cka.items():
        ma, mb = method_of[a], method_of[b]
        key = "seeds" if ma == mb else " ~ ".join(sorted((group_of(ma), group_of(mb))))
        groups.setdefault(key, []).append(compare.thirds(np.diag(m)))
    return {k: {"pairs": len(v), "thirds": [
        [float(np.mean(col)), float(np.std(col, ddof=1)) if len(col) > 1 else 0.0]
        for col in np.array(v).T]} for k, v in sorted(groups.items())}


def finding(groups: dict) -> list[str]:
    """Whether 001's finding holds here (`group_thirds`): self-supervised and supervised
    networks similar in the early and middle layers, diverging in the last ones. "Similar" is
    read as a mean same-layer CKA within 0.2 of two seeds of one method."""
    lines = ["Mean same-layer CKA (all layers; sd over network pairs) by third, first / middle "
             "/ last: " + "; ".join(
                 f"{k} ({v['pairs']} pairs) " + " / ".join(f"{m:.3f} ({s:.3f})"
                                                           for m, s in v["thirds"])
                 for k, v in groups.items()) + "."]
    if "self-supervised ~ supervised" not in groups or "seeds" not in groups:
        return lines + ["001's comparison needs a supervised and a self-supervised method, "
                        "each with two or more seeds."]
    gap = [s[0] - c[0] for s, c in zip(groups["seeds"]["thirds"],
                                       groups["self-supervised ~ supervised"]["thirds"])]
    if gap[0] < 0.2 and gap[1] < 0.2 and gap[2] >= 0.2:
        verdict = ("001's finding holds here: self-supervised and supervised networks are "
                   "about as similar as two seeds in the early and middle layers and diverge "
                   "in the last third.")
    elif gap[0] < 0.2 and gap[1] >= 0.2:
        verdict = ("001's finding holds only for the early layers here: self-supervised and "
                   "supervised networks agree in the first third (close to two seeds of one "
                   "method) but already diverge in the middle third, not only at the end.")
    elif gap[0] < 0.2:
        verdict = ("001's finding does not hold here: self-supervised and supervised networks "
                   "are about as similar as two seeds of one method in every third, with no "
                   "divergence at the end.")
    else:
        verdict = ("001's finding does not hold here: self-supervised and supervised networks "
                   "differ from the first third on.")
    return lines + [verdict + " (Seeds minus self-supervised ~ supervised, per third: "
                    + " / ".join(f"{g:.2f}" for g in gap) + ".)"]


def main(argv=None):
    args = parse_args(argv)
    runs = run_configs(args)  # before the heavy imports: a bad flag fails in a second
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    import jax
    from tqdm import tqdm

    from ssl_jax import evaluators, sharding, train
    from ssl_jax.data import augment, crop, pipeline
    from ssl_jax.evaluation.per_layer import plot_per_layer
    from ssl_jax.similarity import compare
    from ssl_jax.similarity.cka import linear_cka

    os.makedirs(args.outdir, exist_ok=True)
    mesh = sharding.make_mesh()
    timings = {}
    t0 = time.time()
    for run, (_, config) in runs.items():
        workdir = os.path.join(args.runs_dir, run)
        # A finished run is used as it is, whatever the config files say today (e.g. a
        # quickstart budget changed since it was trained); an unfinished one resumes.
        if not os.path.exists(os.path.join(workdir, "final_metrics.json")):
            train.train(config, workdir)
    timings["train (or reuse)"] = time.time() - t0
    method_of = {run: name for run, (name, _) in runs.items()}
    methods = list(dict.fromkeys(method_of.values()))

    # The test images (uint8, eval transform) and labels, once for every network.
    _, first = next(iter(runs.values()))
    builder = pipeline.load_builder(first.dataset.name, args.data_dir)
    images, labels = [], []
    for b in pipeline.eval_iterator(builder, first.dataset.eval_split, 250,
                                    first.dataset.image_size,
                                    crop_fraction=first.dataset.get("eval_crop_fraction", 1.0)):
        images.append(b["image"][b["valid"]])
        labels.append(b["label"][b["valid"]])
        if sum(map(len, labels)) >= args.examples:
            break
    images = np.concatenate(images)[:args.examples]
    labels = np.concatenate(labels)[:args.examples]
    onehot = np.eye(first.dataset.num_classes, dtype=np.float32)[labels]

    # Each method's training augmentation of the same images: host crop/flip, then photometric.
    t0 = time.time()
    augmented = {}
    for name in methods:
        config = next(c for r, (m, c) in runs.items() if m == name)
        preset = augment.get_preset(config.augment.preset,
                                    **dict(config.augment.get("overrides", {})))
        view = preset.views[0]
        size = config.dataset.image_size
        cropped = np.stack([crop.crop_view(tf.constant(img), tf.constant([i, 7]), size, view)
                            .numpy() for i, img in enumerate(images)])
        photometric = jax.jit(lambda key, x, view=view: augment.augment_views(key, x, view))
        augmented[name] = np.concatenate([
            np.asarray(photometric(jax.random.key(i), cropped[i:i + 250].astype(np.float32)
                                   / 255.0)) for i in range(0, len(cropped), 250)])
    timings["augment"] = time.time() - t0

    # Every network's pooled activations: clean, and under each method's augmentation.
    t0 = time.time()
    acts, acts_aug, layers = {}, {}, None
    networks = {}
    for run in tqdm(runs, desc="activations"):
        network = evaluators.load_network(os.path.join(args.runs_dir, run), 0, mesh)
        networks[run] = network
        fn = compare.layer_activations_fn(network.apply_fn, "gap", args.layers)

        def pooled(x, fn=fn, network=network):
            outs = [fn(network.apply_variables, x[i:i + 250]) for i in range(0, len(x), 250)]
            return outs[0][0], [np.concatenate([np.asarray(o[1][k]) for o in outs])
                                for k in range(len(outs[0][1]))]

        names, acts[run] = pooled(images.astype(np.float32) / 255.0)
        if layers is None:
            layers = names
        elif names != layers:
            raise errors.UserError(f"{run} has other layers than the first run: compare "
                                   "networks of one architecture")
        acts_aug[run] = {m: pooled(x)[1] for m, x in augmented.items()}
    timings["activations"] = time.time() - t0

    # CKA: every pair of networks, every pair of layers; labels; clean vs augmented.
    t0 = time.time()
    cka = {(a, b): compare.cka_matrix(acts[a], acts[b])
           for a, b in tqdm(list(itertools.combinations(runs, 2)), desc="CKA pairs")}
    label_cka = {run: [float(linear_cka(x, onehot)) for x in acts[run]] for run in runs}
    invariance = {run: {m: [float(linear_cka(x, y)) for x, y in zip(acts[run], acts_aug[run][m])]
                        for m in methods} for run in runs}
    timings["cka"] = time.time() - t0

    # Per-layer linear probes (the per_layer evaluator: stage outputs, gap).
    t0 = time.time()
    probes = {}
    if args.probe_grid:
        import ml_collections
        settings = ml_collections.ConfigDict(dict(layers="", pooling="gap",
                                                  probe_grid=args.probe_grid, progress=False))
        for run, (_, config) in tqdm(runs.items(), desc="per-layer probes"):
            inputs = evaluators.EvalInputs.from_network(
                networks[run], evaluators.data_of_run(config, builder), mesh)
            probes[run] = evaluators.get_evaluator("per_layer").evaluate(inputs, settings)[
                "layers"]
    timings["probes"] = time.time() - t0

    summary = summarise_pairs(cka, layers, method_of)
    record = {"runs": {r: {"method": m, "seed": runs[r][1].seed} for r, m in method_of.items()},
              "groups": group_thirds(cka, method_of),
              "layers": layers, "examples": len(images), "steps": args.steps,
              "dataset": first.dataset.name,
              "cka": {f"{a} | {b}": m.tolist() for (a, b), m in cka.items()},
              "summary": summary, "label_cka": label_cka, "invariance": invariance,
              "probes": probes, "timings": timings}
    with open(os.path.join(args.outdir, "similarity_methods.json"), "w") as f:
        json.dump(record, f, indent=2)
    lines = report(args, record, methods)
    figures(args.outdir, record, runs, methods, plot_per_layer)
    with open(os.path.join(args.outdir, "similarity_methods.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(args, record: dict, methods: list[str]) -> list[str]:
    layers, summary = record["layers"], record["summary"]
    n_odd = sum(map(is_inner, layers))
    lines = [f"# Layer-by-layer similarity of methods (001) on `{record['dataset']}`", "",
             f"{len(record['runs'])} networks ({', '.join(methods)} x seeds {args.seeds}, "
             f"{args.steps} steps each), {len(layers)} layers ({n_odd} inside residual blocks = "
             f"odd, {len(layers) - n_odd} block outputs, stem and pool = even), linear CKA "
             f"(full batch, biased HSIC) of global-average-pooled activations on "
             f"{record['examples']} test images.", ""]
    lines += finding(record["groups"]) + [""]
    for view in VIEWS:
        lines += [f"Same-layer CKA, {view} layers: mean over each kind's network pairs "
                  "(sd over pairs), by third of the layers:", "",
                  "| pair kind | pairs | first third | middle third | last third |",
                  "|---|---|---|---|---|"]
        for kind, v in summary[view].items():
            lines.append(f"| {kind} | {v['pairs']} | " + " | ".join(
                f"{m:.3f} ({s:.3f})" for m, s in v["thirds"]) + " |")
        lines.append("")
    lines += ["CKA of each layer with the one-hot labels (mean over seeds), every third "
              "layer:", "", "| method | " + " | ".join(map(short_name, layers[::3])) + " |",
              "|---|" + "---|" * len(layers[::3])]
    for m in methods:
        runs = [r for r, v in record["runs"].items() if v["method"] == m]
        mean = np.mean([record["label_cka"][r] for r in runs], axis=0)
        lines.append(f"| {m} | " + " | ".join(f"{x:.2f}" for x in mean[::3]) + " |")
    lines += ["", "Augmentation invariance: CKA of a layer on clean vs augmented images, last "
              "layer (pool), mean over seeds; rows: network, columns: whose augmentations:", "",
              "| network \\ augmentation | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for m in methods:
        runs = [r for r, v in record["runs"].items() if v["method"] == m]
        lines.append(f"| {m} | " + " | ".join(
            f"{np.mean([record['invariance'][r][a][-1] for r in runs]):.3f}"
            for a in methods) + " |")
    if record["probes"]:
        stages = list(next(iter(record["probes"].values())))
        lines += ["", "Linear probe top-1 (%) per stage output (mean over seeds):", "",
                  "| method | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for m in methods:
            runs = [r for r, v in record["runs"].items() if v["method"] == m]
            lines.append(f"| {m} | " + " | ".join(
                f"{np.mean([record['probes'][r][s]['top1'] for r in runs]):.1f}"
                for s in stages) + " |")
    lines += ["", "Figures: `cka_<A>__<B>.png` (heatmap with best matches, diagonal and maximum "
              "curves, first seed of each pair kind), `same_layer_cka.png` (the diagonal by "
              "kind of pair), `label_cka.png`, `invariance.png`, `per_layer_probes.png`.", "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in record["timings"].items())]
    return lines


def figures(outdir: str, record: dict, runs: dict, methods: list[str], plot_per_layer) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssl_jax.similarity import compare

    layers = record["layers"]
    short = [short_name(n) for n in layers]
    # One heatmap per pair kind: its first pair.
    drawn = set()
    for key, m in record["cka"].items():
        a, b = key.split(" | ")
        kind = pair_kind(a, b, {r: v["method"] for r, v in record["runs"].items()})
        if kind in drawn:
            continue
        drawn.add(kind)
        compare.plot_cka_matrix(np.asarray(m), layers, layers,
                                os.path.join(outdir, f"cka_{a}__{b}.png"), a, b,
                                title="linear CKA (full batch)")

    def per_layer_plot(path, series, ylabel, title):
        fig, ax = plt.subplots(figsize=(9, 4))
        for label, (mean, sd) in series.items():
            ax.plot(mean, marker=".", label=label)
            if sd is not None:
                ax.fill_between(range(len(mean)), np.subtract(mean, sd), np.add(mean, sd),
                                alpha=0.15)
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=6)
        ax.set(ylabel=ylabel, title=title, ylim=(0, 1.05))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    method_of = {r: v["method"] for r, v in record["runs"].items()}
    diagonals: dict[str, list] = {}
    for key, m in record["cka"].items():
        a, b = key.split(" | ")
        ma, mb = method_of[a], method_of[b]
        group = ("two seeds of one method" if ma == mb else
                 " ~ ".join(sorted((group_of(ma), group_of(mb)))))
        diagonals.setdefault(group, []).append(np.diag(np.asarray(m)))
    per_layer_plot(os.path.join(outdir, "same_layer_cka.png"),
                   {f"{g} ({len(d)} pairs)": (np.mean(d, axis=0), np.std(d, axis=0))
                    for g, d in sorted(diagonals.items())},
                   "linear CKA, same layer",
                   "same-layer CKA by kind of network pair (mean +- sd over pairs)")
    by_method = {m: [r for r, v in record["runs"].items() if v["method"] == m] for m in methods}
    per_layer_plot(os.path.join(outdir, "label_cka.png"),
                   {m: (np.mean([record["label_cka"][r] for r in rs], axis=0),
                        np.std([record["label_cka"][r] for r in rs], axis=0))
                    for m, rs in by_method.items()},
                   "CKA with one-hot labels", "how class-like each layer is (mean +- sd)")
    per_layer_plot(os.path.join(outdir, "invariance.png"),
                   {f"{m} net, {a} aug.": (np.mean([record["invariance"][r][a] for r in rs],
                                                   axis=0), None)
                    for m, rs in by_method.items() for a in methods if a in (m, "supervised")},
                   "CKA(clean, augmented)",
                   "augmentation invariance: each network under its own and supervised's "
                   "augmentations")
    if record["probes"]:
        plot_per_layer({m: {s: {k: np.mean([record["probes"][r][s][k] for r in rs])
                                for k in ("top1",)}
                            for s in next(iter(record["probes"].values()))}
                        for m, rs in by_method.items()},
                       os.path.join(outdir, "per_layer_probes.png"),
                       title="linear probe by stage (mean over seeds)")


if __name__ == "__main__":
    errors.run(main)
