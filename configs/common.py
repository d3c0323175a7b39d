"""Shared config pieces: the `file.py:key=value,flag` argument parser, the base config and the
variants (VARIANTS) that size it."""
from __future__ import annotations

import ml_collections


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
        if kind is bool:
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"config arg {key}={value!r} is not a bool; valid: true, false")
            out[key] = value.lower() in ("1", "true", "yes")
            continue
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"config arg {key}={value!r}: expected {kind.__name__} (default "
                             f"{defaults[key]!r})") from None
    if "variant" in out and out.variant not in VARIANTS:
        raise ValueError(f"unknown config variant {out.variant!r}; valid: {', '.join(VARIANTS)}")
    return out


def config_from_spec(spec: str, variant: str) -> tuple[str, ml_collections.ConfigDict]:
    """An experiment's run spec 'CONFIG[:ARG=VALUE[;ARG=VALUE]]' -> (run name, config), e.g.
    'moco:version=1' -> ('moco-version=1', configs/moco.py's get_config('VARIANT,version=1'));
    a bare 'byol' is named 'byol'."""
    import importlib
    import os
    name, _, args = spec.partition(":")
    try:
        module = importlib.import_module(f"configs.{name}")
    except ModuleNotFoundError:
        here = os.path.dirname(os.path.abspath(__file__))
        valid = sorted(f[:-3] for f in os.listdir(here)
                       if f.endswith(".py") and f not in ("__init__.py", "common.py"))
        raise ValueError(f"unknown run {name!r}; valid: {', '.join(valid)}") from None
    config = module.get_config(",".join(filter(None, [variant] + args.split(";"))))
    return (f"{name}-{args.replace(';', '-')}" if args else name), config


_FREE_FORM = "augment.overrides."


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Apply one 'dotted.key=value' (the experiments' --override), cast to the current type.
    A bad item is a ValueError naming it, the close matches and the valid keys."""
    import difflib

    key, eq, value = item.partition("=")
    if not eq:
        raise ValueError(f"--override {item!r} is not KEY=VALUE (e.g. num_epochs=4)")
    if key.startswith(_FREE_FORM):
        # A section of free-form keys (augment.overrides: any ViewConfig field or shortcut,
        # validated by augment.override when the run builds its views): new keys are allowed,
        # values parsed as Python literals (numbers, bools, tuples), else kept as strings.
        import ast
        field = key[len(_FREE_FORM):]
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        overrides = dict(config.augment.overrides)
        overrides[field] = parsed
        config.augment.overrides = overrides
        return
    node, path = config, []
    for name in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            prefix = "".join(f"{p}." for p in path)
            close = difflib.get_close_matches(key, _dotted(config), n=3, cutoff=0.6)
            near = f"did you mean {', '.join(close)}? " if close else ""
            where = f"valid keys: {', '.join(prefix + k for k in valid)}" if valid else \
                f"{prefix[:-1]!r} is a value, not a section"
            raise ValueError(f"--override {item!r}: unknown config key {key!r}; {near}{where}")
        node, path = node[name], path + [name]
    parent = config
    for name in path[:-1]:
        parent = parent[name]
    if isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"--override {item!r}: {key!r} is a section; set one of its keys: "
                         f"{', '.join(f'{key}.{k}' for k in sorted(node.keys()))}")
    try:
        parent[path[-1]] = _cast_like(node, value, key)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--override {item!r}: {e}") from None


def _dotted(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k in node.keys():
        out.append(prefix + k)
        if isinstance(node[k], ml_collections.ConfigDict):
            out += _dotted(node[k], f"{prefix}{k}.")
    return out


def _cast_like(current, value: str, key: str):
    """`value` parsed as the type of `current`; bool needs its own parse (bool('False') is True)."""
    if current is None:
        return value
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config key {key!r} is a bool; got {value!r}, valid: true, false")
        return value.lower() in ("true", "1")
    try:
        return type(current)(value)
    except ValueError:
        raise ValueError(f"config key {key!r}: expected {type(current).__name__} (now "
                         f"{current!r}), got {value!r}") from None


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
        dict(name="resnet18", width=1.0, cifar_stem=False, padding="torch", activation="relu"))
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
    # warmup_steps: 0 = warmup_fraction of the run. clip_grad_norm: 0 = off, else
    # optax.clip_by_global_norm before the optimizer. base_lr, the warmup and clip_grad_norm may
    # change when a run resumes (e.g. after a divergence).
    c.optimizer = ml_collections.ConfigDict(dict(
        name="lars", base_lr=0.3, weight_decay=1e-6, momentum=0.9, warmup_fraction=0.1,
        warmup_steps=0, scale_with_batch=True, lars_eta=1e-3, clip_grad_norm=0.0))
    # Evaluation while training. eval.batch_size: the feature-extraction batch every evaluator
    # shares. evals: the evaluators (ssl_jax/evaluators) the trainer runs on frozen features,
    # each every `every_steps` steps and at the end of the run (0 = never), with its settings.
    c.eval = ml_collections.ConfigDict(dict(batch_size=512))
    c.evals = ml_collections.ConfigDict(dict(
        knn=dict(every_steps=0, k=200, temperature=0.07),
        # A 5-point C grid (004: 45) keeps a periodic probe cheap; no calibration.
        linear_probe=dict(every_steps=0, probe_grid=5, calibrate=False)))
    # A linear classifier trained on stop-gradient `method.features` of the first view, beside
    # the method, with its own optimizer: its train accuracy (online_linear_top1) shows
    # progress while pretraining and it never changes the method's trajectory (see
    # ssl_jax/online_probe.py). Off for `supervised`, which trains a classifier itself.
    c.online_probe = ml_collections.ConfigDict(dict(enabled=True, learning_rate=1e-2))

    VARIANTS[variant](c)
    return c


# Variants: what every method shares at one size (dataset, image size, model, default budget,
# logging, evaluation while training). Each patches base_config's defaults; a method config
# adds only its own deltas per variant (augmentation, optimizer, epochs, head sizes), so a new
# variant that needs none is one function and one VARIANTS entry here.

def _small32(c: ml_collections.ConfigDict, dataset: str, **model) -> None:
    """A 32 px, 10-class dataset with a train and a test split, cached in memory."""
    c.model.update(**model)
    c.dataset.update(name=dataset, train_split="train", eval_split="test", image_size=32,
                     num_classes=10, eval_crop_fraction=1.0, cache=True)


def _smoke(c: ml_collections.ConfigDict) -> None:
    """A few steps on the tiny built-in dataset (tests, CI)."""
    _small32(c, "shapes_textures/tiny", width=0.125, cifar_stem=True)
    c.update(dict(num_steps=6, batch_size=32, log_every=1, checkpoint_every=2))
    c.eval.batch_size = 128
    c.evals.knn.every_steps = 6


def _quickstart(c: ml_collections.ConfigDict) -> None:
    """The built-in faintgrey32 in CPU minutes."""
    # quickstart keeps torchvision's strided stem even at 32 px: 8x8 maps after the stem
    # train ~8x faster on 2 CPU cores than the CIFAR stem's 32x32, which is what lets four
    # methods fit the 15-minute main job (README "Measured"). Its data, faintgrey32
    # (upright shapes, faint textures, grey levels), is where a few hundred steps of
    # every self-supervised method learn shape: on small32 (rotated, strong textures,
    # colour) only SimCLR beat random-init features (docs/METHODS.md, "The quickstart
    # setting").
    _small32(c, "shapes_textures/faintgrey32", width=0.25, cifar_stem=False)
    c.update(dict(log_every=10, checkpoint_every=100))


def _cifar10(c: ml_collections.ConfigDict) -> None:
    """CIFAR-10 with the CIFAR stem, kNN and linear probe every 5000 steps."""
    _small32(c, "cifar10", cifar_stem=True)
    c.update(dict(batch_size=512, checkpoint_every=1000))
    c.evals.knn.every_steps = 5000
    c.evals.linear_probe.every_steps = 5000


def _imagenet(c: ml_collections.ConfigDict) -> None:
    """ImageNet at 224 px (base_config's dataset): ResNet-50, bfloat16, batch 4096."""
    c.model.name = "resnet50"
    c.update(dict(compute_dtype="bfloat16", batch_size=4096, checkpoint_every=2500))


VARIANTS = {"smoke": _smoke, "quickstart": _quickstart, "cifar10": _cifar10,
            "imagenet": _imagenet}


def apply_run_args(c: ml_collections.ConfigDict,
                   a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training configs' `epochs=E`, `width=W` and (pretext tasks) `steps=N` args, applied
    after the method's own settings; 0 (the default) keeps those."""
    if a.get("epochs"):
        c.num_epochs = a.epochs
    if a.get("width"):
        c.model.width = a.width
    if a.get("steps"):
        c.num_steps = a.steps
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


PRETEXT_MODELS = ("alexnet_bn", "resnet18", "resnet50")


def pretext_config(task: str, arg: str | None) -> tuple[ml_collections.ConfigDict,
                                                        ml_collections.ConfigDict]:
    """(config, parsed args) shared by the four pretext tasks (configs/rotation.py,
    jigsaw.py, counting.py, colorization.py): `VARIANT[,model=M,width=W,steps=N,epochs=E]`.

    Images are 64 px on the built-in dataset: AlexNet needs >= 63 px and 3 x 3 jigsaw tiles of
    a 32 px image would be ~9 px. quickstart reads `shapes_textures/upright64` (native 64 px;
    nothing rotated: the other variants draw every shape, texture and photo at a uniformly
    random angle, so an image's rotation cannot be predicted from it at all); smoke reads
    `tiny` upsampled to 64 px by the host pipeline's crop-and-resize. One crop + flip view
    (the `supervised` preset); the pretext transform happens inside the method's loss.
    """
    a = parse_arg(arg, variant="quickstart", model="alexnet_bn", width=0.0, steps=0, epochs=0.0)
    if a.model not in PRETEXT_MODELS:
        raise ValueError(f"unknown pretext backbone model={a.model!r}; valid: "
                         f"{', '.join(PRETEXT_MODELS)}")
    alexnet = a.model.startswith("alexnet")
    c = base_config(a.variant)
    c.method = task
    c.model.update(name=a.model, cifar_stem=False)
    c.augment.update(preset="supervised", overrides={})
    # RotNet's SGD: lr 0.1 at batch 128 (= 0.2 per 256 here), momentum 0.9, decay 5e-4.
    c.optimizer.update(name="sgd", base_lr=0.2, weight_decay=5e-4, momentum=0.9,
                       warmup_fraction=0.02)
    if alexnet:
        c.model.fc_dim = 4096
    if a.variant in ("smoke", "quickstart"):
        c.dataset.image_size = 64
        c.model.width = 0.125 if a.variant == "smoke" else 0.25
        if alexnet:
            c.model.fc_dim = 64 if a.variant == "smoke" else 512
    if a.variant == "quickstart":
        c.dataset.name = "shapes_textures/upright64"
        c.augment.overrides = {"min_crop_scale": 0.5}
        c.batch_size = 64
        c.num_epochs = 1
        # Every 20 steps, all kept: experiments/pretext_progress.py probes checkpoints along
        # the pretext-accuracy curve.
        c.checkpoint_every = 20
        c.keep_checkpoints = 100
    elif a.variant == "cifar10":
        c.dataset.image_size = 64 if alexnet else 32
        c.model.cifar_stem = not alexnet
        c.num_epochs = 100
    elif a.variant == "imagenet":
        c.model.name = "alexnet_bn" if alexnet else a.model
        c.batch_size = 256
        c.num_epochs = 30
        c.compute_dtype = "bfloat16"
    return apply_run_args(c, a), a
