"""Confusion evaluator (configs/eval/confusion.py): the linear probe's confusion matrix with
classes ordered by group (the built-in grouping of shapes_textures or ImageNet's, or
`grouping`), the fraction of top-5 errors inside the true class's group against its chance
level, and, with a `reference` network, the `top_classes` classes it recognises most better and
worse than the reference; with an `outdir`, the heatmap (confusion.png)."""
from __future__ import annotations

import os

import numpy as np

from ssl_jax.evaluation import confusion
from ssl_jax.evaluation.linear_probe import linear_probe
from ssl_jax.evaluators.inputs import load_network


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    network, data = inputs.needs_network("the confusion evaluator")
    grouping = grouping_for(settings.get("grouping", ""), data)
    groups = confusion.group_ids(grouping, data.num_classes)
    res, test_y = probe_logits(inputs, settings.probe_grid)
    logits = res["test_logits"]
    cm = confusion.confusion_matrix(test_y, logits.argmax(1), data.num_classes)
    acc = confusion.per_class_accuracy(cm)
    names = data.class_names
    if outdir:
        confusion.plot_confusion(cm, grouping, names, os.path.join(outdir, "confusion.png"),
                                 title=f"{network.label}: linear probe confusion")
    # Chance level of the fraction: a wrong class drawn uniformly from the other classes.
    sizes = np.bincount(groups)
    chance = float(np.mean([(sizes[groups[y]] - 1) / (len(groups) - 1) for y in test_y]))
    metrics = {"linear_top1": float(res["top1"]),
               "within_group_top5_error_fraction":
                   confusion.within_group_top5_error_fraction(logits, test_y, groups),
               "within_group_chance": chance,
               "grouping": [[g, [names[c] for c in m]] for g, m in grouping],
               "per_class_accuracy": {names[c]: float(acc[c]) for c in range(len(acc))},
               "confusion_matrix": cm.tolist()}
    if settings.get("reference"):
        reference = load_network(settings.reference, settings.get("image_size", 0), inputs.mesh)
        ref_res, _ = probe_logits(inputs.with_network(reference), settings.probe_grid)
        ref_cm = confusion.confusion_matrix(test_y, ref_res["test_logits"].argmax(1),
                                            data.num_classes)
        diff = confusion.class_differences(acc, confusion.per_class_accuracy(ref_cm), names,
                                           k=settings.top_classes)
        metrics.update(reference=os.path.abspath(settings.reference),
                       reference_describe=reference.describe,
                       reference_linear_top1=float(ref_res["top1"]), **diff)
    return metrics


def grouping_for(spec: str, data) -> list:
    """[(group, [class ids])]: `spec` ('group:class+class;...') or the dataset's built-in one."""
    name, names = data.name, data.class_names
    if spec:
        grouping = confusion.parse_grouping(spec, names)
    elif name.split("/")[0] == "shapes_textures":
        grouping = confusion.shapes_textures_grouping(names)
    elif name.split(":")[0] == "imagenet2012" and data.num_classes == 1000:
        grouping = confusion.imagenet_grouping()
    else:
        raise ValueError(f"dataset {name!r} has no built-in grouping (built-in: "
                         f"shapes_textures/*, imagenet2012); set --config.grouping="
                         f"'group:class+class;...' with classes from {names[:20]}")
    confusion.check_grouping(grouping, data.num_classes)
    return grouping


def probe_logits(inputs, probe_grid: int):
    """(the linear probe's result with its test logits, test labels) of `inputs`' features."""
    (train_x, train_y), (test_x, test_y) = inputs.train(), inputs.test()
    res = linear_probe(train_x, train_y, test_x, test_y, num_grid=probe_grid,
                       num_classes=inputs.num_classes, calibrate=False, return_logits=True)
    return res, test_y


def markdown(metrics: dict, settings) -> list[str]:
    within, chance = metrics["within_group_top5_error_fraction"], metrics["within_group_chance"]
    lines = [f"Linear probe top-1 {metrics['linear_top1']:.2f}%. Heatmap (row-normalised, "
             f"classes by group): `confusion.png`.", "",
             f"Top-5 errors inside the true class's group: **{100 * within:.1f}%** "
             f"(uniform errors would give {100 * chance:.1f}%).", "",
             "| group | classes |", "|---|---|"]
    lines += [f"| {g} | {', '.join(members)} |" for g, members in metrics["grouping"]]
    if "reference" in metrics:
        lines += ["", f"Per-class accuracy vs reference `{settings.reference}` "
                      f"({metrics['reference_describe']}, top-1 "
                      f"{metrics['reference_linear_top1']:.2f}%):", "",
                  "| | class | accuracy | reference | difference |", "|---|---|---|---|---|"]
        for kind in ("strongest", "weakest"):
            lines += [f"| {kind} | {r['class']} | {r['accuracy']:.1f} | "
                      f"{r['reference_accuracy']:.1f} | {r['difference']:+.1f} |"
                      for r in metrics[kind]]
    return lines
