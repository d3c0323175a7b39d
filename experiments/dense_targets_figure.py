"""Draws examples of every dense target of the built-in dataset (docs/BUILTIN_DATASET.md).

    python experiments/dense_targets_figure.py --config dense64 --out docs/images/dense_targets.png

One row per example (the first `--rows` of the config's `test` split, generated with numpy,
no TFDS build), one column per target.
"""
from __future__ import annotations

import os

import numpy as np
from absl import flags

from ssl_jax import errors  # one-line errors, exit code 2
from ssl_jax.data import builtin_textures

# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("config", "dense64", "a shapes_textures config with dense", flag_values=FLAGS)
flags.DEFINE_integer("rows", 5, None, flag_values=FLAGS)
flags.DEFINE_string("out", "docs/images/dense_targets.png", None, flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def main():
    args = parse_args()
    # The builder module imports TensorFlow; only its config list is needed here.
    from ssl_jax.data import builtin

    config = builtin.ShapesTextures.builder_configs[args.config]
    if not config.dense:
        raise SystemExit(f"config {args.config!r} has no dense targets")
    d = builtin_textures.generate_chunk(config, "test", 0)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = config.resolution
    grey = dict(cmap="gray", interpolation="nearest")
    columns = [
        ("image", lambda i: dict(X=d["image"][i])),
        ("segmentation", lambda i: dict(X=d["segmentation"][i, ..., 0], cmap="tab20",
                                         vmin=0, vmax=19, interpolation="nearest")),
        ("occlusion_edges", lambda i: dict(X=d["occlusion_edges"][i, ..., 0], **grey)),
        ("texture_edges", lambda i: dict(X=d["texture_edges"][i, ..., 0], **grey)),
        ("keypoints", lambda i: dict(X=d["image"][i])),
        ("height", lambda i: dict(X=d["height"][i, ..., 0].astype(np.float32), cmap="viridis")),
        ("depth", lambda i: dict(X=d["depth"][i, ..., 0].astype(np.float32), cmap="magma")),
        ("normals", lambda i: dict(X=(d["normals"][i].astype(np.float32) + 1) / 2)),
        ("curvature", lambda i: dict(X=d["curvature"][i, ..., 0].astype(np.float32),
                                      cmap="coolwarm", vmin=-r / 4, vmax=r / 4)),
        ("reshading", lambda i: dict(X=d["reshading"][i, ..., 0], vmin=0, vmax=255, **grey)),
    ]
    fig, axes = plt.subplots(args.rows, len(columns),
                             figsize=(1.3 * len(columns), 1.4 * args.rows), squeeze=False)
    for i in range(args.rows):
        for j, (name, draw) in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(**draw(i))
            if name == "keypoints":
                vis = d["keypoint_visible"][i]
                xy = d["keypoints"][i][vis] * r - 0.5  # pixel centres sit at integers in imshow
                ax.scatter(xy[:, 0], xy[:, 1], c=np.flatnonzero(vis), cmap="tab10",
                           vmin=0, vmax=9, s=12, edgecolors="white", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
        axes[i, 0].set_ylabel(builtin_textures.SHAPE_NAMES[d["label"][i]], fontsize=7)
    fig.tight_layout(pad=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    errors.run(main)
