"""python run_train.py --config configs/byol.py:quickstart --workdir runs/byol_quickstart

BYOL (Grill et al. 2020; deepmind-research/byol): online backbone + projector + predictor, target
= EMA of the online parameters with tau_k = 1 - (1 - base_ema)(cos(pi k/K) + 1)/2 stepped per
optimizer step; loss = mean over the batch of the two directions' 2 - 2cos SUMMED (in [0, 8]);
asymmetric `byol` augmentations (blur 1.0/0.1, solarize 0/0.2); LARS with biases and norm
parameters excluded from decay and trust ratio.
Variants: smoke (a few steps on the tiny built-in dataset), quickstart (built-in dataset, CPU
minutes), cifar10 (R18 CIFAR stem, 800 epochs), imagenet (R50, batch 4096, 300 epochs, bf16;
the reference's 300-epoch settings: lr 0.3, wd 1e-6, base_ema 0.99).
Args: `configs/byol.py:VARIANT[,epochs=E,width=W]`; any field: `--config.byol.base_ema=0.996`,
`--config.byol.predictor=False` (no predictor: a collapse control, not a method),
`--config.byol.projector_output_bn=True` (SimSiam's scale-free BatchNorm after the projector),
`--config.optimizer.lr_multipliers.predictor=10` (the predictor's learning-rate factor).
"""
from configs.common import apply_run_args, base_config, parse_arg
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="quickstart", epochs=0.0, width=0.0)
    c = base_config(a.variant)
    c.method = "byol"
    # The reference's 4096/256 MLPs (projector and predictor share the architecture).
    # predictor=False drops the predictor (online output = projection): with tau = 0 the
    # collapse control of Grill et al. section 5 (tests/test_functional_controls.py; tau = 0 at
    # every step needs base_ema 0 AND total_steps >> the steps taken, since the cosine
    # schedule raises tau from base_ema to 1 over total_steps).
    c.byol = ml_collections.ConfigDict(dict(base_ema=0.99, proj_hidden_dim=4096,
                                            pred_hidden_dim=4096, proj_dim=256, predictor=True,
                                            projector_output_bn=False))
    c.augment.update(preset="byol")
    # Learning-rate factor per top-level parameter subtree (ssl_jax.optim.with_lr_multipliers).
    c.optimizer.lr_multipliers = ml_collections.ConfigDict(dict(predictor=1.0))
    if a.variant == "smoke":
        c.byol.update(proj_hidden_dim=64, pred_hidden_dim=64, proj_dim=32)
    elif a.variant == "quickstart":
        # 32 px toy data: the same small-crop caveat as SimCLR's quickstart, and a head sized
        # to the width-0.25 ResNet-18 (128 features).
        c.augment.update(overrides={"min_crop_scale": 0.5, "blur": False})
        c.byol.update(proj_hidden_dim=512, pred_hidden_dim=512, proj_dim=128)
        # Batch 128 x 16 epochs = 1248 steps, twice SimCLR's step count: BYOL separates from
        # random-init features more slowly than the contrastive methods (methods table at 624
        # and 1248 steps, docs/METHODS.md: +5.35 and +15.93 linear). No blur at 32 px (a 3-tap
        # kernel only darkens the border).
        # Two departures from the reference, both from SimSiam / DirectPred's analyses of
        # predictor-based methods, chosen on faintgrey32 (docs/METHODS.md, "The quickstart
        # setting"): a scale-free BatchNorm on the projector output (SimSiam's projector),
        # which removes the direction common to every target projection that the predictor
        # otherwise learns to output, and the predictor at 10x the learning rate, so that it
        # tracks the target within a few hundred steps. Without them kNN accuracy fell to ~25
        # in the first 40 steps and stayed there; with them it stays at ~33-36.
        c.batch_size = 128
        c.num_epochs = 16
        c.optimizer.update(name="lars", base_lr=1.0, weight_decay=1e-6, warmup_fraction=0.05)
        c.byol.projector_output_bn = True
        c.optimizer.lr_multipliers.predictor = 10.0
    elif a.variant == "cifar10":
        # 32 px: blur over a 3 px kernel is noise; solo-learn's CIFAR recipe drops it.
        c.augment.update(overrides={"blur": False})
        c.num_epochs = 800
        c.optimizer.update(name="lars", base_lr=1.0, weight_decay=1e-5, warmup_fraction=0.0125)
    elif a.variant == "imagenet":
        c.num_epochs = 300
        c.optimizer.update(name="lars", base_lr=0.3, weight_decay=1e-6, warmup_fraction=10 / 300)
    return apply_run_args(c, a)
