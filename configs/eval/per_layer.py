"""python run_eval.py --config configs/eval/per_layer.py --config.checkpoint=runs/quickstart/simclr --outdir runs/eval/simclr_layers

Linear probe (004 protocol, `probe_grid` C points) on each named layer (001 / 000). `layers`:
'+'-separated sown names (e.g. `layer2+layer4`); "" -> every sown layer whose last name is
stem, layerK, convK or pool (ResNet: stem, layer1-4, pool; AlexNet/VGG: conv1-5).
`pooling`: gap (global average over positions, channels as features) or flatten.
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("per_layer", arg, layers="", pooling="gap", probe_grid=45)
