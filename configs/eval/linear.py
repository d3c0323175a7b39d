"""python run_eval.py --config configs/eval/linear.py --config.checkpoint=runs/quickstart/simclr --outdir runs/eval/simclr_linear

Frozen final features: weighted kNN (k=200, T=0.07), the 004 linear probe (L-BFGS, C grid of
`probe_grid` points; 004: 45), its test ECE (raw and temperature-scaled) and 5-way 5-shot
ProtoNet (`few_shot_episodes`, 0 to skip); writes the probe's reliability diagram
(reliability.png). Args: `linear.py:dataset=D,probe_grid=9,...`.
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("linear", arg, probe_grid=45, few_shot_episodes=600, knn_k=200,
                       knn_temperature=0.07)
