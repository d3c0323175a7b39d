"""Evaluate trained models: python run_eval.py --config configs/eval/EVALUATOR.py[:ARGS] --config.checkpoint=DIR --outdir OUT

    python run_eval.py --config configs/eval/linear.py --config.checkpoint=runs/quickstart/simclr \
        --outdir runs/eval/simclr_linear
    python run_eval.py --config configs/eval/per_layer.py:dataset=shapes_textures/small32 \
        --config.checkpoint=runs/quickstart/simclr --outdir runs/eval/simclr_layers

Evaluators (one config file each, see its docstring): linear (kNN, 004 linear probe, ECE,
few-shot), per_layer (linear probe per named layer), confusion (hierarchically ordered
confusion matrix, within-group top-5 errors, class differences vs a reference), retrieval
(cosine nearest-neighbour grid), similarity (layer-by-layer CKA between two checkpoints),
attention (Grad-CAM, Guided Grad-CAM, saliency through a linear head, feature-space occlusion;
localisation against the built-in dataset's masks).
Every run writes OUTDIR/metrics.json, its PNG figures and OUTDIR/report.md. Features are
extracted once per (checkpoint, dataset, split, layer, pooling, resolution) and cached in
OUTDIR/feature_cache (or --config.cache_dir), so a second run on them skips the forward passes.
`--config.checkpoint` is a run_train workdir or a converted zoo checkpoint directory.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssl_jax import xla_flags  # noqa: E402
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax import errors  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Evaluator config, e.g. configs/eval/linear.py.",
                                lock_config=True)
flags.DEFINE_string("outdir", None, "Where metrics.json, figures and report.md are written.")
flags.mark_flags_as_required(["config", "outdir"])
FLAGS = flags.FLAGS

if TYPE_CHECKING:
    import numpy as np

EVALUATORS = ("linear", "per_layer", "confusion", "retrieval", "similarity", "attention")
# Default per-layer probe points: stage outputs, by the last component of the sown name.
DEFAULT_LAYER = re.compile(r"(stem|layer\d+|conv\d+|pool)")
# One example per image (ssl_jax.similarity.activations modes; "positions" makes one per pixel).
POOLINGS = ("gap", "flatten")


# ---------------------------------------------------------------------------------------------
# Checkpoints, data and (cached) features
# ---------------------------------------------------------------------------------------------

def load_source(path: str, image_size: int, mesh) -> dict:
    """A run_train workdir or a converted zoo checkpoint as: a final-features function + its
    variables, a Linen apply function + variables (for sown layers), an identity for the
    feature cache (a hash of the restored variables: the checkpoint's content, not its path
    or step), and the evaluation defaults that go with it."""
    from ssl_jax import models, train
    from ssl_jax.evaluation.feature_cache import content_hash
    from ssl_jax.models.load import METADATA_FILE

    if not path:
        raise ValueError("--config.checkpoint is required (a run_train workdir or a converted "
                         "checkpoint directory)")
    meta_path = os.path.join(path, METADATA_FILE)
    if os.path.exists(meta_path):  # converted zoo checkpoint
        module, variables = models.load(path, output="features")
        with open(meta_path) as f:
            meta = json.load(f)

        def features_fn(variables, images):
            return module.apply(variables, images, train=False)

        return {"features_fn": features_fn, "variables": (variables,),
                "apply_fn": module.apply, "module": module, "apply_variables": variables,
                "features_index": None,
                "identity": f"converted, variables sha256 {content_hash(variables)}",
                "dataset": None,
                "data_dir": None, "train_split": None, "eval_split": None,
                "image_size": image_size or 224, "crop_fraction": 0.875, "batch_size": 256,
                "augment": None,  # no training config, so no augmentations of its own
                "name": f"converted {meta.get('family')}",
                "describe": f"converted {meta.get('family')} checkpoint"}
    config, method, state = train.load_trained(path, mesh)
    ds = config.dataset
    return {"features_fn": method.features, "variables": (state.params, state.model_state),
            "apply_fn": method.net.apply, "module": method.net,
            "apply_variables": {"params": state.params, **state.model_state},
            "features_index": 0,  # every method's net returns (backbone features, ...)
            "identity": f"step {int(state.step)}, variables sha256 "
                        f"{content_hash((state.params, state.model_state))}",
            "dataset": ds.name,
            "data_dir": ds.data_dir, "train_split": ds.train_split,
            "eval_split": ds.eval_split, "image_size": image_size or ds.image_size,
            "crop_fraction": ds.eval_crop_fraction, "batch_size": config.eval.batch_size,
            "augment": (config.augment.preset, dict(config.augment.get("overrides", {}))),
            "name": config.method,
            "describe": f"{config.method}, {config.model.name} width {config.model.width}, "
                        f"step {int(state.step)}"}


def open_data(config, source: dict) -> dict:
    """Dataset name, builder, (train split, eval split), num_classes and class names."""
    from ssl_jax.data import pipeline

    name = config.dataset or source["dataset"]
    if not name:
        raise ValueError("--config.dataset is required for a converted checkpoint (e.g. "
                         "imagenette, cifar10, shapes_textures/small32)")
    data_dir = config.data_dir or source["data_dir"]
    builder = pipeline.load_builder(name, data_dir)
    splits = (config.train_split or source["train_split"] or "train",
              config.eval_split or source["eval_split"] or "test")
    for split in splits:
        if split not in builder.info.splits:
            raise ValueError(f"dataset {name!r} has no split {split!r}; valid: "
                             f"{', '.join(builder.info.splits)}")
    label = builder.info.features["label"]
    return {"name": name, "data_dir": data_dir, "builder": builder, "splits": splits,
            "num_classes": config.num_classes or label.num_classes,
            "class_names": list(label.names)}


def batches(source: dict, data: dict, split: str, progress: bool, what: str,
            limit: int | None = None):
    """The eval iterator of `split` at the source's resolution, with a progress bar (sized for
    the first `limit` examples when the caller stops there)."""
    from tqdm import tqdm

    from ssl_jax.data import pipeline

    n = min(pipeline.num_examples(data["builder"], split), limit or float("inf"))
    it = pipeline.eval_iterator(data["builder"], split, source["batch_size"],
                                source["image_size"], crop_fraction=source["crop_fraction"])
    return tqdm(it, total=int(math.ceil(n / source["batch_size"])), desc=f"{what} {split}",
                disable=not progress)


def cache_key(source: dict, data: dict, split: str, layer: str, pooling: str) -> dict:
    # Keyed by content (source["identity"]), not by the checkpoint's path: the same weights
    # elsewhere hit, other weights at the same path and step miss.
    return {"identity": source["identity"],
            "dataset": data["name"], "data_dir": data["data_dir"], "split": split,
            "layer": layer, "pooling": pooling, "image_size": source["image_size"],
            "crop_fraction": source["crop_fraction"]}


def final_features(ctx: dict, checkpoint: str, source: dict, split: str):
    """(features [N, D], labels [N]) of the backbone output, from the cache when present."""
    from ssl_jax import train
    from ssl_jax.evaluation import feature_cache

    key = cache_key(source, ctx["data"], split, "features", "backbone")
    hit = feature_cache.load(ctx["cache_dir"], key)
    if hit is not None:
        ctx["cache_hits"].append(feature_cache.cache_path(ctx["cache_dir"], key))
        return hit
    x, y = train.extract_features(source["features_fn"], source["variables"],
                                  batches(source, ctx["data"], split, ctx["progress"],
                                          "features"), ctx["mesh"])
    feature_cache.save(ctx["cache_dir"], key, x, y)
    return x, y


def sown_layers(source: dict, image_size: int) -> list[str]:
    """Every "/"-joined name the model sows, in forward order (shapes only, no compute)."""
    import jax
    import jax.numpy as jnp

    from ssl_jax.similarity.activations import flatten_intermediates

    names: list[str] = []

    def trace(variables, x):  # names read inside the trace: eval_shape's output dict is sorted
        _, state = source["apply_fn"](variables, x, train=False, mutable=["intermediates"])
        names[:] = list(flatten_intermediates(state.get("intermediates", {})))
        return 0

    jax.eval_shape(trace, source["apply_variables"],
                   jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    return names


def resolve_layers(spec: str, available: list[str]) -> list[str]:
    """'+'-separated names (full or last components) -> full sown names; "" -> the stages."""
    last = {n: n.split("/")[-1] for n in available}
    if not spec:
        picked = [n for n in available if DEFAULT_LAYER.fullmatch(last[n])]
        if not picked:
            raise ValueError(f"no default layers among {available}; set --config.layers")
        return picked
    out = []
    for want in filter(None, spec.split("+")):
        match = [n for n in available if want in (n, last[n])]
        if len(match) != 1:
            raise ValueError(f"layer {want!r} matches {len(match)} sown layers; valid: "
                             f"{', '.join(available)}")
        out.append(match[0])
    return out


def layer_features(ctx: dict, checkpoint: str, source: dict, split: str, layers: list[str],
                   pooling: str) -> tuple[dict, "np.ndarray"]:
    """({layer: pooled activations [N, D_l]}, labels [N]); one forward pass for all layers not
    yet cached."""
    import numpy as np

    from ssl_jax.evaluation import feature_cache
    from ssl_jax.similarity.activations import capture

    keys = {n: cache_key(source, ctx["data"], split, n, pooling) for n in layers}
    feats, labels = {}, None
    for n, key in keys.items():
        hit = feature_cache.load(ctx["cache_dir"], key)
        if hit is not None:
            feats[n], labels = hit
            ctx["cache_hits"].append(feature_cache.cache_path(ctx["cache_dir"], key))
    missing = [n for n in layers if n not in feats]
    if missing:
        ys = []

        def images():  # valid rows only, as floats in [0, 1] (what the model was trained on)
            for b in batches(source, ctx["data"], split, ctx["progress"], "layers"):
                ys.append(b["label"][b["valid"]])
                yield b["image"][b["valid"]].astype(np.float32) / 255.0

        acts = capture(source["apply_fn"], source["apply_variables"], images(), layers=missing,
                       mode=pooling, progress=False)
        labels = np.concatenate(ys)
        for n in missing:
            feats[n] = acts[n]
            feature_cache.save(ctx["cache_dir"], keys[n], acts[n], labels)
    return {n: feats[n] for n in layers}, labels


def gather_images(source: dict, data: dict, split: str, indices, progress: bool):
    """uint8 [len(indices), S, S, 3] eval-preprocessed images at positions `indices`."""
    import numpy as np

    wanted, found, seen = set(int(i) for i in indices), {}, 0
    for b in batches(source, data, split, progress, "images"):
        imgs = b["image"][b["valid"]]
        for i in wanted & set(range(seen, seen + len(imgs))):
            found[i] = imgs[i - seen]
        seen += len(imgs)
        if len(found) == len(wanted):
            break
    return np.stack([found[int(i)] for i in indices])


# ---------------------------------------------------------------------------------------------
# Evaluators: each returns (metrics for metrics.json, Markdown lines for report.md)
# ---------------------------------------------------------------------------------------------

def eval_linear(config, ctx: dict) -> tuple[dict, list[str]]:
    from ssl_jax.evaluation.frozen import evaluate_features

    (trx, try_), (tex, tey) = [final_features(ctx, config.checkpoint, ctx["source"], s)
                               for s in ctx["data"]["splits"]]
    metrics = evaluate_features(trx, try_, tex, tey, ctx["data"]["num_classes"],
                                knn_k=config.knn_k, knn_temperature=config.knn_temperature,
                                probe_grid=config.probe_grid,
                                few_shot_episodes=config.few_shot_episodes,
                                outdir=ctx["outdir"])
    lines = ["Reliability diagram of the linear probe (test split, 15 bins): "
             "`reliability.png`.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    return metrics, lines


def eval_per_layer(config, ctx: dict) -> tuple[dict, list[str]]:
    from ssl_jax.evaluation.per_layer import per_layer_probe, plot_per_layer

    if config.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {config.pooling!r}")
    source, (train_split, eval_split) = ctx["source"], ctx["data"]["splits"]
    layers = resolve_layers(config.layers, sown_layers(source, source["image_size"]))
    trf, try_ = layer_features(ctx, config.checkpoint, source, train_split, layers,
                               config.pooling)
    tef, tey = layer_features(ctx, config.checkpoint, source, eval_split, layers,
                              config.pooling)
    res = per_layer_probe(trf, try_, tef, tey, ctx["data"]["num_classes"],
                          probe_grid=config.probe_grid, progress=config.progress)
    short = {n: n.split("/")[-1] if len({m.split("/")[-1] for m in res}) == len(res) else n
             for n in res}
    res = {short[n]: {**v, "dim": int(trf[n].shape[1])} for n, v in res.items()}
    plot_per_layer({os.path.basename(os.path.normpath(config.checkpoint)): res},
                   os.path.join(ctx["outdir"], "per_layer.png"),
                   title=f"linear probe by layer ({config.pooling} pooling)")
    lines = [f"Pooling: {config.pooling}. Plot: `per_layer.png`.", "",
             "| layer | dim | top-1 | mean per class | best C |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['dim']} | {v['top1']:.2f} | {v['mean_per_class']:.2f} | "
              f"{v['best_C']:.3g} |" for n, v in res.items()]
    return {"pooling": config.pooling, "layers": res}, lines


def grouping_for(config, data: dict):
    from ssl_jax.evaluation import confusion

    name, names = data["name"], data["class_names"]
    if config.grouping:
        grouping = confusion.parse_grouping(config.grouping, names)
    elif name.split("/")[0] == "shapes_textures":
        grouping = confusion.shapes_textures_grouping(names)
    elif name.split(":")[0] == "imagenet2012" and data["num_classes"] == 1000:
        grouping = confusion.imagenet_grouping()
    else:
        raise ValueError(f"dataset {name!r} has no built-in grouping (built-in: "
                         f"shapes_textures/*, imagenet2012); set --config.grouping="
                         f"'group:class+class;...' with classes from {names[:20]}")
    confusion.check_grouping(grouping, data["num_classes"])
    return grouping


def probe_logits(config, ctx: dict, checkpoint: str, source: dict):
    from ssl_jax.evaluation.linear_probe import linear_probe

    (trx, try_), (tex, tey) = [final_features(ctx, checkpoint, source, s)
                               for s in ctx["data"]["splits"]]
    res = linear_probe(trx, try_, tex, tey, num_grid=config.probe_grid,
                       num_classes=ctx["data"]["num_classes"], calibrate=False,
                       return_logits=True)
    return res, tey


def eval_confusion(config, ctx: dict) -> tuple[dict, list[str]]:
    import numpy as np

    from ssl_jax.evaluation import confusion

    data = ctx["data"]
    grouping = grouping_for(config, data)
    groups = confusion.group_ids(grouping, data["num_classes"])
    res, tey = probe_logits(config, ctx, config.checkpoint, ctx["source"])
    logits = res["test_logits"]
    cm = confusion.confusion_matrix(tey, logits.argmax(1), data["num_classes"])
    acc = confusion.per_class_accuracy(cm)
    names = data["class_names"]
    confusion.plot_confusion(cm, grouping, names, os.path.join(ctx["outdir"], "confusion.png"),
                             title=f"{os.path.basename(os.path.normpath(config.checkpoint))}: "
                                   f"linear probe confusion")
    within = confusion.within_group_top5_error_fraction(logits, tey, groups)
    metrics = {"linear_top1": float(res["top1"]), "within_group_top5_error_fraction": within,
               "grouping": [[g, [names[c] for c in m]] for g, m in grouping],
               "per_class_accuracy": {names[c]: float(acc[c]) for c in range(len(acc))},
               "confusion_matrix": cm.tolist()}
    # Chance level of the fraction: a wrong class drawn uniformly from the other classes.
    sizes = np.bincount(groups)
    chance = float(np.mean([(sizes[groups[y]] - 1) / (len(groups) - 1) for y in tey]))
    metrics["within_group_chance"] = chance
    lines = [f"Linear probe top-1 {res['top1']:.2f}%. Heatmap (row-normalised, classes by "
             f"group): `confusion.png`.", "",
             f"Top-5 errors inside the true class's group: **{100 * within:.1f}%** "
             f"(uniform errors would give {100 * chance:.1f}%).", "",
             "| group | classes |", "|---|---|"]
    lines += [f"| {g} | {', '.join(names[c] for c in m)} |" for g, m in grouping]
    if config.reference:
        ref_source = load_source(config.reference, config.image_size, ctx["mesh"])
        ref_res, _ = probe_logits(config, ctx, config.reference, ref_source)
        ref_cm = confusion.confusion_matrix(tey, ref_res["test_logits"].argmax(1),
                                            data["num_classes"])
        diff = confusion.class_differences(acc, confusion.per_class_accuracy(ref_cm), names,
                                           k=config.top_classes)
        metrics.update(reference=os.path.abspath(config.reference),
                       reference_linear_top1=float(ref_res["top1"]), **diff)
        lines += ["", f"Per-class accuracy vs reference `{config.reference}` "
                      f"({ref_source['describe']}, top-1 {ref_res['top1']:.2f}%):", "",
                  "| | class | accuracy | reference | difference |", "|---|---|---|---|---|"]
        for kind in ("strongest", "weakest"):
            lines += [f"| {kind} | {r['class']} | {r['accuracy']:.1f} | "
                      f"{r['reference_accuracy']:.1f} | {r['difference']:+.1f} |"
                      for r in diff[kind]]
    return metrics, lines


def eval_retrieval(config, ctx: dict) -> tuple[dict, list[str]]:
    from ssl_jax.evaluation.retrieval import nearest_neighbours, plot_retrieval_grid

    source, data = ctx["source"], ctx["data"]
    train_split, eval_split = data["splits"]
    (gx, gy), (qx, qy) = [final_features(ctx, config.checkpoint, source, s)
                          for s in (train_split, eval_split)]
    queries = [int(q) for q in re.split(r"[+,]", config.queries) if q]
    bad = [q for q in queries if not 0 <= q < len(qx)]
    if not queries or bad:
        raise ValueError(f"queries {bad or config.queries!r} must be indices in [0, {len(qx)}) "
                         f"of the {eval_split} split")
    idx, sims = nearest_neighbours(qx[queries], gx, k=config.k)
    names = data["class_names"]
    q_img = gather_images(source, data, eval_split, queries, config.progress)
    n_img = gather_images(source, data, train_split, idx.ravel(), config.progress)
    plot_retrieval_grid(q_img, n_img.reshape(idx.shape + n_img.shape[1:]),
                        os.path.join(ctx["outdir"], "retrieval.png"),
                        [names[qy[q]] for q in queries],
                        [[names[gy[j]] for j in row] for row in idx], sims)
    same = float((gy[idx] == qy[queries][:, None]).mean())
    rows = [{"query": q, "query_label": names[qy[q]], "neighbours": idx[i].tolist(),
             "neighbour_labels": [names[gy[j]] for j in idx[i]],
             "similarities": sims[i].tolist()} for i, q in enumerate(queries)]
    lines = [f"Top-{config.k} cosine neighbours in `{train_split}` of `{eval_split}` queries: "
             f"`retrieval.png`. Neighbours sharing the query's label: {100 * same:.1f}%.", "",
             "| query | label | neighbours (label, cosine) |", "|---|---|---|"]
    lines += [f"| {r['query']} | {r['query_label']} | " + ", ".join(
        f"{lab} {s:.2f}" for lab, s in zip(r["neighbour_labels"], r["similarities"])) + " |"
        for r in rows]
    return {"k": config.k, "same_label_fraction": same, "queries": rows}, lines


def eval_similarity(config, ctx: dict) -> tuple[dict, list[str]]:
    import jax
    import numpy as np

    from ssl_jax.data import augment
    from ssl_jax.similarity import compare

    if not config.checkpoint_b:
        raise ValueError("the similarity evaluator needs --config.checkpoint_b (the second "
                         "network)")
    # Either network may be a run_train workdir or a converted checkpoint: both come through
    # load_source, like every other evaluator's checkpoint. Both see A's images.
    source_a = ctx["source"]
    source_b = load_source(config.checkpoint_b, config.image_size, ctx["mesh"])
    data = ctx["data"]
    split = data["splits"][1]
    batch = 8 * jax.device_count() * max(1, 64 // (8 * jax.device_count()))
    source = dict(source_a, batch_size=batch)

    def minibatches():
        seen = 0
        for b in batches(source, data, split, config.progress, "CKA", config.num_examples):
            if seen + batch > config.num_examples or not b["valid"].all():
                return  # whole batches only: every minibatch the same size
            seen += batch
            yield {"image": b["image"].astype(np.float32) / 255.0, "label": b["label"]}

    # Clean-vs-augmented CKA uses A's own training augmentations; a converted checkpoint has
    # none recorded, so that column is left out for it.
    aug, preset_name = None, None
    if source_a["augment"] is not None:
        preset_id, overrides = source_a["augment"]
        preset = augment.get_preset(preset_id, **overrides)
        aug = jax.jit(lambda key, x: augment.augment_views(key, x, preset.views[0]))
        preset_name = preset.name
    layer_set = config.layers
    result = compare.compare_networks(
        compare.layer_activations_fn(source_a["apply_fn"], config.activations, layer_set),
        source_a["apply_variables"],
        compare.layer_activations_fn(source_b["apply_fn"], config.activations, layer_set),
        source_b["apply_variables"], minibatches(), data["num_classes"], augment=aug)
    label_a = f"{source_a['name']} ({os.path.basename(os.path.normpath(config.checkpoint))})"
    label_b = f"{source_b['name']} ({os.path.basename(os.path.normpath(config.checkpoint_b))})"
    compare.plot_cka_matrix(result["cka"], result["layers_a"], result["layers_b"],
                            os.path.join(ctx["outdir"], "cka.png"), label_a, label_b)
    record = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}
    record.update(checkpoint_b=os.path.abspath(config.checkpoint_b),
                  source_b=source_b["describe"], split=split,
                  activations=config.activations, augmentation=preset_name,
                  image_size=source_a["image_size"], layer_set=layer_set,
                  best_match_b=compare.best_match(result["cka"]).tolist())
    la, lb = result["layers_a"], result["layers_b"]
    best = record["best_match_b"]
    lines = [f"A = {label_a}, B = {label_b} ({source_b['describe']}); `{split}`, minibatch "
             f"linear CKA (unbiased HSIC, batch {batch}), activations: {config.activations}, "
             f"layer set: {layer_set}. `cka.png`: the heatmap with each layer of A's most "
             "similar layer of B dotted, and per layer of A its CKA with B's same-named layer "
             "(diag) and with the most similar one (max).", "",
             "| layer of A | CKA with same-index layer of B | most similar layer of B (CKA) | "
             "CKA(A, labels) | CKA(A clean, A augmented) |", "|---|---|---|---|---|"]
    for i, n in enumerate(la):
        same = f"{result['cka'][i, i]:.3f}" if i < len(lb) else "-"
        match = f"{lb[best[i]]} ({result['cka'][i, best[i]]:.3f})"
        augmented = f"{result['augment_cka_a'][i]:.3f}" if aug is not None else "-"
        lines.append(f"| {n} | {same} | {match} | {result['label_cka_a'][i]:.3f} | "
                     f"{augmented} |")
    return record, lines


def eval_attention(config, ctx: dict) -> tuple[dict, list[str]]:
    import numpy as np

    from ssl_jax.data import pipeline
    from ssl_jax.evaluation import attention, attention_report

    source, data = ctx["source"], ctx["data"]
    train_split, eval_split = data["splits"]
    # Class scores for every checkpoint come from a linear head fitted on frozen train
    # features (self-supervised ones have no classifier; supervised ones are scored the same
    # way so that methods compare like for like).
    feats, labels = final_features(ctx, config.checkpoint, source, train_split)
    w, b = attention_report.fit_linear_head(feats, labels, data["num_classes"])
    builder = data["builder"]
    extra = ("mask",) if "mask" in builder.info.features else ()
    # No centre crop here: the dataset's foreground masks must stay aligned with the images.
    it = pipeline.eval_iterator(builder, eval_split, source["batch_size"],
                                source["image_size"], crop_fraction=1.0, extra_keys=extra)
    num_batches = -(-config.num_examples // source["batch_size"])
    images = ({**bt, "image": bt["image"] / np.float32(255)}
              for _, bt in zip(range(num_batches), it))
    # The module itself (not its apply): guided backprop clones it with a guided ReLU.
    record = attention_report.evaluate_attention(
        source["module"], source["apply_variables"], images, ctx["outdir"],
        head=attention.LinearHead(w, b, source["features_index"]),
        layer=config.layer or None,
        output_index=source["features_index"],
        title=os.path.basename(os.path.normpath(config.checkpoint)))
    return record, attention_report.markdown_section(record).splitlines()


EVALUATE = {"linear": eval_linear, "per_layer": eval_per_layer, "confusion": eval_confusion,
            "retrieval": eval_retrieval, "similarity": eval_similarity,
            "attention": eval_attention}


def check_config(config) -> None:
    """What can be checked without JAX or TensorFlow (a bad command fails in a second): the
    evaluator, and that every checkpoint directory named exists."""
    if config.evaluator not in EVALUATE:
        raise ValueError(f"unknown evaluator {config.evaluator!r}; valid: "
                         f"{', '.join(EVALUATORS)}")
    if not config.checkpoint:
        raise ValueError("--config.checkpoint is required (a run_train workdir or a converted "
                         "checkpoint directory)")
    for key in ("checkpoint", "checkpoint_b", "reference"):
        path = config.get(key)
        if path and not os.path.isdir(path):
            raise FileNotFoundError(f"--config.{key}={path}: no such directory; pass a "
                                    "run_train workdir or a converted checkpoint directory")


def run(config, outdir: str) -> dict:
    """Runs `config.evaluator`; writes OUTDIR/metrics.json, figures and report.md; returns the
    metrics.json record."""
    check_config(config)
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX
    from ssl_jax import sharding

    mesh = sharding.make_mesh()
    source = load_source(config.checkpoint, config.image_size, mesh)
    data = open_data(config, source)
    os.makedirs(outdir, exist_ok=True)
    ctx = {"source": source, "data": data, "mesh": mesh, "outdir": outdir,
           "cache_dir": config.cache_dir or os.path.join(outdir, "feature_cache"),
           "cache_hits": [], "progress": config.progress}
    metrics, lines = EVALUATE[config.evaluator](config, ctx)
    record = {"evaluator": config.evaluator, "checkpoint": os.path.abspath(config.checkpoint),
              "source": source["describe"], "dataset": data["name"],
              "splits": list(data["splits"]), "config": config.to_dict(),
              "feature_cache_hits": ctx["cache_hits"], "metrics": metrics}
    with open(os.path.join(outdir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    head = [f"# {config.evaluator} evaluation of `{config.checkpoint}`", "",
            f"{source['describe']}; `{data['name']}` {data['splits'][0]} -> "
            f"{data['splits'][1]}. Metrics: `metrics.json`.", ""]
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write("\n".join(head + lines) + "\n")
    print("\n".join(head + lines))
    return record


def main():
    # Flags and the config file are checked before JAX and TensorFlow are imported (seconds).
    errors.parse_flags(FLAGS, sys.argv, module=__name__)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every restore step at INFO
    run(FLAGS.config, FLAGS.outdir)


def cli():
    """Console entry point (`ssl-jax-eval`): main() under the one-line error policy."""
    errors.run(main)


if __name__ == "__main__":
    cli()
