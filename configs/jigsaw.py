"""python run_train.py --config configs/jigsaw.py:quickstart --workdir runs/jigsaw_quickstart

Jigsaw puzzles (Noroozi & Favaro 2016): 3 x 3 tiles with random gaps (tiles 0.85 of a cell,
Noroozi's 64/75), per-channel jitter and 30% grayscale against chromatic shortcuts, per-tile
normalisation, a shared tile encoder, a `num_permutations`-way (100) classifier over a greedy
max-min-Hamming permutation set (chance 1%).
Tiles are resized to `tile_size` for the encoder: 64 px for AlexNet (it needs >= 63), 32 px for
ResNets on the built-in dataset (0 = the native tile size).
Variants: smoke, quickstart (upright64, 30 permutations), cifar10, imagenet (225-like 224 px images,
64 px tiles, 4096-d fc7 as in the paper).
Args: `configs/jigsaw.py:VARIANT[,model=alexnet_bn|resnet18|resnet50,width=W,steps=N,epochs=E]`;
any field with `--config.jigsaw.KEY=VALUE`.
"""
import ml_collections

from configs.common import pretext_config


def get_config(arg=None):
    c, a = pretext_config("jigsaw", arg)
    alexnet = c.model.name.startswith("alexnet")
    c.jigsaw = ml_collections.ConfigDict(dict(
        grid=3, tile_fraction=0.85, tile_size=64 if alexnet else 32, num_permutations=100,
        permutation_seed=0, hidden_dim=512, channel_jitter=1, grayscale_prob=0.3))
    if a.variant == "smoke":
        c.jigsaw.update(num_permutations=10, hidden_dim=32)
    elif a.variant == "quickstart":
        # 30 permutations (chance 3.3%): 100-way puzzles barely leave chance in the
        # ~13k puzzles a CPU quickstart sees.
        c.jigsaw.num_permutations = 30
        c.num_steps = a.steps or 200
    elif a.variant == "imagenet":
        c.jigsaw.update(tile_size=64, hidden_dim=4096, channel_jitter=2)
    return c
