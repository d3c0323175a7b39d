"""python run_eval.py --config configs/eval/retrieval.py --config.checkpoint=runs/quickstart/simclr --outdir runs/eval/simclr_retrieval

Nearest neighbours (003 Fig. 2): for each eval-split image in `queries` ('+'- or ','-separated
indices), the `k` train-split images with the highest cosine similarity of final features;
writes a grid PNG and the neighbours' indices, labels and similarities.
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("retrieval", arg, queries="0+1+2+3+4+5+6+7", k=5)
