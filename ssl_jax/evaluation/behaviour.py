"""002's behavioural comparison of one trained network on the built-in dataset, shared by the
main job's report (experiments/quickstart.py) and experiments/behaviour.py.

For a network: a linear head fitted on frozen train features (one decision rule for every
method: self-supervised ones have no classifier), its accuracy on the `test` split (texture and
background independent of the class), shape bias on `cue_conflict` (shape = `label`, texture =
`texture_class`), uniform-noise and contrast robustness curves, and the attention report's
localisation IoUs with the true masks (`attention_report.evaluate_attention`); optionally its
accuracy and per-image correctness on silhouette and edge stimuli (`ssl_jax.evaluation.stimuli`).
Per-image correctness is also kept on `cue_conflict` (a decision is correct when it names the
shape, as in 002's cue-conflict error consistency), so `stimulus_error_consistency` gives the
kappa matrix between networks on any of the three sets.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MAPS = ("grad_cam", "guided_grad_cam", "saliency", "occlusion")
# The main job's two families; experiments/behaviour.py runs all twelve of 002
# (distortions.DISTORTION_LEVELS).
FAMILIES = ("uniform_noise", "contrast")


def load_split(builder, split: str, limit: int) -> dict[str, np.ndarray]:
    """The first `limit` examples of a built-in-dataset split, in order:
    {"image" float [N, R, R, 3] in [0, 1], "label", "texture_class", "mask" [N, R, R]}."""
    import tensorflow_datasets as tfds
    keys = ("image", "label", "texture_class", "mask")
    rows = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).take(limit)))
    out = {k: np.stack([r[k] for r in rows]) for k in keys}
    out["image"] = out["image"].astype(np.float32) / 255.0
    out["mask"] = out["mask"][..., 0]
    return out


def batched_decisions(predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    """predict(images [b, ...]) -> decisions [b], over `images` in batches of `batch_size`."""
    return np.concatenate([np.asarray(predict(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def score_stimuli(predict, stimuli: Mapping[str, np.ndarray], batch_size: int = 256) -> dict:
    """Accuracy and per-image correctness (for error consistency) on a stimulus set
    ({"image" uint8 [N, H, W, 3], "label" [N]}, `stimuli.stimulus_set`); the images are fed as
    floats in [0, 1], what the networks were trained on."""
    images = np.asarray(stimuli["image"], np.float32) / 255.0
    correct = batched_decisions(predict, images, batch_size) == np.asarray(stimuli["label"])
    return {"accuracy": float(np.mean(correct)), "correct": correct.tolist()}


def score_cue_conflict(predict, cue: Mapping[str, np.ndarray], batch_size: int = 256) -> dict:
    """Shape bias of `predict`'s decisions on a `load_split` cue_conflict split, overall and per
    shape class, the shape / texture / other decision fractions, and per-image correctness
    (correct = the decision names the shape) for error consistency between networks."""
    from ssl_jax.data.builtin import SHAPE_NAMES
    from ssl_jax.evaluation import shape_bias as S

    bias = S.evaluate_shape_bias(predict, cue["image"], cue["label"], cue["texture_class"],
                                 categories=SHAPE_NAMES, batch_size=batch_size)
    correct = bias["predictions"] == np.asarray(cue["label"])
    return {"shape_bias": bias["shape_bias"], "cue_fractions": bias["fractions"],
            "shape_bias_per_category": bias["per_category"],
            "cue_conflict": {"accuracy": float(np.mean(correct)), "correct": correct.tolist()}}


def network_group(name: str) -> str:
    """Default group of a network for error-consistency summaries, from its run name:
    "random" for random init, "supervised" for supervised runs, "self-supervised" otherwise."""
    if "random" in name:
        return "random"
    return "supervised" if name.startswith("supervised") else "self-supervised"


def stimulus_error_consistency(results: Mapping[str, dict], kind: str,
                               groups: Mapping[str, str] | None = None) -> dict:
    """Error consistency between networks on the `kind` stimuli ("cue_conflict", "silhouette",
    "edge") of `evaluate_behaviour` records by network name, all scored on the same images.

    Returns {"names", "kappa": [n, n] Cohen's kappa, "observed": [n, n] fraction of images
    where both are right or both wrong, "expected": [n, n] that fraction for independent
    networks of these accuracies (kappa 0), "groups": `group_consistency` of each of the three
    matrices by group pair (groups: {network: group}, default `network_group`)}."""
    from ssl_jax.evaluation import error_consistency as E

    correct = {name: np.asarray(r["stimuli"][kind]["correct"], bool)
               for name, r in results.items()}
    names, kappa = E.error_consistency_matrix(correct)
    acc = [correct[n].mean() for n in names]
    observed = np.array([[np.mean(correct[a] == correct[b]) for b in names] for a in names])
    expected = np.array([[E.expected_consistency(pa, pb) for pb in acc] for pa in acc])
    groups = groups or {n: network_group(n) for n in names}
    summary = {key: E.group_consistency(names, m, groups)
               for key, m in (("kappa", kappa), ("observed", observed), ("expected", expected))}
    return {"names": names, "kappa": kappa, "observed": observed, "expected": expected,
            "groups": summary}


@partial(jax.jit, static_argnums=0)
def _decisions(net, variables, head, x):
    # Module level with the net static and the weights as arguments: networks of one
    # architecture (the main job's random-init and SimCLR nets) share one compiled program.
    return jnp.argmax(head(net.apply(variables, x, train=False)), -1)


def evaluate_behaviour(method, state, train_features: np.ndarray, train_labels: np.ndarray,
                       num_classes: int, data: Mapping[str, Mapping[str, np.ndarray]],
                       outdir: str, title: str, attention_examples: int = 256,
                       batch_size: int = 256, families: Sequence[str] = FAMILIES) -> dict:
    """One network's behaviour record. `train_features`, `train_labels`: its frozen features of
    the train split (train.extract_features of `method.features`, e.g. those the frozen
    evaluation already extracted), on which the linear head is fitted; `data`:
    {"test": ..., "cue_conflict": ...} from `load_split`, optionally with "silhouette" and
    "edge" stimulus sets (`stimuli.stimulus_set`, scored into the record's "stimuli");
    attention overlays and their report go to `outdir`. The record's "stimuli" also holds
    "cue_conflict": the fraction of shape decisions and per-image shape correctness;
    "shape_bias_per_category": shape bias over the stimuli of each shape class. Each of
    `families`' robustness records holds, per level, the accuracy, the response concentration
    (the share of decisions going to the most chosen class: 002's collapse under noise) and the
    [truth, decision] confusion counts."""
    from ssl_jax.evaluation import attention as A
    from ssl_jax.evaluation import attention_report as R
    from ssl_jax.evaluation import distortions as D
    from ssl_jax.evaluation.stimuli import STIMULUS_KINDS

    w, b = R.fit_linear_head(train_features, train_labels, num_classes)
    head = A.FittedLinearReadout(w, b, 0)
    variables = {"params": state.params, **state.model_state}

    def predict(x):
        # Padded to batch_size: a split's last, shorter batch would compile a second program.
        n = len(x)
        x = jnp.pad(jnp.asarray(x), [(0, batch_size - n)] + [(0, 0)] * (x.ndim - 1))
        return np.asarray(_decisions(method.net, variables, head, x))[:n]

    test, cue = data["test"], data["cue_conflict"]
    acc = float(np.mean(batched_decisions(predict, test["image"], batch_size) == test["label"]))
    bias = score_cue_conflict(predict, cue, batch_size)
    curves = {f: D.robustness_curve(predict, test["image"], test["label"], f,
                                    batch_size=batch_size) for f in families}
    batches = ({"image": test["image"][i:i + 32], "label": test["label"][i:i + 32],
                "mask": test["mask"][i:i + 32]} for i in range(0, attention_examples, 32))
    attention = R.evaluate_attention(method.net, variables, batches, outdir, head=head,
                                     output_index=0, title=title)
    return {"test_accuracy": acc, "shape_bias": bias["shape_bias"],
            "cue_fractions": bias["cue_fractions"],
            "shape_bias_per_category": bias["shape_bias_per_category"],
            "robustness": {f: robustness_record(c, test["label"], num_classes)
                           for f, c in curves.items()},
            "attention": attention["metrics"], "attention_layer": attention["layer"],
            "stimuli": {"cue_conflict": bias["cue_conflict"],
                        **{k: score_stimuli(predict, data[k], batch_size)
                           for k in STIMULUS_KINDS if k in data}}}


def robustness_record(curve: Mapping, labels: np.ndarray, num_classes: int) -> dict:
    """A `distortions.robustness_curve` without its raw predictions: levels, accuracy, and per
    level the response concentration and the [truth, decision] confusion counts."""
    from ssl_jax.evaluation import distortions as D
    from ssl_jax.evaluation.confusion import confusion_matrix

    confusions = [confusion_matrix(labels, p, num_classes) for p in curve["predictions"]]
    return {"levels": curve["levels"], "accuracy": curve["accuracy"],
            "response_concentration": [D.response_concentration(m) for m in confusions],
            "confusion": [m.tolist() for m in confusions]}


def markdown_lines(results: Mapping[str, dict],
                   groups: Mapping[str, str] | None = None) -> list[str]:
    """Tables of `evaluate_behaviour` records by network name: accuracy, shape bias (with the
    shape / texture / other decision fractions), localisation IoU per map, accuracy on the
    silhouette / edge stimuli, and accuracy under each robustness family's levels; with two or
    more networks, their error consistency on each stimulus set (`error_consistency_lines`)."""
    from ssl_jax.evaluation.stimuli import STIMULUS_KINDS

    lines = ["| network | test acc. | shape bias | shape / texture / other decisions | "
             "loc. IoU " + " / ".join(MAPS) + " |", "|---|---|---|---|---|"]
    for name, r in results.items():
        loc = " / ".join(f"{r['attention'][f'localisation_iou/{m}']:.2f}" for m in MAPS)
        fr = r["cue_fractions"]
        lines.append(f"| {name} | {100 * r['test_accuracy']:.1f}% | {r['shape_bias']:.3f} | "
                     f"{fr['shape']:.2f} / {fr['texture']:.2f} / {fr['other']:.2f} | {loc} |")
    some = next(iter(results.values()))
    kinds = [k for k in STIMULUS_KINDS if k in some.get("stimuli", {})]
    if kinds:
        lines += ["", "| network | " + " | ".join(f"{k} acc." for k in kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        lines += [f"| {name} | " + " | ".join(f"{100 * r['stimuli'][k]['accuracy']:.1f}%"
                                              for k in kinds) + " |"
                  for name, r in results.items()]
    if len(results) >= 2:
        for kind in ("cue_conflict", *kinds):
            if all(kind in r.get("stimuli", {}) for r in results.values()):
                lines += [""] + error_consistency_lines(results, kind, groups)
    for family in some["robustness"]:
        levels = some["robustness"][family]["levels"]
        lines += ["", f"Accuracy (%) under {family}:", "",
                  "| network | " + " | ".join(str(v) for v in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for name, r in results.items():
            acc = r["robustness"][family]["accuracy"]
            lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in acc) + " |")
    return lines


def error_consistency_lines(results: Mapping[str, dict], kind: str,
                            groups: Mapping[str, str] | None = None) -> list[str]:
    """Markdown of `stimulus_error_consistency` on `kind`: the kappa matrix, then per group
    pair (with at least one network pair) the mean kappa (std over pairs), and the mean
    observed and chance-level consistency (the fraction of images both get right or both
    wrong, and its value for independent networks of the same accuracies)."""
    ec = stimulus_error_consistency(results, kind, groups)
    names, groups = ec["names"], ec["groups"]
    note = "; correct = the decision names the shape" if kind == "cue_conflict" else ""
    lines = [f"Error consistency between networks on `{kind}` (Cohen's kappa of per-image "
             f"correctness{note}):", "",
             "| kappa | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {a} | " + " | ".join(f"{k:.2f}" for k in row) + " |"
              for a, row in zip(names, ec["kappa"])]
    lines += ["", "| groups | pairs | mean kappa (std) | observed consistency | "
              "expected by chance |", "|---|---|---|---|---|"]
    for pair, k in groups["kappa"].items():
        n = groups["expected"][pair]["n"]  # every pair; kappa skips undefined (nan) ones
        if n:
            lines.append(f"| {pair[0]} / {pair[1]} | {n} | {k['mean']:.2f} ({k['std']:.2f}) | "
                         f"{groups['observed'][pair]['mean']:.2f} | "
                         f"{groups['expected'][pair]['mean']:.2f} |")
    return lines


def plot_robustness(results: Mapping[str, dict], outdir: str) -> list[str]:
    """OUTDIR/robustness_<family>.png for each family of the records; returns the paths."""
    from ssl_jax.evaluation import distortions as D
    paths = []
    for family in next(iter(results.values()))["robustness"]:
        path = os.path.join(outdir, f"robustness_{family}.png")
        D.plot_robustness_curves({n: r["robustness"][family] for n, r in results.items()},
                                 path, title=family)
        paths.append(path)
    return paths


def plot_robustness_grid(results: Mapping[str, dict], path: str,
                         human: Mapping[str, Mapping] | None = None, title: str = "") -> None:
    """002 figure 3 in miniature: one panel per family of the records (accuracy against level,
    a line per network, chance dotted) with, where `human` has the family
    (human_robustness.human_robustness_curves), the humans' accuracy dashed. The humans saw
    002's ImageNet photographs, not these images: the panels say so."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(next(iter(results.values()))["robustness"])
    cols = min(4, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows), squeeze=False)
    markers = "Dosv^<>phx*"
    num_classes = len(next(iter(results.values()))["robustness"][families[0]]["confusion"][0])
    for ax, family in zip(axes.ravel(), families):
        levels = [str(v) for v in results[next(iter(results))]["robustness"][family]["levels"]]
        x = range(len(levels))
        for i, (name, r) in enumerate(results.items()):
            ax.plot(x, r["robustness"][family]["accuracy"], marker=markers[i % len(markers)],
                    markersize=3, lw=1, label=name)
        if human and family in human:
            ax.plot(x, human[family]["accuracy"], "k--", lw=1.2,
                    label="humans (002's stimuli)")
        ax.axhline(1.0 / num_classes, color="grey", ls=":", lw=0.8)
        ax.set_xticks(list(x), levels, rotation=45, fontsize=6)
        ax.set_ylim(0, 1.02)
        ax.set_title(family, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.ravel()[len(families):]:
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7,
               frameon=False)
    note = ("; dashed: humans of 002 on its ImageNet photographs (other images, 16 classes)"
            if human else "")
    fig.suptitle((title + ": " if title else "") + "accuracy vs distortion level, dotted: "
                 "chance" + note, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def noise_collapse_lines(results: Mapping[str, dict], family: str = "uniform_noise"
                         ) -> list[str]:
    """Markdown: the response concentration (share of decisions on the most chosen class; 1 /
    classes when spread evenly, 1 when every decision is one class) per level of `family`, per
    network: 002's finding that networks collapse onto one class under noise while humans
    spread their errors."""
    some = next(iter(results.values()))["robustness"][family]
    num_classes = len(some["confusion"][0])
    lines = [f"Response concentration under {family} (share of decisions on the most chosen "
             f"class; {1 / num_classes:.2f} = spread evenly, 1 = collapse onto one class):", "",
             "| network | " + " | ".join(str(v) for v in some["levels"]) + " |",
             "|---|" + "---|" * len(some["levels"])]
    lines += [f"| {name} | " + " | ".join(
        f"{c:.2f}" for c in r["robustness"][family]["response_concentration"]) + " |"
        for name, r in results.items()]
    return lines


def plot_noise_confusions(results: Mapping[str, dict], class_names: Sequence[str],
                          outdir: str, family: str = "uniform_noise") -> list[str]:
    """OUTDIR/confusion_<family>_<network>.png: each network's confusion matrices across the
    family's levels (002 figure 4: a collapse shows as one bright row); returns the paths."""
    from ssl_jax.evaluation import distortions as D
    paths = []
    for name, r in results.items():
        rec = r["robustness"][family]
        path = os.path.join(outdir, f"confusion_{family}_{name}.png")
        D.plot_confusion_matrices([np.asarray(m) for m in rec["confusion"]],
                                  [str(v) for v in rec["levels"]], class_names, path,
                                  title=f"{name}: {family}")
        paths.append(path)
    return paths
