"""Colorization (Zhang et al. 2016): predict the ab colour channels from L alone, as
classification over quantised in-gamut ab bins with class rebalancing.

The network takes RGB in [0, 1] like every ssl_jax network and converts to Lab inside, so the
backbone only ever sees L (replicated to 3 channels), in training, in `features` and in
per-layer probes alike. Head: the backbone's last spatial map (`feature_layer`, AlexNet conv5
or ResNet layer4, read from the sown activations) -> 3x3 conv (ReLU) -> bilinear upsampling to
`out_size` -> 1x1 conv to one logit per bin (Zhang's network is fully convolutional too; its
fc layers are not used here, and AlexNet's fc6/fc7 receive no gradient).

Targets: ab of the image resized to out_size x out_size, soft-encoded on the 5 nearest bins
(Gaussian, sigma 5). Rebalancing: each pixel's loss is weighted by w(nearest bin), w from
`pretext_ops.rebalancing_weights` (lambda 0.5, sigma 5) of the empirical bin distribution.
Zhang precomputed that distribution on ImageNet; here it is the running count of every training
pixel's bin, kept in the model state (`colour_prior/counts`, started at 1 per bin), so it needs
no extra pass over the data and is summed over the global batch like BatchNorm statistics.
Logged: `pretext_accuracy` (argmax bin == nearest bin, per pixel) and `pretext_chance` (the
share of the most frequent bin so far: always predicting it).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.methods import pretext_ops
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables
from ssl_jax.models.conv import Conv

PRIOR = "colour_prior"


def luminance_input(images):
    """RGB [N, H, W, 3] in [0, 1] -> L / 100 replicated to 3 channels (what the backbone sees)."""
    lum = pretext_ops.rgb_to_lab(images)[..., :1] / 100.0
    return jnp.repeat(lum, 3, axis=-1)


class ColorizationNet(nn.Module):
    backbone: nn.Module
    num_bins: int
    feature_layer: str
    out_size: int
    hidden_dim: int = 128

    @nn.compact
    def __call__(self, x, train: bool, decode: bool = False):
        """x: RGB [N, H, W, 3] -> (backbone features, None), or with `decode=True` (needs
        mutable "intermediates") (features, ab-bin logits [N, out_size, out_size, Q])."""
        h = self.backbone(normalize(luminance_input(x)), train=train)
        if not decode:
            return h, None
        sown = self.backbone.variables.get("intermediates", {})
        if self.feature_layer not in sown:
            raise ValueError(f"colorization.feature_layer={self.feature_layer!r} not among the "
                             f"backbone's sown layers {sorted(sown)} (decode=True needs "
                             "mutable=['intermediates'])")
        fmap = sown[self.feature_layer][0].astype(jnp.float32)
        y = nn.relu(Conv(self.hidden_dim, (3, 3), padding=1, name="head_conv")(fmap))
        y = jax.image.resize(y, (y.shape[0], self.out_size, self.out_size, y.shape[-1]),
                             method="linear")
        return h, Conv(self.num_bins, (1, 1), name="head_bins", dtype=jnp.float32)(y)


class Method(base.Method):
    num_views = 1

    def __init__(self, config):
        cfg = config.colorization
        self.bins = jnp.asarray(pretext_ops.in_gamut_bins(float(cfg.grid)))
        self.out_size = int(cfg.out_size) or config.dataset.image_size // 4
        layer = cfg.feature_layer or ("conv5" if config.model.name.startswith("alexnet")
                                      else "layer4")
        self.rebalance_lambda = float(cfg.rebalance_lambda)
        self.temperature = float(cfg.temperature)
        self.net = ColorizationNet(build_backbone(config), int(self.bins.shape[0]), layer,
                                   self.out_size, int(cfg.hidden_dim))

    def _logits(self, variables, images, train: bool):
        mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
        (_, logits), state = self.net.apply(variables, images, train=train, decode=True,
                                            mutable=mutable)
        return logits, {k: v for k, v in state.items() if k != "intermediates"}

    def init(self, rng, images):
        variables = self.net.init(rng, images, train=False, decode=True,
                                  mutable=["params", "batch_stats", "intermediates"])
        params, state = split_variables(variables)
        state.pop("intermediates")
        state[PRIOR] = {"counts": jnp.ones((self.bins.shape[0],), jnp.float32)}
        return params, state

    def targets(self, images):
        """(soft targets [B, s, s, Q], nearest bins [B, s, s]) of images [B, S, S, 3]."""
        ab = pretext_ops.resize(pretext_ops.rgb_to_lab(images)[..., 1:], self.out_size)
        return pretext_ops.soft_encode(ab, self.bins), pretext_ops.quantize_ab(ab, self.bins)

    def loss(self, params, model_state, views, labels, rng):
        del labels, rng
        images = views[:, 0]
        soft, hard = self.targets(images)
        counts = model_state[PRIOR]["counts"] + jnp.sum(
            jax.nn.one_hot(hard, self.bins.shape[0]), axis=(0, 1, 2))
        weights = jax.lax.stop_gradient(pretext_ops.rebalancing_weights(
            counts, self.bins, self.rebalance_lambda))
        net_state = {k: v for k, v in model_state.items() if k != PRIOR}
        logits, new_state = self._logits({"params": params, **net_state}, images, train=True)
        ce = -jnp.sum(soft * jax.nn.log_softmax(logits, axis=-1), axis=-1)
        loss = jnp.mean(weights[hard] * ce)
        acc = jnp.mean(jnp.argmax(logits, -1) == hard)
        new_state[PRIOR] = {"counts": counts}
        return loss, (new_state, {"loss": loss, "pretext_accuracy": acc,
                                  "pretext_chance": jnp.max(counts) / jnp.sum(counts),
                                  "unweighted_loss": jnp.mean(ce)})

    def colorize(self, params, model_state, images):
        """RGB [B, S, S, 3] -> the model's colourisation [B, S, S, 3]: the input's L with the
        annealed-mean ab of the predicted bins (upsampled from out_size)."""
        net_state = {k: v for k, v in model_state.items() if k != PRIOR}
        logits, _ = self._logits({"params": params, **net_state}, images, train=False)
        ab = pretext_ops.annealed_mean(jax.nn.softmax(logits, -1), self.bins, self.temperature)
        ab = jax.image.resize(ab, images.shape[:3] + (2,), method="linear")
        lum = pretext_ops.rgb_to_lab(images)[..., :1]
        return pretext_ops.lab_to_rgb(jnp.concatenate([lum, ab], axis=-1))
