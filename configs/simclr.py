"""python run_train.py --config configs/simclr.py:quickstart --workdir runs/simclr_quickstart

SimCLR (Chen et al. 2020), v1 projection head, NT-Xent over the global batch (mean over the 2N
rows; google-research/simclr sums the two directions = 2x this loss).
Variants: smoke (a few steps on the tiny built-in dataset), quickstart (built-in dataset, CPU
minutes), cifar10 (R18 CIFAR stem, 800 epochs), imagenet (R50, batch 4096, 100 epochs, bf16).
Args: `configs/simclr.py:VARIANT[,version=1|2,epochs=E,width=W]`; any field:
`--config.simclr.temperature=0.2`. `version=2` (SimCLR v2): 3-layer projection head with
BatchNorm (google-research/simclr tf2), and `--config.simclr.features_layer=1` evaluates from
the head's first layer (v2's ft_proj_selector; 0 = backbone, the default); imagenet v2 also
uses T = 0.1 and weight decay 1e-4.
"""
from configs.common import apply_run_args, base_config, parse_arg
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="quickstart", version=1, epochs=0.0, width=0.0)
    if a.version not in (1, 2):
        raise ValueError(f"unknown simclr version {a.version}; valid: 1, 2")
    c = base_config(a.variant)
    c.method = "simclr"
    c.simclr = ml_collections.ConfigDict(dict(
        temperature=0.5, proj_dim=128, head="v1" if a.version == 1 else "v2", head_layers=3,
        features_layer=0))
    if a.variant == "smoke":
        c.augment.update(preset="simclr_cifar")
    elif a.variant == "quickstart":
        # A prototype found the minimum crop area mattered most on small 32 px images: small
        # crops often miss the shape, leaving two views that share only background.
        c.augment.update(preset="simclr_cifar", overrides={"min_crop_scale": 0.5})
        c.batch_size = 256
        c.num_epochs = 16
        c.optimizer.update(name="lars", base_lr=1.0, weight_decay=1e-6, warmup_fraction=0.05)
    elif a.variant == "cifar10":
        c.augment.update(preset="simclr_cifar")
        c.num_epochs = 800
        c.optimizer.update(name="lars", base_lr=1.0, weight_decay=1e-6, warmup_fraction=0.0125)
    elif a.variant == "imagenet":
        c.simclr.temperature = 0.1
        c.num_epochs = 100
        c.optimizer.update(name="lars", base_lr=0.3, weight_decay=1e-6, warmup_fraction=0.1)
        if a.version == 2:
            c.optimizer.weight_decay = 1e-4
    return apply_run_args(c, a)
