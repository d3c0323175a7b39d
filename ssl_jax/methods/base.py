"""The method contract: what the trainer, the evaluators and run_eval rely on, with defaults.

Every `ssl_jax/methods/<name>.py` defines `class Method(base.Method)`; the trainer calls only
what is declared here, so nothing in it is method-specific.
"""
from __future__ import annotations

import abc
from typing import Any

import jax

Params = Any      # the network's trainable parameters (a pytree)
ModelState = Any  # every other collection: BatchNorm statistics, EMA targets, queues, banks


def network_variables(params: Params, model_state: ModelState) -> dict:
    """The Flax variables of `self.net` alone: parameters and BatchNorm statistics, without the
    method's own state (targets, queues, banks, colour priors)."""
    variables = {"params": params}
    if "batch_stats" in model_state:
        variables["batch_stats"] = model_state["batch_stats"]
    return variables


class Method(abc.ABC):
    """A training method. Subclasses set `num_views` and implement `init` and `loss`; `net` is
    the Flax module whose first output is the backbone features (run_eval's sown layers and
    the default `features` read it)."""

    num_views: int            # views per image the input pipeline must produce
    # True: the pipeline adds each example's stable split position and `loss` gets it as
    # `index` [B] (memory banks).
    needs_index: bool = False
    # Dataset features (beyond image and label) the pipeline must add to each batch; `loss`
    # gets them as `targets` {name: [B, ...]} (the task bank's dense targets). The views are
    # then the whole image: targets are not cropped or flipped with them.
    target_keys: tuple = ()
    net: Any

    @abc.abstractmethod
    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Params, ModelState]:
        """images: [B, H, W, 3] float in [0, 1] -> (params, model_state)."""

    @abc.abstractmethod
    def loss(self, params: Params, model_state: ModelState, views: jax.Array,
             labels: jax.Array, rng: jax.Array, **index) -> tuple[jax.Array, tuple]:
        """views: [B, V, H, W, 3] float in [0, 1] -> (loss, (new model_state, metrics))."""

    def features(self, params: Params, model_state: ModelState, images: jax.Array) -> jax.Array:
        """Backbone features [B, D] in eval mode, for kNN, linear probes and the online probe."""
        return self.net.apply(network_variables(params, model_state), images, train=False)[0]

    def after_update(self, state):
        """The train state after the optimizer step -> the state to keep (EMA targets, queues,
        banks). Identity unless the method keeps state outside the loss."""
        return state
