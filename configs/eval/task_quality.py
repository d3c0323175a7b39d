"""python run_eval.py --config configs/eval/task_quality.py --config.checkpoint=runs/whats_missing/bank/normals --outdir runs/eval/normals_quality

A task-bank network (configs/task_bank.py) scored on its own task over the eval split against
the task's trivial baseline, fitted on the first `baseline_examples` train images (0: all):
`task_score`, `task_baseline`, `task_gain` (ssl_jax/evaluation/task_quality.py: the metrics).
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("task_quality", arg, baseline_examples=2000)
