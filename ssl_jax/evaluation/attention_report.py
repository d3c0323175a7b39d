"""Attention evaluation of one network over a dataset: metrics JSON, overlay PNG, Markdown.

    w, b = fit_linear_head(train_features, train_labels, num_classes)   # frozen features
    record = evaluate_attention(net, variables, batches, outdir,
                                head=attention.FittedLinearReadout(w, b, 0), output_index=0)

Maps per example (ssl_jax.evaluation.attention): Grad-CAM and Guided Grad-CAM (channel
max |.|) at ``layer`` (default: the last tapped conv layer), 003's vanilla saliency and 004's
feature-space occlusion, all for the example's true label through ``head``. Scores: sharpness
of each map, localisation IoU with the ground-truth ``mask`` when batches carry one, and
IoU / Spearman between each pair of maps; averaged over examples (NaNs, i.e. all-zero maps,
skipped and counted).

Why a fitted linear head even for supervised checkpoints: one definition of "the class score"
for every method (self-supervised checkpoints have no classifier), as in 003's saliency.
"""
from __future__ import annotations

import itertools
import json
import os
from functools import partial
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.evaluation import attention as A
from ssl_jax.evaluation.linear_probe import fit_logistic_regression
from ssl_jax.models.taps import PERTURBATIONS
from ssl_jax.similarity.activations import flatten_intermediates

MAPS = ("grad_cam", "guided_grad_cam", "saliency", "occlusion")


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int,
                    C: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(w [D, K], b [K]) of an L2 logistic regression on standardised frozen features, folded
    back so that logits = raw_features @ w + b (standardising makes one C fit any scale)."""
    mu, sd = features.mean(0), features.std(0) + 1e-6
    params, _ = fit_logistic_regression((features - mu) / sd, labels, C, num_classes=num_classes)
    w = params.w / sd[:, None]
    return w, params.b - jnp.asarray(mu) @ w


def last_conv_layer(model: Any, variables: Mapping, x: jax.Array, min_side: int = 4) -> str:
    """Name of the last differentiable ([N, h, w, K]) tapped layer, in forward order, whose
    map is at least min_side x min_side (else the last of the largest). Grad-CAM on a 1 x 1
    map is a constant: a ResNet's layer4 at 32 px with the strided stem is 1 x 1, its layer2
    4 x 4; at 224 px layer4 is 7 x 7 and is chosen."""
    apply = A.as_apply_fn(model)
    shapes: dict[str, tuple] = {}

    def record_shapes(v, xi):
        _, state = apply(v, xi, train=False, mutable=["intermediates", PERTURBATIONS])
        # Read while tracing: the sown dict is in forward order here, while eval_shape's
        # output would come back with its keys sorted.
        shapes.update((k, t.shape) for k, t in
                      flatten_intermediates(state.get(PERTURBATIONS, {})).items())

    # Tracing is enough: running the network eagerly would dispatch (and on CPU compile)
    # every convolution one by one.
    jax.eval_shape(record_shapes, variables, x)
    conv = [k for k, s in shapes.items() if len(s) == 4]
    if not conv:
        raise ValueError(f"no tapped conv layer; tapped layers: {sorted(shapes) or 'none'}")
    wide = [k for k in conv if min(shapes[k][1:3]) >= min_side]
    if wide:
        return wide[-1]
    largest = max(min(shapes[k][1:3]) for k in conv)
    return [k for k in conv if min(shapes[k][1:3]) == largest][-1]


@partial(jax.jit, static_argnames=("model", "layer", "output_index", "patch", "stride"))
def attention_maps(model: Any, variables: Mapping, head: A.Head, x: jax.Array,
                   target: jax.Array, *, layer: str, output_index: Optional[int], patch: int,
                   stride: int) -> dict[str, jax.Array]:
    """{map name: [N, H, W]} of images x [N, H, W, 3] for class indices target [N].

    One module-level jit, so every network with the same architecture (the main job's
    random-init and SimCLR nets, checkpoints of one run) reuses one compiled program: the
    variables and ``head`` (None or a pytree such as attention.FittedLinearReadout) are
    arguments."""
    def features(v, xi):
        out = A.as_apply_fn(model)(v, xi, train=False)
        return out if output_index is None else out[output_index]

    return {
        "grad_cam": A.grad_cam(model, variables, x, layer, target, head),
        "guided_grad_cam": A.channel_max_abs(
            A.guided_grad_cam(model, variables, x, layer, target, head)),
        "saliency": A.vanilla_saliency(model, variables, x, target, head),
        "occlusion": A.occlusion_map(lambda xi: features(variables, xi), x, patch, stride),
    }


def score_maps(maps: Mapping[str, np.ndarray], mask: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-example scores [N] of one batch of maps: sharpness/<map>, localisation_iou/<map>
    (with a mask), iou/<a>~<b> and spearman/<a>~<b> for every pair."""
    out = {}
    for name, m in maps.items():
        out[f"sharpness/{name}"] = np.asarray(A.sharpness(m))
        if mask is not None:
            out[f"localisation_iou/{name}"] = np.asarray(A.localisation_iou(m, mask))
    for a, b in itertools.combinations(maps, 2):
        out[f"iou/{a}~{b}"] = np.asarray(A.map_iou(maps[a], maps[b]))
        out[f"spearman/{a}~{b}"] = np.asarray(A.spearman(maps[a], maps[b]))
    return out


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [N, R, R(, 1)] masks to the image size (eval resizes images
    without cropping here, so the two stay aligned)."""
    mask = mask[..., 0] if mask.ndim == 4 else mask
    if mask.shape[1:] == size:
        return mask
    rows = (np.arange(size[0]) * mask.shape[1] // size[0])
    cols = (np.arange(size[1]) * mask.shape[2] // size[1])
    return mask[:, rows][:, :, cols]


def save_overlays(images: np.ndarray, maps: Mapping[str, np.ndarray], path: str,
                  masks: Optional[np.ndarray] = None, titles: Optional[list[str]] = None) -> None:
    """PNG grid: one row per example, the image (mask outline in white) then each map as a
    heatmap (normalised to its max) over the image. images: [N, H, W, 3] in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.8 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(np.clip(images[i], 0, 1))
        if masks is not None:
            axes[i, 0].contour(masks[i], levels=[0.5], colors="white", linewidths=0.8)
        axes[i, 0].set_ylabel(titles[i] if titles else "", fontsize=7)
        for j, (name, m) in enumerate(maps.items(), start=1):
            peak = float(np.max(m[i])) or 1.0
            axes[i, j].imshow(np.clip(images[i], 0, 1))
            axes[i, j].imshow(m[i] / peak, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_attention(model: Any, variables: Mapping, batches: Iterable[Mapping[str, np.ndarray]],
                       outdir: str, head: A.Head, layer: Optional[str] = None,
                       output_index: Optional[int] = None, patch: Optional[int] = None,
                       stride: Optional[int] = None, num_overlays: int = 8,
                       title: str = "network") -> dict:
    """Attention maps + scores over ``batches`` ({"image": float [b, H, W, 3] in [0, 1],
    "label": [b], optional "mask": [b, R, R(, 1)], optional "valid": bool [b]}).

    model: Linen module (or apply function) taking images in [0, 1]; ``head`` maps its output
    to logits: None (the output is the logits) or a pytree callable such as
    attention.FittedLinearReadout, since it is an argument of the jitted ``attention_maps``.
    ``output_index`` selects the features when the output is a tuple (which is also what
    occlusion compares). patch / stride default to H // 4 and H // 8 (004 gives no
    values). Writes OUTDIR/attention.json, attention.png, attention.md; returns the record.
    """
    scores: dict[str, list[np.ndarray]] = {}
    shown: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "mask", "label", *MAPS)}
    n_seen = 0
    for i, batch in enumerate(batches):
        x = jnp.asarray(batch["image"], jnp.float32)
        valid = np.asarray(batch.get("valid", np.ones(len(x), bool)))
        if i == 0:  # defaults from the image size
            h = x.shape[1]
            layer = layer or last_conv_layer(model, variables, x)
            patch, stride = patch or max(1, h // 4), stride or max(1, h // 8)
        out = attention_maps(model, variables, head, x, jnp.asarray(batch["label"], jnp.int32),
                             layer=layer, output_index=output_index, patch=patch, stride=stride)
        maps = {k: np.asarray(out[k])[valid] for k in MAPS}  # jit returns keys sorted
        mask = batch.get("mask")
        mask = None if mask is None else _resize_mask(np.asarray(mask), tuple(x.shape[1:3]))[valid]
        for k, v in score_maps(maps, mask).items():
            scores.setdefault(k, []).append(v)
        if len(shown["image"]) < num_overlays:
            take = num_overlays - len(shown["image"])
            shown["image"] += list(np.asarray(x)[valid][:take])
            shown["label"] += list(np.asarray(batch["label"])[valid][:take])
            if mask is not None:
                shown["mask"] += list(mask[:take])
            for k in MAPS:
                shown[k] += list(maps[k][:take])
        n_seen += int(valid.sum())
    if not scores:
        raise ValueError("batches is empty")

    per_example = {k: np.concatenate(v) for k, v in scores.items()}
    metrics = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
               for k, v in per_example.items()}
    undefined = {k: int(np.isnan(v).sum()) for k, v in per_example.items() if np.isnan(v).any()}
    os.makedirs(outdir, exist_ok=True)
    save_overlays(np.stack(shown["image"]), {k: np.stack(shown[k]) for k in MAPS},
                  os.path.join(outdir, "attention.png"),
                  np.stack(shown["mask"]) if shown["mask"] else None,
                  [f"label {int(y)}" for y in shown["label"]])
    record = {"title": title, "layer": layer, "patch": patch, "stride": stride,
              "num_examples": n_seen, "metrics": metrics, "nan_counts": undefined}
    with open(os.path.join(outdir, "attention.json"), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(outdir, "attention.md"), "w") as f:
        f.write(markdown_section(record) + "\n")
    return record


def markdown_section(record: Mapping) -> str:
    """The "Attention" report section of one evaluate_attention record."""
    m = record["metrics"]
    lines = [f"## Attention: {record['title']}", "",
             f"{record['num_examples']} examples; Grad-CAM / Guided Grad-CAM at "
             f"`{record['layer']}`, saliency through a linear head, occlusion patch "
             f"{record['patch']} stride {record['stride']}. Overlays: `attention.png`.", "",
             "| map | sharpness | localisation IoU |", "|---|---|---|"]
    for name in MAPS:
        loc = m.get(f"localisation_iou/{name}")
        lines.append(f"| {name} | {m[f'sharpness/{name}']:.3f} | "
                     f"{'-' if loc is None else f'{loc:.3f}'} |")
    lines += ["", "| map pair | IoU (50% of max) | Spearman |", "|---|---|---|"]
    for a, b in itertools.combinations(MAPS, 2):
        lines.append(f"| {a} ~ {b} | {m[f'iou/{a}~{b}']:.3f} | {m[f'spearman/{a}~{b}']:.3f} |")
    return "\n".join(lines)
