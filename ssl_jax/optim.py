"""Optimizers and schedules from config (optax only; nothing hand-written that optax has)."""
from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "lars", "adamw")


def decay_mask(params):
    """True for weights that take weight decay (and LARS adaptation).

    Biases and normalisation parameters (every leaf with ndim <= 1) are excluded. Masking by
    rank rather than by name also catches shortcut BatchNorms (`downsample_1`), which name
    filters in other codebases missed.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(base_lr: float, batch_size: int, total_steps: int,
                           warmup_steps: int, scale_with_batch: bool = True) -> optax.Schedule:
    """Linear warmup then cosine decay to 0. With `scale_with_batch`, lr = base_lr * batch/256
    (the SimCLR/BYOL convention)."""
    peak = base_lr * batch_size / 256 if scale_with_batch else base_lr
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, 1), end_value=0.0)


def build_optimizer(name: str, schedule: optax.Schedule, weight_decay: float,
                    momentum: float = 0.9, lars_eta: float = 1e-3,
                    clip_grad_norm: float = 0.0,
                    lr_multipliers: dict[str, float] | None = None
                    ) -> optax.GradientTransformation:
    """`name` in OPTIMIZERS. Weight decay is applied to `decay_mask` leaves only. With
    `clip_grad_norm` > 0 the gradients are first scaled to a global norm of at most that.
    `lr_multipliers` {top-level parameter subtree: factor} scales those subtrees' learning
    rate (`with_lr_multipliers`)."""
    tx = _optimizer(name, schedule, weight_decay, momentum, lars_eta)
    return with_clipping(with_lr_multipliers(tx, lr_multipliers or {}), clip_grad_norm)


def with_lr_multipliers(tx: optax.GradientTransformation, multipliers: dict[str, float]
                        ) -> optax.GradientTransformation:
    """`tx` whose updates for the top-level parameter subtrees named in `multipliers` are
    scaled by their factor (e.g. {"predictor": 10.0}: BYOL's predictor at 10x the rate).

    Every optimizer here is linear in its learning rate (SGD and LARS momentum accumulate
    lr * u, AdamW's step is lr times a rate-free direction, decoupled decay included), so
    scaling a subtree's update by f each step is the same as running that subtree at f times
    the schedule. The state is exactly `tx`'s (as `with_clipping`), so checkpoints are
    unchanged. Factors of 1 are no-ops; unknown names are an error at the first update."""
    scaled = {k: float(v) for k, v in multipliers.items() if float(v) != 1.0}
    for k, v in scaled.items():
        if v < 0:
            raise ValueError(f"optimizer.lr_multipliers.{k}={v} is negative; valid: >= 0")
    if not scaled:
        return tx

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        unknown = sorted(set(scaled) - set(updates))
        if unknown:
            raise ValueError(f"optimizer.lr_multipliers names {', '.join(unknown)}, which "
                             f"the model has no parameters for; valid: {', '.join(updates)}")
        updates = {k: (jax.tree.map(lambda u, f=scaled[k]: u * f, v) if k in scaled else v)
                   for k, v in updates.items()}
        return updates, state

    return optax.GradientTransformation(tx.init, update)


def with_clipping(tx: optax.GradientTransformation, max_norm: float
                  ) -> optax.GradientTransformation:
    """`tx` applied to gradients clipped by optax.clip_by_global_norm(max_norm) (0: `tx`).

    Not `optax.chain(clip, tx)`: that would add the clip's (empty) state to the optimizer
    state's tree, so a run could not switch clipping on when resuming, nor load checkpoints
    saved without it. Here the state is exactly `tx`'s."""
    if not max_norm:
        return tx
    if max_norm < 0:
        raise ValueError(f"optimizer.clip_grad_norm={max_norm} is negative; valid: 0 (off) "
                         "or a positive global norm, e.g. 1.0")
    clip = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None):
        clipped, _ = clip.update(updates, clip.init(None))
        return tx.update(clipped, state, params)

    return optax.GradientTransformation(tx.init, update)


def _optimizer(name, schedule, weight_decay, momentum, lars_eta):
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                           optax.sgd(schedule, momentum=momentum))
    if name == "lars":
        # optax.lars: decay, then trust ratio eta*||w||/||g + wd*w||, then the learning rate,
        # then momentum (v <- m v + lr u; SimCLR's LARSOptimizer). BYOL's reference applies
        # the rate after momentum (v <- m v + u, w -= lr v); the two differ only while the
        # rate changes, most in warmup (the step-0 gradient at lr 0 never enters v here).
        return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                          trust_coefficient=lars_eta, trust_ratio_mask=decay_mask,
                          momentum=momentum)
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
