"""Time building the built-in `shapes_textures` dataset, or draw its example grid.

    python benchmarks/builtin_dataset_build.py                      # 50k x 64 px train split
    python benchmarks/builtin_dataset_build.py --config base64 --all-splits
    python benchmarks/builtin_dataset_build.py --workers 1 --num-train 10000
    python benchmarks/builtin_dataset_build.py --grid docs/images/builtin_examples.png

The build goes into a fresh temporary data_dir (deleted afterwards). Besides wall time
it reports CPU seconds of this process and of the generator worker processes, since
wall time on a shared machine depends on what else runs.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import tempfile
import time

from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

from ssl_jax.data import builtin  # noqa: E402


def _named_config(name: str) -> builtin.ShapesTexturesConfig:
    for config in builtin.ShapesTextures.BUILDER_CONFIGS:
        if config.name == name:
            return config
    names = [c.name for c in builtin.ShapesTextures.BUILDER_CONFIGS]
    raise ValueError(f"unknown config {name!r}; valid: {names}")


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(path) for f in files)


def benchmark(config: builtin.ShapesTexturesConfig) -> dict[str, float]:
    """Builds `config` into a temporary data_dir; returns timings and sizes."""
    data_dir = tempfile.mkdtemp(prefix="shapes_textures_bench_")
    try:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        builder = builtin.ShapesTextures(config=config, data_dir=data_dir)
        builder.download_and_prepare()
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        n = sum(config.split_size(s) for s in builtin.SPLITS)
        return dict(
            examples=n, wall_s=wall,
            main_cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
            worker_cpu_s=(kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime),
            megabytes=_dir_bytes(data_dir) / 2 ** 20)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def example_grid(path: str, rows: int = 6, data_dir: str | None = None) -> None:
    """Saves a PNG grid: one row per config variant, images next to their masks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("small32", "train"), ("base64", "test"), ("biased32", "train"),
              ("base64", "cue_conflict")]
    cols = 8
    fig, axes = plt.subplots(len(panels) * 2, cols, figsize=(cols * 1.2, len(panels) * 3.0))
    for p, (name, split) in enumerate(panels):
        arrays = builtin.generate_chunk(_named_config(name), split, 0)
        for j in range(cols):
            img_ax, mask_ax = axes[2 * p, j], axes[2 * p + 1, j]
            img_ax.imshow(arrays["image"][j], interpolation="nearest")
            mask_ax.imshow(arrays["mask"][j, ..., 0], cmap="gray", vmin=0, vmax=1,
                           interpolation="nearest")
            y0, x0, y1, x1 = arrays["bbox"][j] * arrays["image"].shape[1] - 0.5
            mask_ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                            edgecolor="red", linewidth=1))
            shape = builtin.SHAPE_NAMES[arrays["label"][j]]
            texture = builtin.TEXTURE_NAMES[arrays["texture_label"][j]]
            background = builtin.BACKGROUND_NAMES[arrays["background"][j]]
            img_ax.set_title(f"{shape}\n{texture}", fontsize=6)
            mask_ax.set_title(background, fontsize=6)
            for ax in (img_ax, mask_ax):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[2 * p, 0].set_ylabel(f"{name}\n{split}", fontsize=7)
    fig.tight_layout(pad=0.3)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("config", "base64", "a builder config name", flag_values=FLAGS)
flags.DEFINE_integer("num-train", 50_000, None, flag_values=FLAGS)
flags.DEFINE_bool("all-splits", False, "build the config's test and cue_conflict splits too",
                  flag_values=FLAGS)
flags.DEFINE_integer("workers", 0, "0 = builder default", flag_values=FLAGS)
flags.DEFINE_string("grid", None, "only write the example grid", flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    if args.grid:
        example_grid(args.grid)
        return
    base = _named_config(args.config)
    config = dataclasses.replace(
        base, name=f"{base.name}_bench", num_train=args.num_train,
        num_test=base.num_test if args.all_splits else 0,
        num_cue_conflict=base.num_cue_conflict if args.all_splits else 0,
        num_workers=args.workers)
    print(f"building {config.name}: {config.resolution} px, "
          f"{config.num_train}/{config.num_test}/{config.num_cue_conflict}, "
          f"workers={args.workers or 'default'}, cpus={os.cpu_count()}, "
          f"load avg={os.getloadavg()[0]:.1f}")
    r = benchmark(config)
    per = 1e3 / r["examples"]
    print(f"{r['examples']} examples in {r['wall_s']:.1f} s wall "
          f"({r['wall_s'] * per:.2f} ms/example); CPU: main {r['main_cpu_s']:.1f} s, "
          f"workers {r['worker_cpu_s']:.1f} s "
          f"({(r['main_cpu_s'] + r['worker_cpu_s']) * per:.2f} CPU-ms/example); "
          f"{r['megabytes']:.0f} MiB on disk; load avg after={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    errors.run(main)
