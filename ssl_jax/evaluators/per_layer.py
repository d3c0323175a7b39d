"""Per-layer evaluator (configs/eval/per_layer.py): the 004 linear probe on the pooled
activations (`pooling`: gap or flatten) of each named layer (`layers`, '+'-separated; "" for the
stage outputs), one forward pass per split for all layers; with an `outdir`, the accuracy by
layer (per_layer.png)."""
from __future__ import annotations

import os

from ssl_jax.evaluation.per_layer import per_layer_probe, plot_per_layer


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    network, data = inputs.needs_network("the per_layer evaluator")
    layers = inputs.layers(settings.layers)
    train_feats, train_y = inputs.layer_features(data.train_split, layers, settings.pooling)
    test_feats, test_y = inputs.layer_features(data.eval_split, layers, settings.pooling)
    res = per_layer_probe(train_feats, train_y, test_feats, test_y, data.num_classes,
                          probe_grid=settings.probe_grid,
                          progress=settings.get("progress", False))
    # Last name components when they are unique ("layer1" rather than "backbone/layer1").
    unique = len({n.split("/")[-1] for n in res}) == len(res)
    res = {(n.split("/")[-1] if unique else n): {**v, "dim": int(train_feats[n].shape[1])}
           for n, v in res.items()}
    if outdir:
        plot_per_layer({network.label: res}, os.path.join(outdir, "per_layer.png"),
                       title=f"linear probe by layer ({settings.pooling} pooling)")
    return {"pooling": settings.pooling, "layers": res}


def markdown(metrics: dict, settings) -> list[str]:
    del settings
    lines = [f"Pooling: {metrics['pooling']}. Plot: `per_layer.png`.", "",
             "| layer | dim | top-1 | mean per class | best C |", "|---|---|---|---|---|"]
    return lines + [f"| {n} | {v['dim']} | {v['top1']:.2f} | {v['mean_per_class']:.2f} | "
                    f"{v['best_C']:.3g} |" for n, v in metrics["layers"].items()]
