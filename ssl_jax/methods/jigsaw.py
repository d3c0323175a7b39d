"""Jigsaw puzzles (Noroozi & Favaro 2016): classify which of a fixed set of permutations
shuffled the 3 x 3 tiles of an image.

Per image (inside the jitted loss): split into grid x grid cells; cut a smaller tile at a
random position in each cell (random gaps, so tiles cannot be matched by continuous edges),
with each colour channel shifted by up to `channel_jitter` px on its own and the image turned
to grayscale with probability `grayscale_prob` (both against chromatic-aberration shortcuts);
normalise each tile to zero mean / unit std; resize tiles to `tile_size` (the backbone's input,
e.g. 64 px for AlexNet); reorder them by a permutation drawn from the set. One shared (siamese)
backbone embeds every tile; the concatenated embeddings go through `fc7` (ReLU) and `fc8`, a
`num_permutations`-way classifier. The permutation set is greedy max-min Hamming
(`pretext_ops.max_hamming_permutations`), fixed by `permutation_seed`.

`features` and the full-image forward pass (per-layer probes) standardise each image the way
tiles are standardised in training, so probes see the input statistics the backbone learned on.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.data import augment
from ssl_jax.methods import pretext_ops
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, split_variables


class JigsawNet(nn.Module):
    backbone: nn.Module
    num_permutations: int
    hidden_dim: int

    @nn.compact
    def __call__(self, x, train: bool, tiles: bool = False):
        """x: images [N, H, W, 3] -> (backbone features, None); with `tiles=True`, x is
        permuted tiles [N, T, t, t, 3] -> (fc7 [N, hidden_dim], permutation logits)."""
        if not tiles:
            return self.backbone(pretext_ops.standardize(x), train=train), None
        n, t = x.shape[:2]
        h = self.backbone(pretext_ops.standardize(x.reshape(n * t, *x.shape[2:])), train=train)
        h = h.reshape(n, t * h.shape[-1])
        h = nn.relu(nn.Dense(self.hidden_dim, name="fc7")(h))
        return h, nn.Dense(self.num_permutations, name="fc8", dtype=jnp.float32)(h)


class Method(base.Method):
    num_views = 1

    def __init__(self, config):
        cfg = config.jigsaw
        self.grid = int(cfg.grid)
        self.cell, self.tile = pretext_ops.tile_geometry(config.dataset.image_size, self.grid,
                                                         cfg.tile_fraction)
        self.tile_size = int(cfg.tile_size) or self.tile
        self.channel_jitter = int(cfg.channel_jitter)
        self.grayscale_prob = float(cfg.grayscale_prob)
        self.permutations = jnp.asarray(pretext_ops.max_hamming_permutations(
            int(cfg.num_permutations), self.grid ** 2, int(cfg.permutation_seed)))
        self.net = JigsawNet(build_backbone(config), int(cfg.num_permutations),
                             int(cfg.hidden_dim))

    def puzzles(self, rng, images):
        """images [B, S, S, 3] -> (permuted tiles [B, T, t, t, 3], permutation labels [B])."""
        b, n = images.shape[0], self.grid ** 2
        k_perm, k_off, k_gray = jax.random.split(rng, 3)
        gray = jax.random.bernoulli(k_gray, self.grayscale_prob, (b, 1, 1, 1))
        images = jnp.where(gray, augment.to_grayscale(images), images)
        offsets = jax.vmap(lambda k: pretext_ops.sample_tile_offsets(
            k, n, images.shape[-1], self.cell, self.tile, self.channel_jitter))(
                jax.random.split(k_off, b))
        tiles = jax.vmap(lambda im, off: pretext_ops.extract_tiles(
            im, off, self.grid, self.cell, self.tile))(images, offsets)
        labels = jax.random.randint(k_perm, (b,), 0, self.permutations.shape[0])
        # Position k of the puzzle shows tile perm[k].
        tiles = jax.vmap(lambda t, perm: t[perm])(tiles, self.permutations[labels])
        return pretext_ops.resize(tiles, self.tile_size), labels

    def init(self, rng, images):
        tiles, _ = self.puzzles(jax.random.key(0), jnp.zeros_like(images))
        return split_variables(self.net.init(rng, tiles, train=False, tiles=True))

    def loss(self, params, model_state, views, labels, rng):
        del labels
        tiles, y = self.puzzles(rng, views[:, 0])
        (_, logits), new_state = self.net.apply(
            {"params": params, **model_state}, tiles, train=True, tiles=True,
            mutable=["batch_stats"])
        loss = losses.cross_entropy(logits, y)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (new_state, {"loss": loss, "pretext_accuracy": acc,
                                  "pretext_chance": jnp.float32(1 / self.permutations.shape[0])})
