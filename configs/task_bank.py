"""python run_train.py --config configs/task_bank.py:quickstart,task=normals --workdir runs/bank/normals

One network of the task bank (ssl_jax/methods/task_bank.py): the quickstart's encoder
(ResNet-18 width 0.25, strided stem) and a shallow decoder trained for one task of
`shapes_textures/dense32`, whole images (no crop or flip: the targets are not cropped), AdamW
with cosine decay. At the end, the `task_quality` evaluator scores the task on the test split
against its trivial baseline.
Tasks: class, scene, segment_fg, segment_class, occlusion_edges, texture_edges, keypoints,
distance, z_depth, normals, curvature, reshading, autoencoding, denoising, inpainting,
colorization.
Variants: smoke (densetiny, a few steps), quickstart (dense32, `steps` optimizer steps).
Args: `configs/task_bank.py:VARIANT[,task=T,steps=N,width=W]`; any field with --config.KEY.
"""
import ml_collections

from configs.common import apply_run_args, base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="quickstart", task="class", steps=0, width=0.0)
    c = base_config(a.variant)
    c.method = "task_bank"
    c.task_bank = ml_collections.ConfigDict(dict(
        task=a.task, feature_layer="layer4", decoder_width=64,
        # denoising: Gaussian noise of this std on [0, 1] images (at 0.2 the noisy image
        # itself, 14.8 dB, beat a 400-step network's 14.1 dB: a 1 x 1 code cannot keep the
        # detail weak noise leaves); inpainting: the side of the centred square hidden from
        # the encoder (12 of 32 px: 14% of the image).
        noise_std=0.5, hole=12))
    c.augment.update(preset="dense", overrides={})
    c.online_probe.enabled = False
    c.optimizer.update(name="adamw", base_lr=2e-3, weight_decay=1e-4, scale_with_batch=False,
                       warmup_fraction=0.02)
    # Scored once, at the end (every_steps > 0 runs it at the last step too); the trivial
    # baseline's statistics come from the first `baseline_examples` train images (0: all).
    c.evals = ml_collections.ConfigDict(dict(
        task_quality=dict(every_steps=1_000_000, baseline_examples=0)))
    if a.variant == "smoke":
        c.dataset.name = "shapes_textures/densetiny"
    else:
        if a.variant != "quickstart":
            raise ValueError(f"configs/task_bank.py has variants smoke and quickstart, got "
                             f"{a.variant!r}")
        c.dataset.name = "shapes_textures/dense32"
        c.batch_size = 128
        c.num_steps = 1500
        # The baseline is a mean map or a majority: 2000 images pin it down.
        c.evals.task_quality.baseline_examples = 2000
    return apply_run_args(c, a)
