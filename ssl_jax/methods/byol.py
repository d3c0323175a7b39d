"""BYOL (Grill et al. 2020), following deepmind-research/byol byol_experiment.py.

Online network: backbone -> projector -> predictor (trained). Target network: backbone ->
projector whose *parameters* are an EMA of the online ones, updated after every optimizer step
with tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2. The target keeps its own BatchNorm
statistics and runs in training mode (batch statistics), as in the reference.

State layout (all of it in `TrainState.model_state`, checkpointed with the rest):
  model_state = {"batch_stats": online BN statistics,
                 "target": {"params": target params (no predictor), "batch_stats": ...}}
The target lives outside `params`, so it is never differentiated and the optimizer never sees it.

Each view goes through the networks in its own forward pass (as the reference does), so BN
statistics are per view over the global batch; the online BN running averages are updated by
view 1 then view 2.

`byol.predictor=False` drops the predictor (online output = projection): with tau = 0 this is
the collapse control of Grill et al. (section 5), tested in tests/test_functional_controls.py.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables
from ssl_jax.models import heads


def target_ema(step: jax.Array | int, total_steps: int, base_ema: float) -> jax.Array:
    """BYOL's tau at optimizer step `step` (0-based) of `total_steps`:
    1 - (1 - base_ema) * (cos(pi * step / total_steps) + 1) / 2, so tau_0 = base_ema and
    tau_K = 1. Steps past the end are clamped to K (tau stays 1)."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    k = jnp.minimum(jnp.asarray(step, jnp.float32), float(total_steps))
    return 1.0 - (1.0 - base_ema) * (jnp.cos(math.pi * k / total_steps) + 1.0) / 2.0


class BYOLNet(nn.Module):
    """backbone -> projector [-> predictor]. Returns (h, z, p) with p None when not `predict`;
    without a predictor (`predictor=None`, the collapse control) p = z.

    The target network is this module applied with `predict=False` to params without the
    `predictor` subtree."""
    backbone: nn.Module
    projector: nn.Module
    predictor: nn.Module | None

    @nn.compact
    def __call__(self, x, train: bool, predict: bool = True):
        h = self.backbone(normalize(x), train=train)
        z = self.projector(h, train=train)
        if not predict:
            return h, z, None
        return h, z, z if self.predictor is None else self.predictor(z, train=train)


def _target_of(params):
    """Online params -> the subtree the target network mirrors (no predictor)."""
    return {k: v for k, v in params.items() if k != "predictor"}


class Method(base.Method):
    num_views = 2

    def __init__(self, config):
        cfg = config.byol
        # Configs saved before `predictor` existed had one.
        predictor = (heads.MLPHead(hidden_dim=cfg.pred_hidden_dim, out_dim=cfg.proj_dim)
                     if cfg.get("predictor", True) else None)
        # Projector and predictor are the same MLP shape (Dense-BN-ReLU-Dense).
        projector = heads.MLPHead(hidden_dim=cfg.proj_hidden_dim, out_dim=cfg.proj_dim,
                                  output_bn=cfg.get("projector_output_bn", False))
        self.net = BYOLNet(build_backbone(config), projector=projector, predictor=predictor)
        if not 0.0 <= cfg.base_ema <= 1.0:
            raise ValueError(f"byol.base_ema={cfg.base_ema} must be in [0, 1]")
        self.base_ema = float(cfg.base_ema)
        # The trainer writes the run length into config.total_steps (train.train); a config
        # with an explicit num_steps works without it (tests, evaluation of old runs).
        self.total_steps = int(config.get("total_steps") or config.get("num_steps") or 0)

    def init(self, rng, images):
        params, model_state = split_variables(self.net.init(rng, images, train=False))
        # The target starts as an exact copy of the online network (reference does the same).
        target = {"params": _target_of(params), "batch_stats": _target_of(model_state["batch_stats"])}
        return params, {**model_state, "target": target}

    def _online(self, params, batch_stats, x):
        (_, z, p), new = self.net.apply({"params": params, "batch_stats": batch_stats}, x,
                                        train=True, mutable=["batch_stats"])
        return z, p, new["batch_stats"]

    def _target(self, target, batch_stats, x):
        (_, z, _), new = self.net.apply({"params": target["params"], "batch_stats": batch_stats},
                                        x, train=True, predict=False, mutable=["batch_stats"])
        return jax.lax.stop_gradient(z), new["batch_stats"]

    def loss(self, params, model_state, views, labels, rng):
        del labels, rng
        v1, v2 = views[:, 0], views[:, 1]
        target = model_state["target"]
        online_z1, p1, bs = self._online(params, model_state["batch_stats"], v1)
        _, p2, bs = self._online(params, bs, v2)
        z1, tbs = self._target(target, target["batch_stats"], v1)
        z2, tbs = self._target(target, tbs, v2)
        per_example = losses.byol_regression(p1, z2) + losses.byol_regression(p2, z1)
        loss = per_example.mean()
        cos = 1.0 - 0.25 * per_example  # mean of the two cosines
        new_state = {**model_state, "batch_stats": bs,
                     "target": {"params": target["params"], "batch_stats": tbs}}
        # Diagnostics (no gradient): how often p1_i's nearest target projection z2'_j is its
        # own image's (chance 1/B), and the mean over dimensions of the batch std of the
        # L2-normalised online projection (~1/sqrt(D) when spread out, 0 when collapsed).
        retrieval = losses.contrastive_accuracy(losses.l2_normalize(p1), losses.l2_normalize(z2))
        spread = jnp.std(losses.l2_normalize(online_z1), axis=0).mean()
        metrics = {"loss": loss, "cosine_similarity": cos.mean(),
                   "retrieval_accuracy": jax.lax.stop_gradient(retrieval),
                   "projection_std": jax.lax.stop_gradient(spread)}
        return loss, (new_state, metrics)

    def features(self, params, model_state, images):
        """Online backbone features [B, D] (eval-mode BN)."""
        return self.net.apply({"params": params, "batch_stats": model_state["batch_stats"]},
                              images, train=False, predict=False)[0]

    def after_update(self, state):
        """target <- tau * target + (1 - tau) * online, tau at the step just taken."""
        if self.total_steps < 1:
            raise ValueError("BYOL needs the run length for its tau schedule: set "
                             "config.total_steps (the trainer does) or config.num_steps")
        tau = target_ema(state.step - 1, self.total_steps, self.base_ema)
        target = state.model_state["target"]
        new_params = jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o,
                                  target["params"], _target_of(state.params))
        model_state = {**state.model_state, "target": {**target, "params": new_params}}
        return state.replace(model_state=model_state)
