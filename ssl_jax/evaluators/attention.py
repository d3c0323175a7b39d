"""Attention evaluator (configs/eval/attention.py): Grad-CAM, Guided Grad-CAM, gradient saliency
and feature-space occlusion on the first `num_examples` eval-split images at `layer` (default:
the last conv layer the model taps), scored through a linear head fitted on frozen train
features; sharpness, agreement between map types and, where the dataset has foreground masks,
localisation IoU (ssl_jax.evaluation.attention_report). Needs an `outdir`: it writes
attention.json and attention.png there."""
from __future__ import annotations

import numpy as np

from ssl_jax.data import pipeline
from ssl_jax.evaluation import attention, attention_report


def evaluate(inputs, settings, outdir: str | None = None) -> dict:
    network, data = inputs.needs_network("the attention evaluator")
    if not outdir:
        raise ValueError("the attention evaluator writes its maps: it needs an outdir")
    # Class scores for every network come from a linear head fitted on frozen train features
    # (self-supervised ones have no classifier; supervised ones are scored the same way so
    # that methods compare like for like).
    feats, labels = inputs.train()
    w, b = attention_report.fit_linear_head(feats, labels, data.num_classes)
    extra = ("mask",) if "mask" in data.builder.info.features else ()
    # No centre crop here: the dataset's foreground masks must stay aligned with the images.
    it = pipeline.eval_iterator(data.builder, data.eval_split, network.batch_size,
                                network.image_size, crop_fraction=1.0, extra_keys=extra)
    num_batches = -(-settings.num_examples // network.batch_size)
    images = ({**bt, "image": bt["image"] / np.float32(255)}
              for _, bt in zip(range(num_batches), it))
    # The module itself (not its apply): guided backprop clones it with a guided ReLU.
    return attention_report.evaluate_attention(
        network.module, network.apply_variables, images, outdir,
        head=attention.FittedLinearReadout(w, b, network.features_index),
        layer=settings.layer or None, output_index=network.features_index,
        title=network.label)


def markdown(metrics: dict, settings) -> list[str]:
    del settings
    return attention_report.markdown_section(metrics).splitlines()
