"""Training methods, chosen by name.

A method module `ssl_jax/methods/<name>.py` defines `class Method(base.Method)` built from the
run's config; `base.Method` states the contract the trainer relies on (`num_views`, `init`,
`loss`, `features`, `after_update`, `needs_index`) and its defaults. To add a method: one new
module here plus its name in METHODS (and a configs/<name>.py to train it).
"""
from __future__ import annotations

import importlib

from ssl_jax.methods.base import Method

METHODS = ("supervised", "simclr", "byol", "moco", "insdis", "rotation", "jigsaw", "counting",
           "colorization", "task_bank")

__all__ = ["METHODS", "Method", "get_method"]


def get_method(name: str, config) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return importlib.import_module(f"ssl_jax.methods.{name}").Method(config)
