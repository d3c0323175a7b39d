"""python run_eval.py --config configs/eval/attention.py --config.checkpoint=runs/quickstart/simclr --outdir runs/eval/simclr_attention

Attention maps (000, 003, 004) on the first `num_examples` eval-split images: Grad-CAM and
Guided Grad-CAM at `layer` (default: the last conv layer the model taps), vanilla gradient
saliency through a linear head fitted on frozen train features (every checkpoint, supervised
included, is scored through such a head), and feature-space occlusion. Scores: sharpness, IoU
(maps binarised at 50% of max) and Spearman between map types, and localisation IoU against
the dataset's foreground masks when it has them (the built-in dataset does). Writes
attention.json, attention.png (overlays), metrics.json and report.md.
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("attention", arg, num_examples=256, layer="")
