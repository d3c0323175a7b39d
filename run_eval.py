"""Evaluate trained models.

    python run_eval.py --checkpoint runs/quickstart/simclr --outdir runs/eval_simclr
    python run_eval.py --mode similarity --checkpoint runs/quickstart/simclr \
        --checkpoint_b runs/quickstart/supervised --outdir runs/cka_simclr_vs_supervised

`frozen` (default): restores the newest readable checkpoint of a run_train workdir, extracts
backbone features of the train and eval splits (sharded over all devices), then runs kNN, the
linear probe (004 protocol), few-shot and calibration; writes OUTDIR/metrics.json, report.md.
`attention`: Grad-CAM, Guided Grad-CAM, saliency (linear head fitted on frozen train features)
and feature-space occlusion on --num_examples eval examples; writes OUTDIR/attention.json,
attention.png, attention.md (docs/BEHAVIOUR.md, "Attention").
`similarity`: layer-by-layer minibatch CKA between two checkpoints on the eval split (all layer
pairs, each layer vs the one-hot labels, each layer of A on clean vs augmented inputs); writes
OUTDIR/similarity.json, cka.png and report.md.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ssl_jax  # noqa: E402,F401  (sets XLA:CPU flags before JAX starts)
from absl import app, flags  # noqa: E402

flags.DEFINE_enum("mode", "frozen", ["frozen", "similarity", "attention"], "What to evaluate.")
flags.DEFINE_string("checkpoint", None, "A run_train workdir (config.json + checkpoints/), or a "
                    "converted zoo checkpoint directory (python -m checkpoints_convert).")
flags.DEFINE_string("checkpoint_b", None, "Second run_train workdir (--mode similarity).")
flags.DEFINE_integer("num_examples", 2000, "Eval examples used by --mode similarity.")
flags.DEFINE_enum("activations", "gap", ["gap", "flatten"],
                  "Conv activations as pooled channels (gap) or flattened (flatten).")
flags.DEFINE_string("outdir", None, "Where metrics.json and report.md are written.")
flags.DEFINE_string("dataset", None, "TFDS dataset to evaluate on (default: the run's own).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's own).")
flags.DEFINE_string("train_split", None, "Split the probes are fitted on (default: the run's).")
flags.DEFINE_string("eval_split", None, "Split the probes are scored on (default: the run's).")
flags.DEFINE_integer("num_classes", None, "Classes of --dataset (default: the run's).")
flags.DEFINE_integer("image_size", None, "Eval resolution (default: the run's; 224 converted).")
flags.DEFINE_integer("probe_grid", 45, "Points of the linear probe's C grid (004: 45).")
flags.DEFINE_integer("few_shot_episodes", 600, "ProtoNet episodes (0 to skip).")
flags.mark_flags_as_required(["checkpoint", "outdir"])
FLAGS = flags.FLAGS


def load_for_features(mesh) -> dict:
    """A run_train workdir or a converted zoo checkpoint (python -m checkpoints_convert), as a
    features function + its variables + the evaluation defaults that go with it."""
    from ssl_jax import models, train
    from ssl_jax.models.load import METADATA_FILE

    path = FLAGS.checkpoint
    if os.path.exists(os.path.join(path, METADATA_FILE)):  # converted zoo checkpoint
        module, variables = models.load(path, output="features")
        with open(os.path.join(path, METADATA_FILE)) as f:
            meta = json.load(f)

        def features_fn(variables, images):
            return module.apply(variables, images, train=False)

        return {"features_fn": features_fn, "variables": (variables,), "dataset": None,
                "data_dir": None, "train_split": None, "eval_split": None,
                "image_size": FLAGS.image_size or 224, "crop_fraction": 0.875,
                "batch_size": 256, "describe": f"converted {meta.get('family')} checkpoint"}
    config, method, state = train.load_trained(path, mesh)
    ds = config.dataset
    return {"features_fn": method.features, "variables": (state.params, state.model_state),
            "dataset": ds.name, "data_dir": ds.data_dir, "train_split": ds.train_split,
            "eval_split": ds.eval_split, "image_size": FLAGS.image_size or ds.image_size,
            "crop_fraction": ds.eval_crop_fraction, "batch_size": config.eval.batch_size,
            "describe": f"{config.method}, {config.model.name} width {config.model.width}, "
                        f"step {int(state.step)}"}


def evaluate() -> dict:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.data import pipeline
    from ssl_jax.evaluation.frozen import evaluate_features

    mesh = sharding.make_mesh()
    source = load_for_features(mesh)
    name = FLAGS.dataset or source["dataset"]
    if not name:
        raise ValueError("--dataset is required for a converted checkpoint (e.g. imagenette, "
                         "cifar10, shapes_textures/small32)")
    builder = pipeline.load_builder(name, FLAGS.data_dir or source["data_dir"])
    kw = dict(global_batch_size=source["batch_size"], image_size=source["image_size"],
              crop_fraction=source["crop_fraction"])
    splits = (FLAGS.train_split or source["train_split"] or "train",
              FLAGS.eval_split or source["eval_split"] or "test")
    for split in splits:
        if split not in builder.info.splits:
            raise ValueError(f"dataset {name!r} has no split {split!r}; valid: "
                             f"{', '.join(builder.info.splits)}")
    (trx, try_), (tex, tey) = [train.extract_features(
        source["features_fn"], source["variables"], pipeline.eval_iterator(builder, s, **kw),
        mesh) for s in splits]
    num_classes = FLAGS.num_classes or builder.info.features["label"].num_classes
    metrics = evaluate_features(trx, try_, tex, tey, num_classes, knn_k=200,
                                knn_temperature=0.07, probe_grid=FLAGS.probe_grid,
                                few_shot_episodes=FLAGS.few_shot_episodes)
    os.makedirs(FLAGS.outdir, exist_ok=True)
    record = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "source": source["describe"],
              "dataset": name, "splits": splits, "metrics": metrics}
    with open(os.path.join(FLAGS.outdir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    lines = [f"# Evaluation of `{FLAGS.checkpoint}`", "",
             f"{source['describe']}; features of `{name}` {splits[0]} -> {splits[1]}.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    with open(os.path.join(FLAGS.outdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


def similarity() -> dict:
    import jax
    import numpy as np
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from ssl_jax import sharding, train
    from ssl_jax.data import augment, pipeline
    from ssl_jax.similarity import compare

    if not FLAGS.checkpoint_b:
        raise ValueError("--mode similarity needs --checkpoint_b (the second network)")
    mesh = sharding.make_mesh()
    config_a, method_a, state_a = train.load_trained(FLAGS.checkpoint, mesh)
    config_b, method_b, state_b = train.load_trained(FLAGS.checkpoint_b, mesh)
    ds = config_a.dataset
    name = FLAGS.dataset or ds.name
    builder = pipeline.load_builder(name, FLAGS.data_dir or ds.data_dir)
    split = FLAGS.eval_split or ds.eval_split
    batch = 8 * jax.device_count() * max(1, 64 // (8 * jax.device_count()))
    num_classes = FLAGS.num_classes or builder.info.features["label"].num_classes

    def batches():
        seen = 0
        for b in pipeline.eval_iterator(builder, split, batch, ds.image_size,
                                        crop_fraction=ds.eval_crop_fraction):
            if seen + batch > FLAGS.num_examples or not b["valid"].all():
                return  # whole batches only: every minibatch the same size
            seen += batch
            yield {"image": b["image"].astype(np.float32) / 255.0, "label": b["label"]}

    preset = augment.get_preset(config_a.augment.preset,
                                **dict(config_a.augment.get("overrides", {})))
    view = preset.views[0]
    aug = jax.jit(lambda key, x: augment.augment_views(key, x, view))
    variables = lambda st: {"params": st.params, **st.model_state}  # noqa: E731
    result = compare.compare_networks(
        compare.layer_activations_fn(method_a.net.apply, FLAGS.activations), variables(state_a),
        compare.layer_activations_fn(method_b.net.apply, FLAGS.activations), variables(state_b),
        batches(), num_classes, augment=aug)
    os.makedirs(FLAGS.outdir, exist_ok=True)
    label_a = f"{config_a.method} ({os.path.basename(os.path.normpath(FLAGS.checkpoint))})"
    label_b = f"{config_b.method} ({os.path.basename(os.path.normpath(FLAGS.checkpoint_b))})"
    compare.plot_cka_matrix(result["cka"], result["layers_a"], result["layers_b"],
                            os.path.join(FLAGS.outdir, "cka.png"), label_a, label_b)
    record = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}
    record.update(checkpoint_a=FLAGS.checkpoint, checkpoint_b=FLAGS.checkpoint_b,
                  dataset=name, split=split, activations=FLAGS.activations,
                  augmentation=preset.name)
    with open(os.path.join(FLAGS.outdir, "similarity.json"), "w") as f:
        json.dump(record, f, indent=2)
    la, lb = result["layers_a"], result["layers_b"]
    lines = [f"# Layer similarity: {label_a} vs {label_b}", "",
             f"`{name}` {split}, minibatch linear CKA (unbiased HSIC, batch {batch}), "
             f"activations: {FLAGS.activations}. Heatmap: `cka.png`.", "",
             "| layer of A | CKA with same-index layer of B | CKA(A, labels) | "
             "CKA(A clean, A augmented) |", "|---|---|---|---|"]
    for i, n in enumerate(la):
        same = f"{result['cka'][i, i]:.3f}" if i < len(lb) else "-"
        lines.append(f"| {n} | {same} | {result['label_cka_a'][i]:.3f} | "
                     f"{result['augment_cka_a'][i]:.3f} |")
    with open(os.path.join(FLAGS.outdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


def attention() -> dict:
    import numpy as np
    from ssl_jax import sharding, train
    from ssl_jax.data import pipeline
    from ssl_jax.evaluation import attention as A, attention_report as R

    mesh = sharding.make_mesh()
    config, method, state = train.load_trained(FLAGS.checkpoint, mesh)
    ds = config.dataset
    builder = pipeline.load_builder(FLAGS.dataset or ds.name, FLAGS.data_dir or ds.data_dir)
    # No centre crop, so the dataset's foreground masks stay aligned with the images.
    kw = dict(global_batch_size=32, image_size=ds.image_size, crop_fraction=1.0)
    train_it = pipeline.eval_iterator(builder, FLAGS.train_split or ds.train_split, **kw)
    feats, labels = train.extract_features(method.features, (state.params, state.model_state),
                                           train_it, mesh)
    num_classes = FLAGS.num_classes or builder.info.features["label"].num_classes
    w, b = R.fit_linear_head(feats, labels, num_classes)
    extra = ("mask",) if "mask" in builder.info.features else ()
    it = pipeline.eval_iterator(builder, FLAGS.eval_split or ds.eval_split, extra_keys=extra, **kw)
    batches = ({**bt, "image": bt["image"] / np.float32(255)}
               for _, bt in zip(range(-(-FLAGS.num_examples // 32)), it))
    variables = {"params": state.params, **state.model_state}
    return R.evaluate_attention(method.net, variables, batches, FLAGS.outdir,
                                head=A.linear_head(w, b, 0), output_index=0,
                                title=f"{config.method} ({FLAGS.checkpoint})")


def main(argv):
    del argv
    try:
        {"similarity": similarity, "attention": attention}.get(FLAGS.mode, evaluate)()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
