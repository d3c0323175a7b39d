"""python run_train.py --config configs/rotation.py:quickstart --workdir runs/rotation_quickstart

Rotation prediction (Gidaris et al. 2018): all four 0/90/180/270 rotations of every image in
the batch, 4-way classification from the backbone features (chance 25%).
Variants: smoke (6 steps, tiny dataset), quickstart (upright64, CPU minutes), cifar10,
imagenet (AlexNet-BN, batch 256, 30 epochs, bf16).
Args: `configs/rotation.py:VARIANT[,model=alexnet_bn|resnet18|resnet50,width=W,steps=N,epochs=E]`;
any field with `--config.KEY=VALUE`. Shared settings: configs/common.py `pretext_config`.
"""
from configs.common import pretext_config


def get_config(arg=None):
    c, a = pretext_config("rotation", arg)
    if a.variant == "quickstart" and not a.steps:
        # ~10 epochs of upright64 (RotNet trains for 30+): at 400 steps the pretext accuracy
        # was still 28-30% and the features no better than random init; it keeps rising to
        # 55-60% by 1600 (docs/PRETEXT.md).
        c.num_steps = 1600
    return c
