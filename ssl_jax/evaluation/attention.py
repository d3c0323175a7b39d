"""Attention maps of image models and scores that compare them (000, 003, 004).

Maps (all batch-first NHWC inputs ``x: [N, H, W, C]``, maps ``[N, H, W]`` at input size):
- ``grad_cam``: gradient of the target logit w.r.t. a named conv activation A ``[N, h, w, K]``;
  channel weights alpha_k = spatial mean of that gradient; map = ReLU(sum_k alpha_k A_k),
  bilinearly upsampled to H x W.
- ``guided_backprop``: input gradient ``[N, H, W, C]`` of the target logit with every ReLU's
  backward pass replaced by "pass only positive gradients where the forward input was
  positive" (``guided_relu``, swapped into the model's ``activation`` field).
- ``guided_grad_cam``: guided backprop times the (upsampled) Grad-CAM map, ``[N, H, W, C]``.
- ``vanilla_saliency`` (003): max over channels of |d logit / d input| for a linear head on
  frozen features.
- ``occlusion_map`` (004): task-agnostic; slide an occluding patch, per pixel average of
  ||f(x_occluded) - f(x)|| over the patches covering it.

Scores (per example, ``[N]``): ``map_iou`` (both maps binarised at > 50% of their max),
``spearman`` (rank correlation, average ranks for ties), ``sharpness`` (fraction of pixels with
relative attention map / max < 0.5, 000) and ``localisation_iou`` (binarised map vs a
ground-truth foreground mask).

Models: ``model`` is a Linen module or a function with ``module.apply``'s signature, called as
``model(variables, x, train=False)``; ``head`` maps its output to logits ``[N, num_classes]``
(None: the output already is logits). Layers are addressed as in ssl_jax.similarity
(``flatten_intermediates`` names of the sown activations, e.g. "layer4" or "backbone/layer4");
gradients w.r.t. them come from the zero "perturbations" that ssl_jax.models.taps.tap adds.
``target`` is ``[N]`` int class indices, or None for each example's predicted class.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models.taps import PERTURBATIONS
from ssl_jax.similarity.activations import flatten_intermediates

Model = Union[nn.Module, Callable[..., Any]]
Head = Optional[Callable[[Any], jax.Array]]


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------

def as_apply_fn(model: Model) -> Callable[..., Any]:
    """A Linen module's apply, or the given apply-like function."""
    return model.apply if isinstance(model, nn.Module) else model


def _logits(model: Model, variables: Mapping, x: jax.Array, head: Head) -> jax.Array:
    out = as_apply_fn(model)(variables, x, train=False)
    return out if head is None else head(out)


def _resolve_target(logits: jax.Array, target: Optional[jax.Array]) -> jax.Array:
    if target is None:
        return jnp.argmax(logits, axis=-1)
    return jnp.asarray(target, jnp.int32)


def _target_score(logits: jax.Array, target: jax.Array) -> jax.Array:
    # Examples are independent at train=False, so the gradient of the sum is per-example.
    return jnp.sum(jnp.take_along_axis(logits, target[:, None], axis=1))


@flax.struct.dataclass
class FittedLinearReadout:
    """A linear readout fitted outside the network (not a Flax module; no parameters to
    train): logits = features @ w + b (w: [D, K], b: [K], e.g. fit_logistic_regression's);
    ``output_index`` picks the features from a tuple output (method nets return (h, z)).
    A pytree, so jitted map functions take it as an argument: networks whose heads differ
    only in their weights share one compiled program."""
    w: jax.Array
    b: jax.Array
    output_index: Optional[int] = flax.struct.field(pytree_node=False, default=None)

    def __call__(self, out):
        h = out if self.output_index is None else out[self.output_index]
        return h.astype(jnp.float32) @ self.w + self.b


def layer_activation_and_gradient(model: Model, variables: Mapping, x: jax.Array, layer: str,
                                  target: Optional[jax.Array] = None, head: Head = None
                                  ) -> tuple[jax.Array, jax.Array]:
    """(A, dS/dA) at the sown activation ``layer``, both shaped like it (e.g. [N, h, w, K]);
    S = sum over examples of the target logit. Unknown ``layer`` raises ValueError listing the
    differentiable layers."""
    apply = as_apply_fn(model)
    out, state = apply(variables, x, train=False, mutable=["intermediates", PERTURBATIONS])
    zeros = state.get(PERTURBATIONS, {})
    names = flatten_intermediates(zeros)
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; valid layers: {', '.join(names) or 'none'}")
    activation = flatten_intermediates(state["intermediates"])[layer]
    logits = out if head is None else head(out)
    target = _resolve_target(logits, target)
    others = {k: v for k, v in variables.items() if k != PERTURBATIONS}

    def score(perturbations):
        return _target_score(_logits(model, {**others, PERTURBATIONS: perturbations}, x, head),
                             target)

    grads = flatten_intermediates(jax.grad(score)(zeros))
    return activation, grads[layer]


def grad_cam(model: Model, variables: Mapping, x: jax.Array, layer: str,
             target: Optional[jax.Array] = None, head: Head = None,
             upsample: bool = True) -> jax.Array:
    """Grad-CAM at conv ``layer``: [N, H, W] (input size), or [N, h, w] with upsample=False."""
    a, g = layer_activation_and_gradient(model, variables, x, layer, target, head)
    if a.ndim != 4:
        raise ValueError(f"Grad-CAM needs a conv layer [N, h, w, K]; {layer!r} has shape {a.shape}")
    weights = jnp.mean(g, axis=(1, 2), keepdims=True)  # [N, 1, 1, K]
    cam = jax.nn.relu(jnp.sum(weights * a, axis=-1)).astype(jnp.float32)
    if not upsample:
        return cam
    return jax.image.resize(cam, (cam.shape[0],) + tuple(x.shape[1:3]), "bilinear")


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass keeps only positive gradients at positive inputs."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


def with_activation(module: nn.Module, activation: Callable) -> nn.Module:
    """A copy of ``module`` whose ``activation`` field (and that of every nn.Module field,
    recursively, e.g. a method net's ``backbone``) is ``activation``. Raises ValueError when no
    such field exists, since guided backprop would then silently equal the plain gradient."""
    fields = getattr(module, "__dataclass_fields__", {})
    updates: dict[str, Any] = {}
    if "activation" in fields:
        updates["activation"] = activation
    for name in fields:
        value = getattr(module, name, None)
        if isinstance(value, nn.Module) and name != "parent":
            try:
                updates[name] = with_activation(value, activation)
            except ValueError:
                pass
    if not updates:
        raise ValueError(f"{type(module).__name__} has no `activation` field (nor a submodule "
                         "field with one); guided backprop cannot replace its ReLUs")
    return module.clone(**updates)


def input_gradient(model: Model, variables: Mapping, x: jax.Array,
                   target: Optional[jax.Array] = None, head: Head = None) -> jax.Array:
    """d(target logit)/dx, shaped like x ([N, H, W, C])."""
    target = _resolve_target(_logits(model, variables, x, head), target)
    return jax.grad(lambda xi: _target_score(_logits(model, variables, xi, head), target))(x)


def guided_backprop(model: nn.Module, variables: Mapping, x: jax.Array,
                    target: Optional[jax.Array] = None, head: Head = None) -> jax.Array:
    """Guided backpropagation [N, H, W, C]; ``target`` None = the (unguided) predicted class."""
    target = _resolve_target(_logits(model, variables, x, head), target)
    return input_gradient(with_activation(model, guided_relu), variables, x, target, head)


def guided_grad_cam(model: nn.Module, variables: Mapping, x: jax.Array, layer: str,
                    target: Optional[jax.Array] = None, head: Head = None) -> jax.Array:
    """Guided backprop * upsampled Grad-CAM: [N, H, W, C] (000's map, on conv5 for AlexNet)."""
    target = _resolve_target(_logits(model, variables, x, head), target)
    cam = grad_cam(model, variables, x, layer, target, head)
    return guided_backprop(model, variables, x, target, head) * cam[..., None]


def channel_max_abs(g: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, H, W]: max over channels of |g| (how gradient maps become maps)."""
    return jnp.max(jnp.abs(g), axis=-1)


def vanilla_saliency(model: Model, variables: Mapping, x: jax.Array,
                     target: Optional[jax.Array] = None, head: Head = None) -> jax.Array:
    """003's saliency: max_c |d logit_target / d x| through a linear head on frozen features,
    [N, H, W]."""
    return channel_max_abs(input_gradient(model, variables, x, target, head))


# ---------------------------------------------------------------------------------------------
# Occlusion (task-agnostic, 004)
# ---------------------------------------------------------------------------------------------

def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # cover the last rows/columns too
        starts.append(size - patch)
    return starts


def occlusion_masks(height: int, width: int, patch: int, stride: int) -> np.ndarray:
    """[P, H, W] float32 0/1 masks of every patch position (row-major)."""
    if not 0 < patch <= min(height, width) or stride < 1:
        raise ValueError(f"need 0 < patch <= min(H, W) = {min(height, width)} and stride >= 1, "
                         f"got patch={patch}, stride={stride}")
    masks = []
    for top in _starts(height, patch, stride):
        for left in _starts(width, patch, stride):
            m = np.zeros((height, width), np.float32)
            m[top:top + patch, left:left + patch] = 1.0
            masks.append(m)
    return np.stack(masks)


def occlusion_map(features_fn: Callable[[jax.Array], jax.Array], x: jax.Array, patch: int,
                  stride: int, fill: Union[str, float] = "mean", distance: str = "l2",
                  positions_per_step: int = 1) -> jax.Array:
    """Feature-space occlusion sensitivity, [N, H, W].

    features_fn: x [N, H, W, C] -> features [N, D] (any representation; no labels needed).
    fill: "mean" (each image's per-channel mean: occluding removes content without adding a
      colour the image never had, and needs no knowledge of the input normalisation) or a
      constant (e.g. 0.5 for grey on [0, 1] images).
    distance: "l2" (Euclidean) or "cosine" (1 - cosine similarity) between occluded and clean
      features. positions_per_step: patch positions evaluated per vectorised step (memory).
    Every pixel is covered by at least one patch (the last start is clamped to the border).
    """
    if distance not in ("l2", "cosine"):
        raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
    n, h, w, _ = x.shape
    masks = jnp.asarray(occlusion_masks(h, w, patch, stride))
    if fill == "mean":
        value = jnp.mean(x, axis=(1, 2), keepdims=True)
    elif isinstance(fill, (int, float)):
        value = jnp.full((1, 1, 1, x.shape[-1]), float(fill), x.dtype)
    else:
        raise ValueError(f"fill must be 'mean' or a number, got {fill!r}")
    clean = features_fn(x).astype(jnp.float32)

    def dist(mask):
        m = mask[None, :, :, None]
        f = features_fn(x * (1 - m) + value * m).astype(jnp.float32)
        if distance == "l2":
            return jnp.linalg.norm(f - clean, axis=-1)
        cos = jnp.sum(f * clean, -1) / (jnp.linalg.norm(f, axis=-1)
                                        * jnp.linalg.norm(clean, axis=-1) + 1e-12)
        return 1.0 - cos

    d = jax.lax.map(dist, masks, batch_size=positions_per_step)  # [P, N]
    return jnp.einsum("pn,phw->nhw", d, masks) / jnp.sum(masks, axis=0)


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------

def _flat(m: jax.Array) -> jax.Array:
    return jnp.reshape(m, (m.shape[0], -1)).astype(jnp.float32)


def binarise(m: jax.Array, fraction: float = 0.5) -> jax.Array:
    """[N, ...] maps -> bool, True where the value is > fraction * that map's max (000). A map
    whose max is <= 0 (e.g. an all-zero Grad-CAM) binarises to all False."""
    peak = jnp.max(_flat(m), axis=1).reshape((-1,) + (1,) * (m.ndim - 1))
    return (m > fraction * peak) & (peak > 0)


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of boolean masks [N, ...] -> [N]; two empty masks agree perfectly (1)."""
    a, b = _flat(a) > 0, _flat(b) > 0
    inter = jnp.sum(a & b, axis=1)
    union = jnp.sum(a | b, axis=1)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def map_iou(a: jax.Array, b: jax.Array, fraction: float = 0.5) -> jax.Array:
    """IoU of two maps [N, H, W] each binarised at > fraction of its own max -> [N]."""
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    return iou(binarise(a, fraction), binarise(b, fraction))


def average_ranks(v: jax.Array) -> jax.Array:
    """[N, M] -> 1-based ranks along axis 1, ties given their average rank (scipy's default)."""
    def one(row):
        s = jnp.sort(row)
        lo = jnp.searchsorted(s, row, side="left")
        hi = jnp.searchsorted(s, row, side="right")
        return (lo + 1 + hi).astype(jnp.float32) / 2.0  # mean of ranks lo+1 .. hi
    return jax.vmap(one)(v)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of two maps per example, [N, ...] -> [N] (NaN if constant)."""
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    ra, rb = average_ranks(_flat(a)), average_ranks(_flat(b))
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    return jnp.sum(ra * rb, 1) / jnp.sqrt(jnp.sum(ra ** 2, 1) * jnp.sum(rb ** 2, 1))


def sharpness(m: jax.Array, fraction: float = 0.5) -> jax.Array:
    """000's sharpness: fraction of pixels whose relative attention m / max(m) is < 0.5, [N];
    higher = more concentrated. NaN for a map with max <= 0 (relative attention undefined)."""
    f = _flat(m)
    peak = jnp.max(f, axis=1, keepdims=True)
    frac = jnp.mean(f < fraction * peak, axis=1)
    return jnp.where(peak[:, 0] > 0, frac, jnp.nan)


def localisation_iou(m: jax.Array, mask: jax.Array, fraction: float = 0.5) -> jax.Array:
    """IoU of a map [N, H, W] binarised at > fraction of its max with a ground-truth foreground
    mask [N, H, W] or [N, H, W, 1] (nonzero = object, e.g. shapes_textures' `mask`) -> [N]."""
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != m.shape:
        raise ValueError(f"mask shape {mask.shape} does not match map shape {m.shape}")
    return iou(binarise(m, fraction), mask > 0)
