"""python run_eval.py --config configs/eval/confusion.py --config.checkpoint=runs/quickstart/simclr --config.reference=runs/quickstart/supervised --outdir runs/eval/simclr_confusion

Confusion structure of the 004 linear probe on final features (000): confusion matrix with
classes ordered by a grouping, fraction of top-5 errors inside the true class's group, and
(with `reference`, a second checkpoint probed the same way) the `top_classes` classes with the
largest and smallest per-class accuracy difference. `grouping`: "" -> built-in for
shapes_textures/* and imagenet2012, else 'group:cls+cls;group:cls+...' (names or indices).
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("confusion", arg, grouping="", reference="", top_classes=5,
                       probe_grid=45)
