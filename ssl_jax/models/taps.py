"""Named activations that can be read (``sow``) and differentiated (``perturb``).

``tap(module, name, x)`` sows ``x`` into "intermediates" (as before: read with
``mutable=["intermediates"]``) and returns ``x + p`` where ``p`` is the zero variable
``perturbations/<name>``. ``p`` exists only when the caller asks for it (``mutable`` contains
"perturbations", or the variables carry that collection), so ordinary ``init``/``apply`` are
unchanged; the gradient of any output w.r.t. ``p`` is the gradient w.r.t. the activation, which
is how ssl_jax.evaluation.attention gets Grad-CAM at any named layer without forking models.

``sow_in_block(module, name, x)`` sows an activation inside a residual block into the separate
``in_block`` collection: collected only when asked for (``mutable=["intermediates", IN_BLOCK]``),
so the "intermediates" that every evaluator reads stay the same.
"""
import flax.linen as nn
import jax.numpy as jnp

PERTURBATIONS = "perturbations"
IN_BLOCK = "in_block"


def tap(module: nn.Module, name: str, x: jnp.ndarray) -> jnp.ndarray:
    """Sow ``x`` under ``name`` and return it plus a (normally absent) zero perturbation."""
    module.sow("intermediates", name, x)
    if module.is_initializing():  # keep init's variables free of a perturbations collection
        return x
    return module.perturb(name, x, collection=PERTURBATIONS)


def sow_in_block(module: nn.Module, name: str, x: jnp.ndarray) -> None:
    """Sow ``x`` (an activation inside a residual block) into the ``in_block`` collection."""
    # Not at init: init collects every collection it is not told to skip, and the variables
    # (checkpoints, converters) must keep their layout.
    if not module.is_initializing():
        module.sow(IN_BLOCK, name, x)
