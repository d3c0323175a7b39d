"""python experiments/saliency_quality.py --outdir runs/saliency_quality

How good are RBD saliency masks (ssl_jax/data/saliency.py) on the built-in dataset? F-beta
(beta^2 = 0.3, adaptive threshold 2 x mean) and MAE against the true foreground masks, beside
a centre-prior baseline (a Gaussian bump, sigma = side / 4), overall and per background kind,
and the time per image. Images are the first `--num` test examples of each config, rendered
directly by the dataset's numpy generator (nothing is built with TFDS). Writes
OUTDIR/saliency_quality.json and prints a markdown table.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("outdir", "runs/saliency_quality", None, flag_values=FLAGS)
flags.DEFINE_string("configs", "biased32,biased64", "comma-separated shapes_textures configs",
                    flag_values=FLAGS)
flags.DEFINE_integer("num", 512, "test examples per config", flag_values=FLAGS)
flags.DEFINE_integer("superpixel_size", 16, "pixels per SLIC superpixel", flag_values=FLAGS)


def parse_args():
    return errors.parse_script_flags(FLAGS, doc=__doc__)


def test_examples(config_name: str, num: int) -> dict[str, np.ndarray]:
    from ssl_jax.data import builtin, builtin_textures
    configs = {c.name: c for c in builtin.ShapesTextures.BUILDER_CONFIGS}
    if config_name not in configs:
        raise ValueError(f"unknown shapes_textures config {config_name!r}; valid: "
                         f"{', '.join(configs)}")
    config = configs[config_name]
    chunks, n = [], 0
    while n < num:
        chunks.append(builtin_textures.generate_chunk(config, "test", len(chunks)))
        n += len(chunks[-1]["label"])
    return {k: np.concatenate([c[k] for c in chunks])[:num] for k in ("image", "mask",
                                                                      "background")}


def scores(sal: np.ndarray, truth: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    from ssl_jax.data import saliency
    from ssl_jax.data.builtin_textures import BACKGROUND_NAMES
    f, e = saliency.f_beta(sal, truth), saliency.mae(sal, truth)
    out = {"f_beta": float(f.mean()), "mae": float(e.mean())}
    for k, name in enumerate(BACKGROUND_NAMES):
        if (kinds == k).any():
            out[f"f_beta_{name}"] = float(f[kinds == k].mean())
            out[f"mae_{name}"] = float(e[kinds == k].mean())
    return out


def main():
    args = parse_args()
    from ssl_jax.data import saliency
    os.makedirs(args.outdir, exist_ok=True)
    results = {}
    for name in args.configs.split(","):
        data = test_examples(name, args.num)
        truth, kinds = data["mask"][..., 0] > 0, data["background"]
        side = data["image"].shape[1]
        t0 = time.perf_counter()
        sal = np.stack([saliency.rbd(im, superpixel_size=args.superpixel_size)
                        for im in tqdm(data["image"], desc=f"RBD {name}", dynamic_ncols=True)])
        per_image = (time.perf_counter() - t0) / len(sal)
        prior = np.broadcast_to(saliency.centre_prior(side, side), sal.shape)
        results[name] = {"resolution": side, "num_images": len(sal),
                         "rbd": scores(sal, truth, kinds), "centre_prior": scores(prior, truth,
                                                                                   kinds),
                         "rbd_ms_per_image": 1000 * per_image}
    summary = {"results": results, "superpixel_size": args.superpixel_size,
               "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    with open(os.path.join(args.outdir, "saliency_quality.json"), "w") as f:
        json.dump(summary, f, indent=2)

    lines = ["| config | px | method | F-beta | MAE | F-beta flat / gradient / noise / natural "
             "| ms per image |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for method in ("rbd", "centre_prior"):
            s = r[method]
            per_kind = " / ".join(f"{s.get(f'f_beta_{k}', float('nan')):.3f}"
                                  for k in ("flat", "gradient", "noise", "natural"))
            ms = f"{r['rbd_ms_per_image']:.1f}" if method == "rbd" else "-"
            lines.append(f"| {name} | {r['resolution']} | {method} | {s['f_beta']:.3f} | "
                         f"{s['mae']:.3f} | {per_kind} | {ms} |")
    print("\n".join(lines))
    print(f"load average during the run: {summary['load_average']}")


if __name__ == "__main__":
    errors.run(main)
