"""000 in miniature: python experiments/whats_missing.py --outdir runs/whats_missing

What do self-supervised networks fail to learn (Epstein et al., paper 000)? On the built-in
dataset:
1. **Task bank** (Taskonomy in miniature): one network per task of
   ssl_jax/methods/task_bank.py on `shapes_textures/dense32` (configs/task_bank.py: the same
   ResNet-18 x0.25 encoder for every task, a shallow decoder), each scored on held-out images
   against its trivial baseline (the task_quality evaluator).
2. **Networks under study**, two families, each with its own supervised and random-init
   reference:
   - ResNet-18 x0.25 at 32 px: the main job's supervised, SimCLR, BYOL and MoCo v2 runs
     (configs/<method>.py:quickstart on faintgrey32; reused from `--reuse_dir` when finished
     there) and the four pretext tasks on ResNet-18 (configs/<task>.py:quickstart, 64 px);
   - AlexNet-BN x0.25 at 64 px, 000's architecture: supervised (on upright64, the pretext
     tasks' data) and the rotation, jigsaw, counting and colorization networks.
3. **What's missing, by CCA** (000 section 4): for every network under study and every bank
   encoder, depth-matched layer pairs (conv i or block i of the network with block i of the
   bank encoder, i = 1..4), activations on the same dense32 test images (upsampled 2x for the
   64 px networks) resized to `--positions` x `--positions`, channels as dimensions; each
   layer reduced to its `--k` leading principal directions, then the mean canonical
   correlation (SVCCA with K directions), averaged over the pairs; mean and standard error
   over `--batches` batches of images. Figure 3 (supervised vs random per task) and Figure 4
   (self-supervised minus supervised per task, tasks ordered by the transfer accuracy of
   their encoders: a linear probe of the bank encoder's pooled features on the classes).
4. **Attention between networks** (000 section 6, Tables 2-3, Figure 7): Grad-CAM of the
   true class through a linear readout fitted on each network's frozen features, IoU (maps
   binarised at 50% of their max) and Spearman between every pair of networks on the same
   test images, sharpness, and the classes where each network agrees with its family's
   supervised network most and least.
5. **Confusions** (000 Figure 5): the readouts' binarised top-`--topk` confusion matrices,
   classes grouped by outline (ssl_jax.evaluation.confusion), and the fraction of
   predictions inside the group blocks.
Writes OUTDIR/whats_missing.{md,json} and the figures named there; every finished run is
reused, so a second call only redoes the analysis.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import flags  # noqa: E402

from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402

host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

ALL_TASKS = ("class,scene,segment_fg,segment_class,occlusion_edges,texture_edges,keypoints,distance,"
             "z_depth,normals,curvature,reshading,autoencoding,denoising,inpainting,colorization")
PRETEXT = ("rotation", "jigsaw", "counting", "colorization")
FAMILIES = {"resnet": "ResNet-18 x0.25", "alexnet": "AlexNet-BN x0.25"}
# Supervised AlexNet-BN: the pretext tasks' backbone, data (upright64) and image size.
ALEXNET_SUPERVISED = ("model.name=alexnet_bn", "model.cifar_stem=false",
                      "dataset.name=shapes_textures/upright64", "dataset.image_size=64",
                      "batch_size=64", "num_epochs=8")
ALEXNET_SMOKE = ("model.name=alexnet_bn", "model.cifar_stem=false", "dataset.image_size=64")
# Networks under study: name -> (family, config file, config arg, overrides). A "random_"
# network is the family's supervised config at initialisation.
STUDIED = {
    "random_resnet": ("resnet", "supervised", "", ()),
    "supervised": ("resnet", "supervised", "", ()),
    "simclr": ("resnet", "simclr", "", ()),
    "byol": ("resnet", "byol", "", ()),
    "moco": ("resnet", "moco", "", ()),
    # counting on ResNet-18 at 800 steps (its quickstart's 1600 took 18 min for the same
    # 98% pretext accuracy; docs/PRETEXT.md).
    **{f"{t}_resnet18": ("resnet", t, "model=resnet18",
                         ("num_steps=800",) if t == "counting" else ()) for t in PRETEXT},
    "random_alexnet": ("alexnet", "supervised", "", ALEXNET_SUPERVISED),
    "supervised_alexnet_bn": ("alexnet", "supervised", "", ALEXNET_SUPERVISED),
    **{f"{t}_alexnet_bn": ("alexnet", t, "model=alexnet_bn", ()) for t in PRETEXT},
}
REFERENCE = {"resnet": ("supervised", "random_resnet"),
             "alexnet": ("supervised_alexnet_bn", "random_alexnet")}
PROBE_DATA = {"quickstart": "shapes_textures/dense32", "smoke": "shapes_textures/densetiny"}

FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/whats_missing", "runs, reports and figures",
                    flag_values=FLAGS)
flags.DEFINE_string("reuse_dir", "runs/quickstart",
                    "finished runs of the same configs to reuse by name (the main job's "
                    "supervised, simclr, byol, moco)", flag_values=FLAGS)
flags.DEFINE_string("tasks", ALL_TASKS, "bank tasks (ssl_jax/methods/task_bank.py)",
                    flag_values=FLAGS)
flags.DEFINE_integer("bank_steps", 1500, "optimizer steps of every bank network",
                     flag_values=FLAGS)
flags.DEFINE_string("networks", ",".join(STUDIED), "networks under study", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets)",
                    flag_values=FLAGS)
flags.DEFINE_integer("batches", 10, "CCA batches (the standard error is over them)",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_examples", 200, "test images per CCA batch", flag_values=FLAGS)
flags.DEFINE_integer("positions", 8, "activations are resized to this many positions a side",
                     flag_values=FLAGS)
flags.DEFINE_integer("k", 20, "leading principal directions per layer (000: K = 20)",
                     flag_values=FLAGS)
flags.DEFINE_integer("attention_examples", 500, "test images for attention",
                     flag_values=FLAGS)
flags.DEFINE_integer("topk", 2, "top-k of the binarised confusions (000: 5 of 1000 classes)",
                     flag_values=FLAGS)
flags.DEFINE_bool("report_only", False,
                  "re-render OUTDIR's report and figures from its whats_missing.json, with "
                  "each bank network's scores re-read from its run directory (no compute)",
                  flag_values=FLAGS)
flags.DEFINE_enum("variant", "quickstart", ["quickstart", "smoke"],
                  "config variant of every run (smoke: a few steps on tiny data, a check)",
                  flag_values=FLAGS)


def parse_args(argv=None):
    return errors.parse_script_flags(FLAGS, argv, doc=__doc__)


def bank_config(task: str, args):
    from configs import task_bank

    arg = f"{args.variant},task={task}" + (f",steps={args.bank_steps}"
                                           if args.variant == "quickstart" else "")
    c = task_bank.get_config(arg)
    c.dataset.data_dir = args.data_dir
    return c


def studied_config(name: str, args):
    """The config of network `name` (STUDIED). In the smoke variant the quickstart-only
    overrides are dropped (AlexNet's supervised run keeps its architecture and size)."""
    import importlib

    from configs.common import apply_override

    family, file, arg, overrides = STUDIED[name]
    c = importlib.import_module(f"configs.{file}").get_config(",".join(filter(None, [
        args.variant, arg])))
    alexnet_supervised = overrides == ALEXNET_SUPERVISED
    if args.variant == "smoke":
        overrides = ALEXNET_SMOKE if alexnet_supervised else ()
    for item in overrides:
        apply_override(c, item)
    if alexnet_supervised:  # AlexNet's fc6/fc7 width, as its pretext configs set it
        c.model.fc_dim = 64 if args.variant == "smoke" else 512
    c.dataset.data_dir = args.data_dir
    return c


def check_names(args) -> tuple[list[str], list[str]]:
    from ssl_jax.methods import task_bank

    tasks = [t for t in args.tasks.split(",") if t]
    networks = [n for n in args.networks.split(",") if n]
    for t in tasks:
        task_bank.get_task(t)
    unknown = [n for n in networks if n not in STUDIED]
    if unknown:
        raise errors.UserError(f"--networks: unknown {', '.join(unknown)}; valid: "
                               f"{', '.join(STUDIED)}")
    for name in networks:
        studied_config(name, args)  # a bad config fails now, not after the bank's training
    for family, (sup, rand) in REFERENCE.items():
        if any(STUDIED[n][0] == family for n in networks) and not {sup, rand} <= set(networks):
            raise errors.UserError(f"--networks: the {family} networks need their references "
                                   f"{sup} and {rand}")
    return tasks, networks


def finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "final_metrics.json"))


def train_or_reuse(config, workdir: str, reuse: str | None) -> tuple[str, float]:
    """(the run directory, seconds spent training): a finished run in `reuse` or `workdir` is
    used as it is; otherwise `workdir` is trained (or resumed)."""
    from ssl_jax import train

    if reuse and finished(reuse):
        return reuse, 0.0
    if finished(workdir):
        return workdir, 0.0
    t0 = time.time()
    train.train(config, workdir)
    return workdir, time.time() - t0


def probe_images(args):
    """uint8 dense test and train images and labels (eval transform: the whole image)."""
    from ssl_jax.data import pipeline

    builder = pipeline.load_builder(PROBE_DATA[args.variant], args.data_dir)
    out = {}
    for split in ("train", "test"):
        images, labels = [], []
        for b in pipeline.eval_iterator(builder, split, 500, 32):
            images.append(b["image"][b["valid"]])
            labels.append(b["label"][b["valid"]])
        out[split] = (np.concatenate(images), np.concatenate(labels))
    return out, list(builder.info.features["label"].names)


def at_size(images_uint8: np.ndarray, size: int) -> np.ndarray:
    """float [0, 1] images at `size` px (bilinear, for the 64 px networks)."""
    import jax

    x = images_uint8.astype(np.float32) / 255.0
    if x.shape[1] == size:
        return x
    return np.asarray(jax.image.resize(x, (len(x), size, size, 3), "bilinear"))


def block_layers(network) -> list[str]:
    """The network's four depth-matched layers: ResNet block outputs layer1..4, or AlexNet
    conv1..4 (000 leaves conv5 out)."""
    import re

    from ssl_jax.evaluators.inputs import sown_layers

    names = [n for n in sown_layers(network)
             if re.search(r"(^|/)(layer[1-4]|conv[1-4])$", n)]
    if len(names) != 4:
        raise ValueError(f"{network.label}: expected 4 block layers, found {names}")
    return names


def features(network, images: np.ndarray) -> np.ndarray:
    import jax

    fn = jax.jit(network.features_fn)
    x = at_size(images, network.image_size)
    return np.concatenate([np.asarray(fn(*network.variables, x[i:i + 500]))
                           for i in range(0, len(x), 500)])


def readout(network, data, num_classes: int):
    """(head, test logits, test top-1 %): a linear readout fitted on the frozen pooled
    features of the train images, the test images' logits through it."""
    from ssl_jax.evaluation import attention as A
    from ssl_jax.evaluation.attention_report import fit_linear_head

    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    w, b = fit_linear_head(features(network, train_x), train_y, num_classes)
    logits = features(network, test_x) @ np.asarray(w) + np.asarray(b)
    head = A.FittedLinearReadout(w, b, output_index=network.features_index)
    return head, logits, 100.0 * float(np.mean(np.argmax(logits, -1) == test_y))


def grad_cams(network, head, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """Grad-CAM [N, h, w] of the true class at the deepest depth-matched layer (block_layers)
    whose map is at least 4 x 4 (at the layer's own resolution), and the layer. (Not the
    tapped layers at large: AlexNet's pool5 at 64 px is 1 x 1, a constant map.)"""
    import jax

    from ssl_jax.evaluation import attention as A
    from ssl_jax.similarity.activations import flatten_intermediates

    x = at_size(images, network.image_size)
    _, state = jax.eval_shape(lambda v, xi: network.module.apply(
        v, xi, train=False, mutable=["intermediates"]), network.apply_variables, x[:2])
    shapes = {k: a.shape for k, a in flatten_intermediates(state["intermediates"]).items()}
    wide = [name for name in block_layers(network) if min(shapes[name][1:3]) >= 4]
    layer = wide[-1] if wide else block_layers(network)[0]
    cam = jax.jit(lambda v, xi, t, h: A.grad_cam(network.module, v, xi, layer, t, h,
                                                 upsample=False))
    maps = [np.asarray(cam(network.apply_variables, x[i:i + 250], labels[i:i + 250], head))
            for i in range(0, len(x), 250)]
    return np.concatenate(maps), layer


def cca_rows(network, images: np.ndarray, args) -> list[np.ndarray]:
    """The four block layers' activations on `images`, each resized to positions x positions,
    as rows [N * positions^2, channels] (example-major)."""
    from ssl_jax.similarity.activations import capture

    x = at_size(images, network.image_size)
    acts = capture(network.apply_fn, network.apply_variables,
                   [x[i:i + 250] for i in range(0, len(x), 250)], layers=block_layers(network),
                   mode="positions", positions_size=args.positions, progress=False)
    return list(acts.values())


def clearly_better(task: str, score: float, baseline: float) -> bool:
    """The bank's bar for a task learned: 5 points over the baseline for percentages, 1 dB for
    PSNR, and 15% less error than the baseline for errors."""
    from ssl_jax.evaluation.task_quality import METRICS

    _, unit, higher = METRICS[task]
    if not higher:
        return score <= 0.85 * baseline
    return score - baseline >= (1.0 if unit == "dB" else 5.0)


def write_report(outdir: str, record: dict) -> None:
    with open(os.path.join(outdir, "whats_missing.json"), "w") as f:
        json.dump(record, f, indent=2)
    figures(outdir, record)
    lines = report(record)
    with open(os.path.join(outdir, "whats_missing.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def rerender(outdir: str) -> None:
    """--report_only: the saved record with every bank network's scores re-read from its run
    directory (e.g. after a bank network was retrained in place), then report and figures."""
    path = os.path.join(outdir, "whats_missing.json")
    if not os.path.exists(path):
        raise errors.UserError(f"--report_only: no {path}; run the experiment first")
    with open(path) as f:
        record = json.load(f)
    for entry in record["bank"].values():
        with open(os.path.join(entry["dir"], "final_metrics.json")) as f:
            entry.update({k: v for k, v in json.load(f).items() if k.startswith("task_")})
    write_report(outdir, record)


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        return rerender(args.outdir)
    tasks, names = check_names(args)  # before the heavy imports: a bad flag fails in a second
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    import jax

    from ssl_jax import evaluators, sharding
    from ssl_jax.evaluation import attention_agreement as agree
    from ssl_jax.evaluation import confusion
    from ssl_jax.evaluation.attention_report import fit_linear_head
    from ssl_jax.evaluation.frozen import random_init
    from ssl_jax.methods import task_bank
    from ssl_jax.similarity import depth_matched

    os.makedirs(args.outdir, exist_ok=True)
    mesh = sharding.make_mesh()
    timings, start = {}, time.time()

    # 1. The task bank.
    t0 = time.time()
    bank, train_seconds = {}, {}
    for task in tasks:
        workdir, train_seconds[task] = train_or_reuse(
            bank_config(task, args), os.path.join(args.outdir, "bank", task), None)
        with open(os.path.join(workdir, "final_metrics.json")) as f:
            bank[task] = {k: v for k, v in json.load(f).items() if k.startswith("task_")}
        bank[task]["dir"] = workdir
    timings["bank"] = time.time() - t0

    # 2. The networks under study.
    t0 = time.time()
    runs = {}
    for name in names:
        if name.startswith("random_"):
            continue
        reuse = os.path.join(args.reuse_dir, name) if args.reuse_dir else None
        runs[name], train_seconds[name] = train_or_reuse(
            studied_config(name, args), os.path.join(args.outdir, "networks", name), reuse)
    timings["networks"] = time.time() - t0

    def network(name):
        if name in bank:
            return evaluators.load_network(bank[name]["dir"], 0, mesh)
        if name.startswith("random_"):
            config = studied_config(name, args)
            method, state = random_init(config, mesh, config.seed + 1, args.data_dir)
            return evaluators.network_of_run(config, method, state, label=name)
        return evaluators.load_network(runs[name], 0, mesh)

    data, class_names = probe_images(args)
    test_x, test_y = data["test"]
    num_classes = len(class_names)

    # 3. CCA: every network under study against every bank encoder, depth-matched.
    t0 = time.time()
    n_cca = args.batches * args.batch_examples
    if n_cca > len(test_x):
        raise errors.UserError(f"--batches x --batch_examples = {n_cca} is more than the "
                               f"{len(test_x)} test images")
    # Timed apart: the CCA proper (activations and similarities) is what a re-run with other
    # CCA settings repeats; the readouts and Grad-CAMs feed the transfer order, attention and
    # confusions.
    cca_seconds = readout_seconds = 0.0
    rows, transfer = {}, {}
    for task in tasks:
        net = network(task)
        t0 = time.time()
        rows[task] = cca_rows(net, test_x[:n_cca], args)
        cca_seconds += time.time() - t0
        t0 = time.time()
        # Transfer accuracy of the bank encoder: a linear readout of its pooled features.
        w, b = fit_linear_head(features(net, data["train"][0]), data["train"][1], num_classes)
        transfer[task] = 100.0 * float(np.mean(
            np.argmax(features(net, test_x) @ np.asarray(w) + np.asarray(b), -1) == test_y))
        readout_seconds += time.time() - t0
    cca = {}
    readouts, maps, layers_used = {}, {}, {}
    for name in names:
        net = network(name)
        t0 = time.time()
        studied_rows = cca_rows(net, test_x[:n_cca], args)
        for task in tasks:
            result = depth_matched.batched_network_similarity(
                dict(enumerate(studied_rows)), dict(enumerate(rows[task])),
                [(i, i) for i in range(4)], positions=args.positions ** 2,
                batch_examples=args.batch_examples, k=args.k)
            cca[(name, task)] = {"mean": float(result["mean"]), "se": float(result["se"]),
                                 "per_pair": np.asarray(result["per_pair"]).mean(0).tolist()}
        cca_seconds += time.time() - t0
        t0 = time.time()
        head, logits, top1 = readout(net, data, num_classes)
        readouts[name] = {"logits": logits, "top1": top1}
        n_att = min(args.attention_examples, len(test_x))
        maps[name], layers_used[name] = grad_cams(net, head, test_x[:n_att], test_y[:n_att])
        readout_seconds += time.time() - t0
        jax.clear_caches()
    timings["CCA: activations and similarities"] = cca_seconds
    timings["readouts (transfer, confusions) and Grad-CAM"] = readout_seconds

    # 4. Attention between networks; 5. binarised top-k confusions.
    t0 = time.time()
    attention, confusions = {}, {}
    grouping = confusion.shapes_textures_grouping(class_names)
    groups = confusion.group_ids(grouping, num_classes)
    n_att = len(next(iter(maps.values())))
    for family in FAMILIES:
        members = [n for n in names if STUDIED[n][0] == family]
        if not members:
            continue
        fam_maps = {n: maps[n] for n in members}
        sup = REFERENCE[family][0]
        pairwise = agree.pairwise_agreement(fam_maps, args.positions)
        table = agree.agreement_table(fam_maps, sup, args.positions)
        scores = agree.per_image_scores(fam_maps, sup, args.positions)
        per_class = {n: {m: agree.per_class_agreement(scores[n][m], test_y[:n_att], class_names)
                         for m in ("iou", "spearman", "sharpness")}
                     for n in members if n != sup}
        agree.plot_agreement({"IoU": pairwise["iou"], "Spearman": pairwise["spearman"]},
                             pairwise["names"],
                             os.path.join(args.outdir, f"attention_{family}.png"),
                             title=f"Grad-CAM agreement, {FAMILIES[family]}")
        attention[family] = {"pairwise": pairwise, "table": table, "per_class": per_class}
        counts = {n: confusion.topk_confusion_counts(readouts[n]["logits"], test_y, args.topk)
                  for n in members}
        confusion.plot_binarised_confusions(
            counts, grouping, class_names, os.path.join(args.outdir, f"confusion_{family}.png"),
            title=f"binarised top-{args.topk} confusions, {FAMILIES[family]}")
        confusions[family] = {n: {"block_fraction": confusion.block_diagonal_fraction(c, groups),
                                  "cells_on": int((c > 0).sum()), "top1": readouts[n]["top1"]}
                              for n, c in counts.items()}
    timings["attention and confusions"] = time.time() - t0
    timings["total, with loading and data"] = time.time() - start

    record = {"variant": args.variant, "tasks": tasks, "networks": names,
              "groups": {t: task_bank.get_task(t).group for t in tasks},
              "bank": bank, "transfer": transfer, "train_seconds": train_seconds,
              "cca": {f"{n} | {t}": v for (n, t), v in cca.items()},
              "settings": {k: getattr(args, k) for k in ("batches", "batch_examples",
                                                         "positions", "k", "topk",
                                                         "attention_examples", "bank_steps")},
              "grad_cam_layers": layers_used, "confusions": confusions,
              "attention": jsonable(attention), "timings": timings}
    write_report(args.outdir, record)


def jsonable(tree):
    """Arrays to lists, tuple keys to strings: the attention record as JSON."""
    if isinstance(tree, dict):
        return {str(k): jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [jsonable(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return tree.tolist()
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def ordered_tasks(record: dict) -> list[str]:
    """Tasks by the transfer accuracy of their encoders, highest first (000's Figure 4 order)."""
    return sorted(record["tasks"], key=lambda t: -record["transfer"][t])


def ssl_networks(record: dict, family: str) -> list[str]:
    return [n for n in record["networks"]
            if STUDIED[n][0] == family and n not in REFERENCE[family]]


def figures(outdir: str, record: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ordered_tasks(record)
    cca = record["cca"]
    families = [f for f in FAMILIES if any(STUDIED[n][0] == f for n in record["networks"])]

    # Figure 3: the supervised and the random network's similarity to each task.
    fig, axes = plt.subplots(len(families), 1, figsize=(max(8, 0.6 * len(tasks)),
                                                         3.2 * len(families)), squeeze=False)
    for ax, family in zip(axes[:, 0], families):
        x = np.arange(len(tasks))
        for offset, name, colour in ((-0.2, REFERENCE[family][1], "tab:blue"),
                                     (0.2, REFERENCE[family][0], "tab:orange")):
            mean = [cca[f"{name} | {t}"]["mean"] for t in tasks]
            se = [cca[f"{name} | {t}"]["se"] for t in tasks]
            ax.bar(x + offset, mean, 0.4, yerr=se, color=colour, label=name, capsize=2)
        ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("mean CCA")
        ax.set_title(f"{FAMILIES[family]}: supervised vs random, per bank task", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "fig3_supervised_vs_random.png"), dpi=110)
    plt.close(fig)

    # Figure 4: self-supervised minus supervised (same family); red = the SSL network is
    # further from the task than supervised, i.e. missing it.
    columns = [n for f in families for n in ssl_networks(record, f)]
    if not columns:
        return
    diff = np.array([[cca[f"{n} | {t}"]["mean"]
                      - cca[f"{REFERENCE[STUDIED[n][0]][0]} | {t}"]["mean"] for n in columns]
                     for t in tasks])
    lim = max(np.abs(diff).max(), 1e-3)
    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 3, 0.42 * len(tasks) + 1.8))
    im = ax.imshow(diff, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(tasks)):
        for j in range(len(columns)):
            ax.text(j, i, f"{diff[i, j]:+.2f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)),
                  [f"{t} ({record['transfer'][t]:.0f}%)" for t in tasks], fontsize=7)
    ax.set_title("mean CCA: self-supervised minus supervised\n(tasks by transfer accuracy; "
                 "red: missing)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "fig4_whats_missing.png"), dpi=110)
    plt.close(fig)


def group_means(record: dict, name: str) -> dict[str, float]:
    from ssl_jax.methods.task_bank import GROUPS

    out = {}
    for g in GROUPS:
        vals = [record["cca"][f"{name} | {t}"]["mean"] for t in record["tasks"]
                if record["groups"][t] == g]
        if vals:
            out[g] = float(np.mean(vals))
    return out


def findings(record: dict) -> list[str]:
    """000's three findings, checked on these numbers, whichever way they go."""
    lines = []
    tasks, cca = record["tasks"], record["cca"]
    for family in FAMILIES:
        sup, rand = REFERENCE[family]
        if sup not in record["networks"]:
            continue
        closer = [t for t in tasks
                  if cca[f"{sup} | {t}"]["mean"] - cca[f"{rand} | {t}"]["mean"]
                  > 2 * np.hypot(cca[f"{sup} | {t}"]["se"], cca[f"{rand} | {t}"]["se"])]
        further = [t for t in tasks
                   if cca[f"{rand} | {t}"]["mean"] - cca[f"{sup} | {t}"]["mean"]
                   > 2 * np.hypot(cca[f"{sup} | {t}"]["se"], cca[f"{rand} | {t}"]["se"])]
        lines.append(f"- **{FAMILIES[family]}: supervised closer than random** (by more than "
                     f"2 combined standard errors) on {len(closer)} of {len(tasks)} tasks"
                     f"{' (' + ', '.join(closer) + ')' if closer else ''}; random closer on "
                     f"{len(further)}{' (' + ', '.join(further) + ')' if further else ''}. "
                     f"000: supervised closer on most tasks. "
                     f"{'Holds' if len(closer) > len(tasks) / 2 else 'Does not hold'} here.")
        ranked = sorted(tasks, key=lambda t: cca[f"{sup} | {t}"]["mean"])
        bottom = ranked[:3]
        recon = {"autoencoding", "denoising"} & set(tasks)
        verdict = ("Not tested (neither is in the bank)." if not recon else
                   f"{'Holds' if recon <= set(ranked[:4]) else 'Does not hold'} here (the "
                   "test: both among the four least similar).")
        lines.append(f"- **{FAMILIES[family]}: least similar tasks to supervised**: "
                     f"{', '.join(bottom)}. 000: autoencoding and denoising least similar. "
                     + verdict)
        sup_groups = group_means(record, sup)
        for name in ssl_networks(record, family):
            d = {g: v - sup_groups[g] for g, v in group_means(record, name).items()}
            most = sorted(d, key=d.get)
            lines.append(f"- {name} minus supervised by task group: " + ", ".join(
                f"{g} {d[g]:+.3f}" for g in d) + f"; most missing: {most[0]}, then {most[1]}.")
    return lines


def report(record: dict) -> list[str]:
    from ssl_jax.evaluation.task_quality import METRICS

    s = record["settings"]
    lines = ["# What's missing from self-supervised learning (000 in miniature)", "",
             f"Variant `{record['variant']}`. Costs (s): " + ", ".join(
                 f"{k} {v:.0f}" for k, v in record["timings"].items()) + ".", "",
             "## The task bank", "",
             f"Each task's network: ResNet-18 x0.25 encoder + its decoder, "
             f"{s['bank_steps']} steps on dense32; held-out score on the test split against "
             "the trivial baseline; transfer = linear readout of the encoder's pooled "
             "features on the 10 classes.", "",
             "| task | group | metric | score | trivial baseline | clearly better | "
             "transfer top-1 % | train s |", "|---|---|---|---|---|---|---|---|"]
    learned = 0
    for t in ordered_tasks(record):
        b = record["bank"][t]
        metric, unit, higher = METRICS[t]
        ok = clearly_better(t, b["task_score"], b["task_baseline"])
        learned += ok
        lines.append(f"| {t} | {record['groups'][t]} | {metric} ({unit}, "
                     f"{'higher' if higher else 'lower'} is better) | {b['task_score']:.3g} | "
                     f"{b['task_baseline']:.3g} | {'yes' if ok else 'no'} | "
                     f"{record['transfer'][t]:.1f} | {record['train_seconds'].get(t, 0):.0f} |")
    lines += ["", f"{learned} of {len(record['tasks'])} tasks clearly better than their "
              "baseline (5 points for %, 1 dB for PSNR, 15% less error).", "",
              "## Similarity to each task (mean CCA +- standard error)", "",
              f"Depth-matched pairs (block / conv i with block i, i = 1..4); activations on "
              f"{s['batches']} batches of {s['batch_examples']} test images resized to "
              f"{s['positions']} x {s['positions']}, channels as dimensions, each layer reduced "
              f"to its {s['k']} leading principal directions, then the mean canonical "
              "correlation; the standard error is over the batches.", "",
              "![figure 3](fig3_supervised_vs_random.png)", "",
              "![figure 4](fig4_whats_missing.png)", ""]
    tasks = ordered_tasks(record)
    lines += ["| network | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for n in record["networks"]:
        lines.append(f"| {n} | " + " | ".join(
            f"{record['cca'][f'{n} | {t}']['mean']:.3f} +- {record['cca'][f'{n} | {t}']['se']:.3f}"
            for t in tasks) + " |")
    lines += ["", "### 000's findings, checked here", ""] + findings(record)
    lines += ["", "## Attention between networks (Grad-CAM of the true class)", "",
              f"{s['attention_examples']} test images; each network's Grad-CAM at its layer "
              "below, through a linear readout fitted on its frozen features; maps resized to "
              f"{s['positions']} x {s['positions']}; IoU of the maps binarised at 50% of their "
              "max, Spearman of the values, sharpness = fraction below half the max.", ""]
    from ssl_jax.evaluation import attention_agreement as agree

    for family, a in record["attention"].items():
        lines += [f"### {FAMILIES[family]}", "", f"![attention](attention_{family}.png)", "",
                  agree.agreement_markdown(a["table"]), "",
                  "Classes with the highest / lowest agreement with supervised:", "",
                  agree.per_class_markdown(a["per_class"]), ""]
    lines += ["Grad-CAM layers: " + ", ".join(f"{n} `{layer}`" for n, layer in
                                              record["grad_cam_layers"].items()), "",
              f"## Binarised top-{s['topk']} confusions", "",
              "Readout logits on the test split; rows = true class; an image whose label is "
              f"in its top {s['topk']} adds to the diagonal only, otherwise to each of its "
              f"top-{s['topk']} cells; block fraction = increments inside the outline groups.",
              "", "| network | readout top-1 % | block fraction | cells on |", "|---|---|---|---|"]
    for family, rows in record["confusions"].items():
        for n, c in rows.items():
            lines.append(f"| {n} | {c['top1']:.1f} | {c['block_fraction']:.3f} | "
                         f"{c['cells_on']} |")
        lines += ["", f"![confusions](confusion_{family}.png)", ""]
    return lines


if __name__ == "__main__":
    errors.run(main)
