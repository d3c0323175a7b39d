"""On-disk cache of extracted features: one `.npz` per (checkpoint, dataset, split, layer, ...)
key, so a second evaluation of the same checkpoint skips the forward passes."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np


def cache_path(cache_dir: str, key: Mapping[str, Any]) -> str:
    """cache_dir/<layer>-<split>-<16 hex of sha256(key as sorted JSON)>.npz."""
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]
    tag = f"{key.get('layer', 'features')}-{key.get('split', '')}".replace("/", "_")
    return os.path.join(cache_dir, f"{tag}-{digest}.npz")


def load(cache_dir: str, key: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(features [N, D], labels [N]) stored under `key`, or None when absent."""
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        return f["x"], f["y"]


def save(cache_dir: str, key: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> str:
    """Writes atomically (tmp file + rename: an interrupted run never leaves a truncated entry)
    and returns the path; the key is stored beside the arrays for inspection."""
    os.makedirs(cache_dir, exist_ok=True)
    path = cache_path(cache_dir, key)
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x, y=y, key=json.dumps(dict(key), sort_keys=True))
    os.replace(tmp, path)
    return path
