"""Behaviour of SSL vs supervised: python experiments/behaviour.py --outdir runs/behaviour

Trains supervised and SimCLR (add BYOL with --methods supervised,simclr,byol) on the built-in
dataset with texture/background tied to the class in 90% of train (`shapes_textures/biased32`,
generated locally on first use) with the project's trainer and configs (configs/*.py, variant
`quickstart`, budget via --override, e.g. num_epochs=2), then for every network:
- a linear head fitted on frozen train features (attention_report.fit_linear_head), which makes
  the decisions of every method comparable (self-supervised ones have no classifier);
- test accuracy of that head (test split: texture and background independent of the class);
- shape bias on the cue_conflict split (ssl_jax.evaluation.shape_bias; shape = `label`,
  texture = `texture_class`);
- uniform-noise and contrast robustness curves (ssl_jax.evaluation.distortions);
- attention maps and their localisation IoU with the true masks (run_eval's attention evaluator's
  report, ssl_jax.evaluation.attention_report) on --attention_examples test images.
Writes OUTDIR/behaviour.md, behaviour.json, robustness_{uniform_noise,contrast}.png and
OUTDIR/<method>/attention.*.
Re-running resumes unfinished training; finished runs are evaluated again, not retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ssl_jax  # noqa: E402,F401  (sets XLA:CPU flags before JAX starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

MAPS = ("grad_cam", "guided_grad_cam", "saliency", "occlusion")
FAMILIES = ("uniform_noise", "contrast")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", default="runs/behaviour")
    p.add_argument("--data_dir", default=None,
                   help="TFDS data_dir (default: ~/tensorflow_datasets)")
    p.add_argument("--dataset", default="shapes_textures/biased32")
    p.add_argument("--methods", default="supervised,simclr")
    p.add_argument("--variant", default="quickstart", help="config variant (smoke for a check)")
    p.add_argument("--override", action="append", default=[],
                   help="KEY=VALUE applied to every training config, e.g. num_epochs=2")
    p.add_argument("--eval_examples", type=int, default=2000,
                   help="test / cue-conflict examples used for accuracy, robustness, shape bias")
    p.add_argument("--attention_examples", type=int, default=256)
    return p.parse_args()


def load_split(builder, split: str, limit: int) -> dict[str, np.ndarray]:
    """{"image" float [N, R, R, 3] in [0, 1], "label", "texture_class", "mask" [N, R, R]}."""
    import tensorflow_datasets as tfds
    keys = ("image", "label", "texture_class", "mask")
    rows = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).take(limit)))
    out = {k: np.stack([r[k] for r in rows]) for k in keys}
    out["image"] = out["image"].astype(np.float32) / 255.0
    out["mask"] = out["mask"][..., 0]
    return out


def evaluate_network(name, method, state, builder, config, data, args, mesh) -> dict:
    from ssl_jax import train
    from ssl_jax.data import pipeline
    from ssl_jax.data.builtin import SHAPE_NAMES
    from ssl_jax.evaluation import attention as A
    from ssl_jax.evaluation import attention_report as R
    from ssl_jax.evaluation import distortions as D
    from ssl_jax.evaluation import shape_bias as S

    ds = config.dataset
    kw = dict(global_batch_size=ds.get("eval_batch_size", 256), image_size=ds.image_size,
              crop_fraction=1.0)
    feats, labels = train.extract_features(
        method.features, (state.params, state.model_state),
        pipeline.eval_iterator(builder, ds.train_split, **kw), mesh)
    w, b = R.fit_linear_head(feats, labels, ds.num_classes)
    head = A.linear_head(w, b, 0)
    variables = {"params": state.params, **state.model_state}
    logits = jax.jit(lambda x: head(method.net.apply(variables, x, train=False)))

    def predict(x):
        return np.asarray(jax.numpy.argmax(logits(x), -1))

    test, cue = data["test"], data["cue_conflict"]
    acc = float(np.mean(np.concatenate([predict(test["image"][i:i + 256])
                                        for i in range(0, len(test["label"]), 256)])
                        == test["label"]))
    bias = S.evaluate_shape_bias(predict, cue["image"], cue["label"], cue["texture_class"],
                                 categories=SHAPE_NAMES, batch_size=256)
    curves = {f: D.robustness_curve(predict, test["image"], test["label"], f, batch_size=256)
              for f in FAMILIES}
    n = args.attention_examples
    batches = ({"image": test["image"][i:i + 32], "label": test["label"][i:i + 32],
                "mask": test["mask"][i:i + 32]} for i in range(0, n, 32))
    attention = R.evaluate_attention(method.net, variables, batches,
                                     os.path.join(args.outdir, name), head=head, output_index=0,
                                     title=name)
    return {"test_accuracy": acc, "shape_bias": bias["shape_bias"],
            "cue_fractions": bias["fractions"],
            "robustness": {f: {"levels": c["levels"], "accuracy": c["accuracy"]}
                           for f, c in curves.items()},
            "attention": attention["metrics"], "attention_layer": attention["layer"]}


def write_report(outdir: str, dataset: str, results: dict, timings: dict) -> list[str]:
    from ssl_jax.evaluation import distortions as D

    with open(os.path.join(outdir, "behaviour.json"), "w") as f:
        json.dump({"dataset": dataset, "results": results, "timings": timings}, f, indent=2)
    some = next(iter(results.values()))
    noise_levels = some["robustness"]["uniform_noise"]["levels"]
    contrast_levels = some["robustness"]["contrast"]["levels"]
    lines = [f"# Behaviour on `{dataset}`", "",
             "Linear head on frozen train features for every network; test split has texture "
             "and background independent of the class.", "",
             "| network | test acc. | shape bias | loc. IoU " + " / ".join(MAPS) + " |",
             "|---|---|---|---|"]
    for name, r in results.items():
        loc = " / ".join(f"{r['attention'][f'localisation_iou/{m}']:.2f}" for m in MAPS)
        lines.append(f"| {name} | {100 * r['test_accuracy']:.1f}% | {r['shape_bias']:.3f} | "
                     f"{loc} |")
    for family, levels in (("uniform_noise", noise_levels), ("contrast", contrast_levels)):
        lines += ["", f"Accuracy (%) under {family}:", "",
                  "| network | " + " | ".join(str(v) for v in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for name, r in results.items():
            acc = r["robustness"][family]["accuracy"]
            lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in acc) + " |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
              "", "Curves: `robustness_<family>.png`; attention overlays: "
              "`<network>/attention.png`."]
    with open(os.path.join(outdir, "behaviour.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for family in FAMILIES:
        D.plot_robustness_curves({n: r["robustness"][family] for n, r in results.items()},
                                 os.path.join(outdir, f"robustness_{family}.png"), title=family)
    return lines


def main():
    args = parse_args()
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    import importlib

    from configs.common import apply_override
    from ssl_jax import sharding, train
    from ssl_jax.data import pipeline

    os.makedirs(args.outdir, exist_ok=True)
    configs = {}
    for name in args.methods.split(","):
        c = importlib.import_module(f"configs.{name}").get_config(args.variant)
        c.dataset.name, c.dataset.data_dir = args.dataset, args.data_dir
        for item in args.override:
            apply_override(c, item)
        configs[name] = c

    timings = {}
    for name, config in configs.items():
        t0 = time.time()
        print(f"== training {name} on {args.dataset} ==", flush=True)
        train.train(config, os.path.join(args.outdir, name))
        timings[f"train_{name}"] = time.time() - t0

    mesh = sharding.make_mesh()
    builder = pipeline.load_builder(args.dataset, args.data_dir)
    data = {s: load_split(builder, s, args.eval_examples) for s in ("test", "cue_conflict")}
    results = {}
    for name, config in configs.items():
        t0 = time.time()
        _, method, state = train.load_trained(os.path.join(args.outdir, name), mesh)
        results[name] = evaluate_network(name, method, state, builder, config, data, args, mesh)
        timings[f"eval_{name}"] = time.time() - t0
        print(f"{name}: test acc {results[name]['test_accuracy']:.3f}, shape bias "
              f"{results[name]['shape_bias']:.3f}", flush=True)
    print("\n".join(write_report(args.outdir, args.dataset, results, timings)))


if __name__ == "__main__":
    main()
