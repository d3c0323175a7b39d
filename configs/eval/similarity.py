"""python run_eval.py --config configs/eval/similarity.py --config.checkpoint=runs/quickstart/simclr --config.checkpoint_b=runs/quickstart/supervised --outdir runs/eval/cka

Layer-by-layer minibatch CKA between two networks on the first `num_examples` eval examples
(all layer pairs, each layer vs one-hot labels, each layer of A clean vs its training
augmentations); `activations`: gap or flatten; `layers`: the layer set (docs/SIMILARITY.md),
"blocks" (the sown block outputs with the stem, pool and head layers), "all" (also the
activations inside each residual block), "odd" (only those) or "even" (= "blocks").
`checkpoint` and `checkpoint_b` are each a run_train workdir or a converted checkpoint
directory (docs/SIMILARITY.md).
"""
from configs.common import eval_config


def get_config(arg=None):
    return eval_config("similarity", arg, checkpoint_b="", num_examples=2000, activations="gap",
                       layers="blocks")
