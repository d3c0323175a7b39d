"""Online linear probe: a linear classifier trained beside a method on its frozen features.

As solo-learn and BYOL's reference do, every training step also fits logits = f @ w + b to the
labels by cross-entropy, where f = `method.features` of the step's first augmented view, so
accuracy is visible while pretraining (`online_linear_top1`, the batch's accuracy before the
update, in percent). It is an observer and cannot change what the method learns:
- f is under stop_gradient and the probe's parameters are neither in `TrainState.params` nor
  in the method's optimizer (they have their own Adam), so the method's gradients, gradient
  norm, clipping and LARS trust ratios are the same with or without it;
- `method.features` runs in eval mode (running BatchNorm statistics, nothing mutated), the
  probe starts from zeros and draws no random numbers, so the method's RNG streams are
  untouched.
Minimising its cross-entropy on its own parameters equals adding it to the method's loss
(the two parameter sets share no gradient), and keeps the logged `loss` the method's own.
It lives in `TrainState.probe` (checkpointed); runs saved before it existed have no
`online_probe` config key and load and resume without it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class ProbeState:
    params: dict  # {"w": [D, K], "b": [K]}
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class OnlineProbe:
    num_classes: int
    learning_rate: float

    @property
    def tx(self) -> optax.GradientTransformation:
        return optax.adam(self.learning_rate)

    def init(self, num_features: int) -> ProbeState:
        params = {"w": jnp.zeros((num_features, self.num_classes), jnp.float32),
                  "b": jnp.zeros((self.num_classes,), jnp.float32)}
        return ProbeState(params=params, opt_state=self.tx.init(params))

    def update(self, probe: ProbeState, features: jax.Array, labels: jax.Array
               ) -> tuple[ProbeState, dict[str, jax.Array]]:
        """One Adam step on the cross-entropy of `features` [B, D] (gradient stopped) ->
        (new probe, {"online_linear_loss", "online_linear_top1"}) of the batch before it."""
        x = jax.lax.stop_gradient(features).astype(jnp.float32)

        def loss_fn(params):
            logits = x @ params["w"] + params["b"]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return ce, logits

        (ce, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(probe.params)
        updates, opt_state = self.tx.update(grads, probe.opt_state, probe.params)
        top1 = 100.0 * (jnp.argmax(logits, axis=-1) == labels).mean()
        new = ProbeState(params=optax.apply_updates(probe.params, updates), opt_state=opt_state)
        return new, {"online_linear_loss": ce, "online_linear_top1": top1}


def from_config(config) -> OnlineProbe | None:
    """The run's online probe, or None when `config.online_probe.enabled` is off or absent
    (configs saved before the probe existed)."""
    cfg = config.get("online_probe")
    if cfg is None or not cfg.get("enabled", False):
        return None
    return OnlineProbe(num_classes=int(config.dataset.num_classes),
                       learning_rate=float(cfg.learning_rate))
