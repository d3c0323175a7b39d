"""Silhouette and edge stimuli from the built-in dataset's shape masks (002 figure 2 in
miniature; Geirhos et al.'s silhouettes are the object filled black on white, their edges a
black outline on white).

    test = behaviour.load_split(builder, "test", 256)       # any split with masks
    sil = stimulus_set(test, "silhouette")                  # {"image" uint8 [N, R, R, 3], "label"}
    edge = stimulus_set(test, "edge", thickness=2)          # a thicker outline, visible at 32 px

Pure numpy on masks `[..., H, W]` (bool or 0/1): the shape alone, its texture and background
removed, so a network can only answer from the outline.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

STIMULUS_KINDS = ("silhouette", "edge")
BLACK, WHITE = 0, 255


def erode(mask: np.ndarray) -> np.ndarray:
    """One binary erosion with the 4-neighbourhood cross: a pixel stays set when it and its
    up/down/left/right neighbours are all set. Outside the image counts as unset, so a shape
    cut by the image border gets an outline along that border too."""
    m = np.asarray(mask, bool)
    p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)], constant_values=False)
    return (m & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:])


def boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The mask's inner boundary `thickness` pixels wide: set pixels within `thickness`
    4-neighbour steps of an unset one (mask & ~eroded^thickness(mask)). Inside the mask, so the
    outline never grows past the shape's extent."""
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    m = np.asarray(mask, bool)
    inner = m
    for _ in range(thickness):
        inner = erode(inner)
    return m & ~inner


def black_on_white(foreground: np.ndarray) -> np.ndarray:
    """[..., H, W] bool -> uint8 [..., H, W, 3]: black where set, white elsewhere."""
    grey = np.where(np.asarray(foreground, bool), BLACK, WHITE).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def silhouette(mask: np.ndarray) -> np.ndarray:
    """The shape filled black on a white background, uint8 [..., H, W, 3]."""
    return black_on_white(mask)


def edge(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The shape's outline (`boundary`) black on white, uint8 [..., H, W, 3]."""
    return black_on_white(boundary(mask, thickness))


def stimulus_set(split: Mapping[str, np.ndarray], kind: str,
                 thickness: int = 1) -> dict[str, np.ndarray]:
    """{"image": uint8 [N, H, W, 3], "label": [N]} of `kind` ("silhouette" or "edge") from a
    split's masks ({"mask" [N, H, W] or [N, H, W, 1], "label" [N]}, e.g.
    `behaviour.load_split`); labels are the shape classes, passed through unchanged.
    `thickness`: the edge outline's width in pixels (ignored for silhouettes)."""
    if kind not in STIMULUS_KINDS:
        raise ValueError(f"unknown stimulus kind {kind!r}; valid: {', '.join(STIMULUS_KINDS)}")
    mask = np.asarray(split["mask"])
    if mask.ndim == 4:  # TFDS image features keep a channel axis
        mask = mask[..., 0]
    image = silhouette(mask) if kind == "silhouette" else edge(mask, thickness)
    return {"image": image, "label": np.asarray(split["label"])}


def load_stimulus_set(builder, split: str, kind: str, limit: int,
                      thickness: int = 1) -> dict[str, np.ndarray]:
    """`stimulus_set` of the first `limit` examples of a built-in-dataset TFDS split (in order,
    as `behaviour.load_split` reads them, so example i is the same image in every set)."""
    from ssl_jax.evaluation.behaviour import load_split

    return stimulus_set(load_split(builder, split, limit), kind, thickness)
