"""python run_train.py --config configs/colorization.py:quickstart --workdir runs/colorization_quickstart

Colorization (Zhang et al. 2016): the backbone sees L only; a conv head on its last spatial
map (AlexNet conv5 / ResNet layer4; `feature_layer`) predicts per-pixel ab bins at
`out_size` (0 = a quarter of the image side) over the in-gamut cells of a `grid` (10) ab grid,
soft-encoded targets, class rebalancing (lambda 0.5) from the running bin counts; previews use
the annealed mean (T = 0.38).
Variants: smoke, quickstart (uprightbg64, 800 steps), cifar10, imagenet (224 px, 56 x 56 output).
Args: `configs/colorization.py:VARIANT[,model=alexnet_bn|resnet18|resnet50,width=W,steps=N,
epochs=E]`; any field with `--config.colorization.KEY=VALUE`.
"""
import ml_collections

from configs.common import pretext_config


def get_config(arg=None):
    c, a = pretext_config("colorization", arg)
    c.colorization = ml_collections.ConfigDict(dict(
        grid=10.0, out_size=0, feature_layer="", hidden_dim=128, rebalance_lambda=0.5,
        temperature=0.38))
    if a.variant == "smoke":
        c.colorization.hidden_dim = 16
    elif a.variant == "quickstart":
        # upright64's colours are drawn independently of everything else, so ab cannot be
        # predicted from L beyond a brightness prior and the features learn nothing of the
        # class; uprightbg64 ties each class's background style and hue in 90% of train,
        # colours then follow content as in photos (docs/PRETEXT.md).
        c.dataset.name = "shapes_textures/uprightbg64"
        c.num_steps = a.steps or 800
    elif a.variant == "imagenet":
        c.colorization.hidden_dim = 256
    return c
