"""Shared config pieces: the `file.py:key=value,flag` argument parser and the base config."""
from __future__ import annotations

import ml_collections

VARIANTS = ("smoke", "quickstart", "cifar10", "imagenet")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'quickstart,width=0.5' -> ConfigDict(variant='quickstart', width=0.5). Values are cast to
    the type of the default; a bare word is the variant (only where `variant` is a default:
    the evaluator configs have none)."""
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            if "variant" not in defaults:
                raise ValueError(f"config arg {item!r} is not key=value; valid keys: "
                                 f"{', '.join(sorted(defaults))}")
            out.variant = item
            continue
        key, value = item.split("=", 1)
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r}; valid: {', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    if "variant" in out and out.variant not in VARIANTS:
        raise ValueError(f"unknown config variant {out.variant!r}; valid: {', '.join(VARIANTS)}")
    return out


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Apply one 'dotted.key=value' (the experiments' --override), cast to the current type."""
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise ValueError(f"unknown config key {key!r}")
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value


def base_config(variant: str) -> ml_collections.ConfigDict:
    """Fields every method shares, sized for `variant`."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.compute_dtype = "float32"
    c.num_steps = 0          # 0: use num_epochs
    c.num_epochs = 1.0
    c.batch_size = 256
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.model = ml_collections.ConfigDict(
        dict(name="resnet18", width=1.0, cifar_stem=False, padding="torch"))
    c.dataset = ml_collections.ConfigDict(dict(
        name="imagenet2012", data_dir=ml_collections.FieldReference(None, field_type=str),
        train_split="train", eval_split="validation", image_size=224, num_classes=1000,
        eval_crop_fraction=0.875, cache=False))
    c.augment = ml_collections.ConfigDict(dict(preset="simclr_imagenet", overrides={}))
    # Copy-paste backgrounds (003), off at prob 0; see ssl_jax/data/copy_paste.py. e.g.
    # --config.augment.copy_paste.prob=0.3 --config.augment.copy_paste.masks=rbd
    c.augment.copy_paste = ml_collections.ConfigDict(dict(
        prob=0.0, masks="ground_truth", mask_path="", backgrounds="grey,texture,image",
        blend="mix", blur_prob=0.5, blur_sigma=5 / 224))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="lars", base_lr=0.3, weight_decay=1e-6, momentum=0.9, warmup_fraction=0.1,
        scale_with_batch=True))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=512, every_steps=0, knn_k=200, knn_temperature=0.07))

    if variant in ("smoke", "quickstart"):
        c.model.update(width=0.125 if variant == "smoke" else 0.25, cifar_stem=True)
        c.dataset.update(name="shapes_textures/tiny" if variant == "smoke"
                         else "shapes_textures/small32", train_split="train", eval_split="test",
                         image_size=32, num_classes=10, eval_crop_fraction=1.0, cache=True)
    if variant == "smoke":
        c.num_steps = 6
        c.batch_size = 32
        c.log_every = 1
        c.checkpoint_every = 2
        c.eval.update(batch_size=128, every_steps=6)
    elif variant == "quickstart":
        c.log_every = 10
        c.checkpoint_every = 100
        c.eval.update(every_steps=0)
    elif variant == "cifar10":
        c.model.update(cifar_stem=True)
        c.dataset.update(name="cifar10", train_split="train", eval_split="test", image_size=32,
                         num_classes=10, eval_crop_fraction=1.0, cache=True)
        c.batch_size = 512
        c.eval.update(every_steps=5000)
        c.checkpoint_every = 1000
    elif variant == "imagenet":
        c.model.name = "resnet50"
        c.compute_dtype = "bfloat16"
        c.batch_size = 4096
        c.eval.update(every_steps=0)
        c.checkpoint_every = 2500
    return c


def eval_config(evaluator: str, arg: str | None, **extra) -> ml_collections.ConfigDict:
    """Fields every run_eval evaluator shares, plus its own `extra` defaults; `arg` may set
    checkpoint, dataset and any key of `extra` ('dataset=cifar10,probe_grid=9')."""
    a = parse_arg(arg, checkpoint="", dataset="", **extra)
    c = ml_collections.ConfigDict()
    c.evaluator = evaluator
    c.checkpoint = a.checkpoint   # a run_train workdir or a converted zoo checkpoint directory
    c.dataset = a.dataset         # "" -> the run's own dataset
    c.data_dir = ""               # "" -> the run's own data_dir / TFDS default
    c.train_split = ""            # "" -> the run's (or "train")
    c.eval_split = ""             # "" -> the run's (or "test")
    c.num_classes = 0             # 0 -> from the dataset's label feature
    c.image_size = 0              # 0 -> the run's (224 for converted checkpoints)
    c.cache_dir = ""              # "" -> OUTDIR/feature_cache
    c.progress = True
    c.update({k: a[k] for k in extra})
    return c
