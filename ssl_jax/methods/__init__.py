"""Training methods, chosen by name.

A method module exposes `Method(config)` with:
  num_views: int                                   views per image the pipeline must produce
  init(rng, images) -> (params, model_state)       images: [B, H, W, 3] float in [0, 1]
  loss(params, model_state, views, labels, rng[, index])
      -> (loss, (new_model_state, metrics))       views: [B, V, H, W, 3] float in [0, 1]
  needs_index: bool (optional, default False)      True: the pipeline adds each example's
                                                   stable split position and `loss` gets it
                                                   as `index` [B] (memory banks)
  features(params, model_state, images) -> [B, D]  backbone features for kNN / linear probes
  after_update(state) -> state                     EMA targets, queues, banks (identity if none)
The trainer calls only these and knows nothing method-specific.
"""
from __future__ import annotations

import importlib

METHODS = ("supervised", "simclr", "byol", "moco", "insdis", "rotation", "jigsaw", "counting",
           "colorization")


def get_method(name: str, config):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return importlib.import_module(f"ssl_jax.methods.{name}").Method(config)
