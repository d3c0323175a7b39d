"""python run_train.py --config configs/moco.py:quickstart --workdir runs/moco_v2_quickstart

MoCo v1/v2 (facebookresearch/moco): key encoder = momentum copy of the query encoder, updated
before the keys are encoded; a queue of L2-normalised keys filled from the global batch;
InfoNCE with the positive in column 0. v1: linear head, T = 0.07, v1 augmentation (jitter
0.4 incl. hue always on, grayscale 0.2, no blur); v2 (default): MLP head, T = 0.2, `moco_v2`
augmentation. Key-encoder BN: `moco.bn=shuffle` (shuffle-BN over the devices, default) or `sync`.
SGD lr 0.03 per 256 images, momentum 0.9, wd 1e-4 (on weights only: ssl_jax masks biases and
BN; the reference decays everything), cosine schedule (v2; v1 used steps at 120/160 epochs).
Variants: smoke, quickstart (built-in dataset, CPU minutes), cifar10 (R18 CIFAR stem, 800
epochs, m = 0.99, K = 4096), imagenet (R50, batch 256, 200 epochs, m = 0.999, K = 65536).
Args: `configs/moco.py:VARIANT[,version=1|2,epochs=E,width=W]`; any field: `--config.moco.bn=sync`.
Switch versions with the `version=` arg (head, T and augmentation together); overriding
`--config.moco.version` alone changes only the head.
"""
from configs.common import apply_run_args, base_config, parse_arg
import ml_collections

# MoCo v1 (main_moco.py without --aug-plus): ColorJitter(0.4, 0.4, 0.4, 0.4) always, no blur.
V1_AUGMENT = {"jitter": (0.4, 0.4, 0.4, 0.4), "jitter_prob": 1.0, "blur_prob": 0.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="quickstart", version=2, epochs=0.0, width=0.0)
    if a.version not in (1, 2):
        raise ValueError(f"unknown moco version {a.version}; valid: 1, 2")
    c = base_config(a.variant)
    c.method = "moco"
    c.moco = ml_collections.ConfigDict(dict(
        version=a.version, temperature=0.07 if a.version == 1 else 0.2, momentum=0.999,
        queue_size=65536, proj_dim=128, bn="shuffle", bn_splits=8, symmetric=False))
    overrides = dict(V1_AUGMENT) if a.version == 1 else {}
    c.augment.update(preset="moco_v2")
    c.optimizer.update(name="sgd", base_lr=0.03, weight_decay=1e-4, momentum=0.9,
                       warmup_fraction=0.0)
    if a.variant == "smoke":
        c.moco.update(queue_size=128, momentum=0.99)
    elif a.variant == "quickstart":
        # A run of a few hundred steps needs short time constants: m = 0.9 lets the key
        # encoder follow the query with a ~10-step lag (0.99's 100 steps were 43% of the old
        # 234-step run) and the 1024-key queue holds the keys of the last 4 steps (2B = 256
        # per step with the symmetric loss), not the last 16. Split BN (8 slices) does what
        # shuffle-BN does on 8 GPUs; no blur at 32 px. docs/METHODS.md, "The quickstart
        # setting", has the runs that chose this.
        overrides.update(min_crop_scale=0.5, blur_prob=0.0)
        c.moco.update(queue_size=1024, momentum=0.9, symmetric=True, bn="split")
        c.batch_size = 128
        c.num_epochs = 8
        # Short run, small batch of toy images: a larger LR than the reference's 0.03 per 256.
        c.optimizer.update(base_lr=0.06)
    elif a.variant == "cifar10":
        c.moco.update(queue_size=4096, momentum=0.99)
        overrides["blur_prob"] = 0.0
        c.num_epochs = 800
        c.optimizer.update(base_lr=0.06, weight_decay=5e-4)
    elif a.variant == "imagenet":
        c.batch_size = 256
        c.num_epochs = 200
    c.augment.overrides = overrides
    return apply_run_args(c, a)
