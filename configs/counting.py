"""python run_train.py --config configs/counting.py:quickstart --workdir runs/counting_quickstart

Counting (Noroozi et al. 2017): phi(whole image at the tiles' scale) = sum of phi(2 x 2
tiles), plus max(0, M - |phi(other image) - sum|^2) against the trivial phi = 0; phi is the
backbone + Dense(count_dim) + ReLU. `tile_size`: the side tiles and whole image are resized to
(AlexNet: 64, tiles upsampled; ResNets: 0 = half the image, the whole image downsampled 2x;
quickstart: 64 for both).
Logged pretext_accuracy: own whole image closer to the tile sum than the other's (chance 50%).
Variants: smoke, quickstart (upright64), cifar10, imagenet (1000 counts, M = 10).
Args: `configs/counting.py:VARIANT[,model=alexnet_bn|resnet18|resnet50,width=W,steps=N,epochs=E]`;
any field with `--config.counting.KEY=VALUE`.
"""
import ml_collections

from configs.common import pretext_config


def get_config(arg=None):
    c, a = pretext_config("counting", arg)
    alexnet = c.model.name.startswith("alexnet")
    c.counting = ml_collections.ConfigDict(dict(
        count_dim=1000, margin=10.0, tile_size=64 if alexnet else 0))
    if a.variant == "smoke":
        c.counting.count_dim = 32
    elif a.variant == "quickstart":
        # 100 steps left AlexNet's features below random init (an early dip); by 800 they
        # are well above it. ResNet-18 needs 1600: at 800 its best layer was still below
        # random init's (42.8% vs 46.4%), at 1600 above (docs/PRETEXT.md).
        c.num_steps = a.steps or (800 if alexnet else 1600)
        # Every view at the 64 px the probes see. ResNet-18 on 32 px views (its layer4 is
        # then 1 x 1) did worse at 800 steps (35.8%).
        c.counting.tile_size = 64
    elif a.variant == "imagenet":
        c.counting.tile_size = 112
    return c
