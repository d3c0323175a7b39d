"""Similarity evaluator (configs/eval/similarity.py): minibatch linear CKA between every layer of
network A (the evaluated one) and every layer of network B (`checkpoint_b`, a run_train workdir
or a converted checkpoint), each layer vs one-hot labels, and each layer of A on clean vs
augmented images (A's own training augmentations), on the first `num_examples` eval-split
images; `activations`: gap or flatten; `layers`: the layer set (blocks / all / odd / even).
With an `outdir`, the heatmap with best matches and diagonal / maximum curves (cka.png)."""
from __future__ import annotations

import os

import numpy as np

from ssl_jax.evaluators.inputs import load_network


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    import jax

    from ssl_jax.data import augment
    from ssl_jax.similarity import compare

    network_a, data = inputs.needs_network("the similarity evaluator")
    if not settings.get("checkpoint_b"):
        raise ValueError("the similarity evaluator needs --config.checkpoint_b (the second "
                         "network)")
    network_b = load_network(settings.checkpoint_b, settings.get("image_size", 0), inputs.mesh)
    split = data.eval_split
    batch = 8 * jax.device_count() * max(1, 64 // (8 * jax.device_count()))

    def minibatches():  # both networks see A's images
        seen = 0
        for b in inputs.batches(split, "CKA", settings.num_examples, batch_size=batch):
            if seen + batch > settings.num_examples or not b["valid"].all():
                return  # whole batches only: every minibatch the same size
            seen += batch
            yield {"image": b["image"].astype(np.float32) / 255.0, "label": b["label"]}

    # Clean-vs-augmented CKA uses A's own training augmentations; a converted checkpoint has
    # none recorded, so that column is left out for it.
    aug, preset_name = None, None
    if network_a.augment is not None:
        preset_id, overrides = network_a.augment
        preset = augment.get_preset(preset_id, **overrides)
        aug = jax.jit(lambda key, x: augment.augment_views(key, x, preset.views[0]))
        preset_name = preset.name
    result = compare.compare_networks(
        compare.layer_activations_fn(network_a.apply_fn, settings.activations, settings.layers),
        network_a.apply_variables,
        compare.layer_activations_fn(network_b.apply_fn, settings.activations, settings.layers),
        network_b.apply_variables, minibatches(), data.num_classes, augment=aug)
    label_a = f"{network_a.name} ({network_a.label})"
    label_b = f"{network_b.name} ({network_b.label})"
    if outdir:
        compare.plot_cka_matrix(result["cka"], result["layers_a"], result["layers_b"],
                                os.path.join(outdir, "cka.png"), label_a, label_b)
    record = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}
    record.update(checkpoint_b=os.path.abspath(settings.checkpoint_b),
                  source_b=network_b.describe, label_a=label_a, label_b=label_b, split=split,
                  batch=batch, activations=settings.activations, augmentation=preset_name,
                  image_size=network_a.image_size, layer_set=settings.layers,
                  best_match_b=compare.best_match(result["cka"]).tolist())
    return record


def markdown(record: dict, settings) -> list[str]:
    del settings
    cka, la, lb = np.asarray(record["cka"]), record["layers_a"], record["layers_b"]
    best = record["best_match_b"]
    lines = [f"A = {record['label_a']}, B = {record['label_b']} ({record['source_b']}); "
             f"`{record['split']}`, minibatch linear CKA (unbiased HSIC, batch "
             f"{record['batch']}), activations: {record['activations']}, layer set: "
             f"{record['layer_set']}. `cka.png`: the heatmap with each layer of A's most "
             "similar layer of B dotted, and per layer of A its CKA with B's same-named layer "
             "(diag) and with the most similar one (max).", "",
             "| layer of A | CKA with same-index layer of B | most similar layer of B (CKA) | "
             "CKA(A, labels) | CKA(A clean, A augmented) |", "|---|---|---|---|---|"]
    for i, n in enumerate(la):
        same = f"{cka[i, i]:.3f}" if i < len(lb) else "-"
        match = f"{lb[best[i]]} ({cka[i, best[i]]:.3f})"
        augmented = (f"{record['augment_cka_a'][i]:.3f}" if record["augmentation"] is not None
                     else "-")
        lines.append(f"| {n} | {same} | {match} | {record['label_cka_a'][i]:.3f} | "
                     f"{augmented} |")
    return lines
