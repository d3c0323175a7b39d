"""One network of a Taskonomy-style task bank: a ResNet encoder and a shallow decoder trained
for one visual task on the built-in dataset's dense configs (`shapes_textures/dense32`).

Epstein et al. (000) ask what self-supervised networks miss by comparing them, layer by layer,
with encoders trained on other tasks (Taskonomy). Every task here uses the same encoder (the
run's `model`, e.g. ResNet-18 with its four blocks) and the same kind of decoder, so the
encoders differ only by what their task asked of them:
- pixel tasks: the encoder's last spatial map (`layer4`, read from the sown activations),
  flattened -> Dense to a 4 x 4 x `decoder_width` map -> (2x nearest upsampling, 3 x 3
  convolution, BatchNorm, ReLU) up to half the image size -> a 3 x 3 sub-pixel convolution
  to the task's channels at the image size;
- vector tasks (`class`, `keypoints`): one Dense layer on the pooled features.
The reconstruction tasks see a corrupted input (noise, a hole, grey levels) and predict the
clean image; every other task sees the image itself. `features` always runs the encoder on the
clean image, which is what similarity analyses compare.

The targets come from the dataset (TASKS[..].targets: the features the input pipeline adds to
each batch) or from the image itself. Views must be the whole image, unflipped (the `dense`
augmentation preset): the targets are not cropped with them.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax import losses
from ssl_jax.data.builtin_textures import BACKGROUND_NAMES
from ssl_jax.methods import base
from ssl_jax.methods.common import build_backbone, normalize, split_variables
from ssl_jax.models.batch_norm import BatchNorm
from ssl_jax.models.conv import Conv


@dataclasses.dataclass(frozen=True)
class Task:
    group: str            # semantic | 2D | 3D | reconstruction (000's grouping of Taskonomy)
    targets: tuple        # dataset features the pipeline must add to each batch
    channels: int         # the decoder's output channels
    pooled: bool = False  # predicted from the pooled features, not decoded to a map
    corruption: str = ""  # what the encoder sees instead of the image: noise, hole, grey
    # The decoder predicts a correction added to the encoder's input, not the whole image.
    residual: bool = False


TASKS = {
    "class": Task("semantic", (), 0, pooled=True),  # channels: the dataset's classes
    # Taskonomy's scene classification: the kind of background (flat, gradient, noise, photo).
    "scene": Task("semantic", ("background",), len(BACKGROUND_NAMES), pooled=True),
    "segment_fg": Task("semantic", ("segmentation",), 1),
    "segment_class": Task("semantic", ("segmentation",), 0),  # classes + background
    "occlusion_edges": Task("2D", ("occlusion_edges",), 1),
    "texture_edges": Task("2D", ("texture_edges",), 1),
    "keypoints": Task("2D", ("keypoints", "keypoint_visible"), 1),
    "distance": Task("3D", ("depth",), 1),
    "z_depth": Task("3D", ("height",), 1),
    "normals": Task("3D", ("normals",), 3),
    "curvature": Task("3D", ("curvature",), 1),
    "reshading": Task("3D", ("reshading",), 1),
    "autoencoding": Task("reconstruction", (), 3),
    "denoising": Task("reconstruction", (), 3, corruption="noise"),
    "inpainting": Task("reconstruction", (), 3, corruption="hole"),
    # Colour added to the grey input (Zhang et al. predict ab and keep the input's L): the
    # 1 x 1 code carries the colours, the input the detail. Predicting the whole image lost to
    # the grey input itself (13.6 vs 14.5 dB at 600 steps).
    "colorization": Task("reconstruction", (), 3, corruption="grey", residual=True),
}
GROUPS = ("semantic", "2D", "3D", "reconstruction")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task_bank.task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def output_channels(task: str, num_classes: int) -> int:
    t = get_task(task)
    if task == "class":
        return num_classes
    if task == "segment_class":
        return num_classes + 1
    return t.channels


def hole_mask(size: int, hole: int) -> jax.Array:
    """[size, size] float32, 1 inside the centred `hole` x `hole` square the inpainting
    network must fill (Pathak et al.'s context encoder hides the centre too)."""
    lo = (size - hole) // 2
    idx = jnp.arange(size)
    inside = (idx >= lo) & (idx < lo + hole)
    return (inside[:, None] & inside[None, :]).astype(jnp.float32)


def corrupt(images: jax.Array, corruption: str, rng: jax.Array, noise_std: float,
            hole: int) -> jax.Array:
    """What a reconstruction network's encoder sees: images [B, S, S, 3] in [0, 1] with
    Gaussian noise (clipped to [0, 1]), the centre hole filled with mid grey, or the luma
    (Rec. 601) in all three channels; the images themselves without a corruption."""
    if corruption == "noise":
        return jnp.clip(images + noise_std * jax.random.normal(rng, images.shape), 0.0, 1.0)
    if corruption == "hole":
        m = hole_mask(images.shape[1], hole)[None, :, :, None]
        return images * (1 - m) + 0.5 * m
    if corruption == "grey":
        luma = images @ jnp.asarray([0.299, 0.587, 0.114], images.dtype)
        return jnp.repeat(luma[..., None], 3, axis=-1)
    return images


KEYPOINT_SIGMA = 1.0  # pixels


def keypoint_heatmap(points: jax.Array, visible: jax.Array, size: int) -> jax.Array:
    """[B, K, 2] keypoints (x, y in image sides) -> [B, size, size, 1] heatmap: the max over
    the visible keypoints of a Gaussian of KEYPOINT_SIGMA pixels around each (1 at the
    point). Unordered, as Taskonomy's 2D keypoints: which keypoint is which is ambiguous for
    symmetric shapes (a square turned by 90 degrees looks the same), a location is not."""
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size  # pixel centres
    p = points.astype(jnp.float32)
    dx = centres[None, None, None, :] - p[:, :, 0, None, None]   # [B, K, 1, S]
    dy = centres[None, None, :, None] - p[:, :, 1, None, None]   # [B, K, S, 1]
    g = jnp.exp(-(dx ** 2 + dy ** 2) * size ** 2 / (2 * KEYPOINT_SIGMA ** 2))
    g = g * visible.astype(jnp.float32)[:, :, None, None]
    return jnp.max(g, axis=1)[..., None]


def task_targets(task: str, images: jax.Array, labels: jax.Array, targets: dict) -> jax.Array:
    """The training/evaluation target of `task`: float32 maps, or int32 classes."""
    if task == "class":
        return labels
    if task == "scene":
        return targets["background"].astype(jnp.int32)
    if task in ("segment_fg", "segment_class"):
        seg = targets["segmentation"][..., 0].astype(jnp.int32)
        return (seg > 0).astype(jnp.float32)[..., None] if task == "segment_fg" else seg
    if task in ("occlusion_edges", "texture_edges"):
        return (targets[task] > 0).astype(jnp.float32)
    if task == "keypoints":
        return keypoint_heatmap(targets["keypoints"], targets["keypoint_visible"],
                                images.shape[1])
    if task == "distance":
        return targets["depth"].astype(jnp.float32)
    if task == "z_depth":
        return targets["height"].astype(jnp.float32)
    if task in ("normals", "curvature"):
        return targets[task].astype(jnp.float32)
    if task == "reshading":
        return targets["reshading"].astype(jnp.float32) / 255.0
    return images  # the reconstruction tasks: the clean image


def task_loss(task: str, pred: jax.Array, y: jax.Array, hole: int) -> jax.Array:
    """Each task's loss is the one its held-out metric (evaluation/task_quality.py) rewards:
    cross-entropy for classes, binary cross-entropy for masks, edges and the keypoint heatmap;
    L1 for the maps scored by mean absolute error; squared error for curvature (RMS) and the
    reconstructions (PSNR); 1 - cosine for normals (angular error).

    Normals with L1 on the three components stayed "flat everywhere" (8.56 degrees at 1200
    steps, where the flat answer itself scores 8.42): L1's per-pixel optimum is the median of
    each component, 0 wherever the tilt's direction is uncertain. The cosine loss learns the
    bevel (6.6 degrees at 1500 steps)."""
    if task in ("class", "scene", "segment_class"):
        return losses.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1), 0.0)
    if task in ("segment_fg", "occlusion_edges", "texture_edges", "keypoints"):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(pred, y))
    if task == "normals":
        unit = pred * jax.lax.rsqrt(jnp.sum(pred ** 2, -1, keepdims=True) + 1e-6)
        return jnp.mean(1.0 - jnp.sum(unit * y, -1))
    if task == "inpainting":
        m = hole_mask(pred.shape[1], hole)[None, :, :, None]
        return jnp.sum(m * (pred - y) ** 2) / (jnp.sum(m) * pred.shape[0] * pred.shape[-1])
    if task == "curvature" or get_task(task).group == "reconstruction":
        return jnp.mean((pred - y) ** 2)
    return jnp.mean(jnp.abs(pred - y))


class TaskNet(nn.Module):
    """Encoder + the task's decoder. `__call__(x, train)` -> (pooled features, None); with
    `decode=True` (needs mutable "intermediates") -> (features, prediction)."""
    backbone: nn.Module
    task: str
    out_channels: int
    image_size: int
    feature_layer: str = "layer4"
    decoder_width: int = 64
    noise_std: float = 0.5
    hole: int = 12

    @nn.compact
    def __call__(self, x, train: bool, decode: bool = False):
        h = self.backbone(normalize(x), train=train)
        if not decode:
            return h, None
        if get_task(self.task).pooled:
            return h, nn.Dense(self.out_channels, name="head", dtype=jnp.float32)(h)
        sown = self.backbone.variables.get("intermediates", {})
        if self.feature_layer not in sown:
            raise ValueError(f"task_bank.feature_layer={self.feature_layer!r} not among the "
                             f"backbone's sown layers {sorted(sown)}")
        fmap = sown[self.feature_layer][0].astype(jnp.float32)
        w = self.decoder_width
        y = nn.Dense(4 * 4 * w, name="decoder_in")(fmap.reshape(fmap.shape[0], -1))
        y = nn.relu(y.reshape(-1, 4, 4, w))
        for i in range(int(math.log2(self.image_size // 4)) - 1):
            # Nearest 2x upsampling then a 3 x 3 convolution: a transposed convolution's
            # input-dilated form ran ~8x slower than the whole encoder on XLA:CPU.
            y = jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)
            y = Conv(max(w // 2 ** (i + 1), 16), (3, 3), padding=1, name=f"decoder_up{i}")(y)
            y = BatchNorm(use_running_average=not train, momentum=0.9,
                          name=f"decoder_bn{i}")(y)
            y = nn.relu(y)
        # The last doubling as a sub-pixel convolution (each position predicts its 2 x 2
        # output pixels): no convolution at full resolution, a third of the decoder's cost.
        y = Conv(4 * self.out_channels, (3, 3), padding=1, name="decoder_out",
                 dtype=jnp.float32)(y)
        y = depth_to_space(y, 2)
        return h, (x + y if get_task(self.task).residual else y)


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
    """[B, h, w, block * block * C] -> [B, block h, block w, C]: channel (i * block + j) * C + c
    of position (y, x) becomes channel c of pixel (block y + i, block x + j)."""
    b, h, w, c = x.shape
    c //= block * block
    x = x.reshape(b, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * block, w * block, c)


def predict(net: TaskNet, variables: dict, images: jax.Array, rng: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """(eval-mode prediction, the encoder's input) of `net` on clean images [B, S, S, 3]."""
    seen = corrupt(images, get_task(net.task).corruption, rng, net.noise_std, net.hole)
    (_, pred), _ = net.apply(variables, seen, train=False, decode=True,
                             mutable=["intermediates"])
    return pred, seen


class Method(base.Method):
    num_views = 1

    def __init__(self, config):
        cfg = config.task_bank
        task = get_task(cfg.task)
        size = config.dataset.image_size
        if size < 8 or size & (size - 1):
            raise ValueError(f"task_bank needs a power-of-two image size >= 8 (the decoder "
                             f"doubles a 4 x 4 map), got dataset.image_size={size}")
        self.task = cfg.task
        self.target_keys = task.targets
        self.net = TaskNet(build_backbone(config), cfg.task,
                           output_channels(cfg.task, config.dataset.num_classes), size,
                           cfg.feature_layer, int(cfg.decoder_width), float(cfg.noise_std),
                           int(cfg.hole))

    def init(self, rng, images):
        variables = self.net.init(rng, images, train=False, decode=True,
                                  mutable=["params", "batch_stats", "intermediates"])
        params, state = split_variables(variables)
        state.pop("intermediates")
        return params, state

    def loss(self, params, model_state, views, labels, rng, targets=None):
        images = views[:, 0]
        seen = corrupt(images, get_task(self.task).corruption, rng, self.net.noise_std,
                       self.net.hole)
        (_, pred), new_state = self.net.apply(
            {"params": params, **model_state}, seen, train=True, decode=True,
            mutable=["intermediates", "batch_stats"])
        new_state = {k: v for k, v in new_state.items() if k != "intermediates"}
        loss = task_loss(self.task, pred, task_targets(self.task, images, labels, targets or {}),
                         self.net.hole)
        return loss, (new_state, {"loss": loss})
