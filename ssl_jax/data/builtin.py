"""The built-in dataset `shapes_textures`: procedural shapes, generated locally.

Each image is one foreground shape (its class `label`) filled with a texture (its
`texture_label`, a family such as stripes or a crop of skimage's brick photo) on a
background (flat / gradient / noise / natural photo crop), at a random position, scale,
rotation and colour. Importing this module registers the TFDS builder `shapes_textures`:

    import ssl_jax.data.builtin, tensorflow_datasets as tfds
    builder = tfds.builder("shapes_textures/tiny", data_dir=...)
    builder.download_and_prepare()          # generates; never touches the network
    ds = builder.as_dataset(split="train")

Splits: `train` (texture / background correlated with the class as configured),
`test` (both independent of the class) and `cue_conflict` (class i filled with the
texture CLASS_TEXTURE[j] of another class j != i; j is stored as `texture_class`).
Everything is a pure function of the config's seed; see docs/BUILTIN_DATASET.md.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import types
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ssl_jax.data import builtin_dense as _dense
from ssl_jax.data import builtin_textures as _render
# Re-exported: the names and mappings users score against, and the numpy generator.
from ssl_jax.data.builtin_textures import (  # noqa: F401
    BACKGROUND_NAMES, CLASS_BACKGROUND, CLASS_TEXTURE, SHAPE_NAMES, SPLITS,
    TEXTURE_NAMES, encode_png, generate_chunk, mask_to_bbox)

__all__ = [
    "ShapesTextures", "ShapesTexturesConfig", "SHAPE_NAMES", "TEXTURE_NAMES",
    "BACKGROUND_NAMES", "CLASS_TEXTURE", "CLASS_BACKGROUND", "SPLITS", "generate_chunk",
    "encode_png", "mask_to_bbox",
]

# Below this many 512-example chunks a split is generated in-process: starting spawned
# workers (~2 s of imports each) would cost more than it saves.
_MIN_CHUNKS_FOR_POOL = 8


@dataclasses.dataclass(eq=False, kw_only=True)
class ShapesTexturesConfig(tfds.core.BuilderConfig):
    """How to generate one variant of the dataset.

    resolution: image side R in pixels (images are R x R x 3 uint8).
    num_train / num_test / num_cue_conflict: examples per split.
    texture_correlation: probability that a `train` example's texture is its class's
      CLASS_TEXTURE; otherwise the family is uniform over all 10 (so the observed match
      rate is p + (1 - p) / 10). `test` always uses p = 0.
    background_correlation: same for the class's CLASS_BACKGROUND style in `train`;
      otherwise the kind is drawn from `background_weights` with free colours/photo.
    foreground_colour_correlation: probability that a `train` example's foreground colours
      come from its class's hue family (both; brightness tells them apart); `test` and
      `cue_conflict` always draw them freely. Colours then follow content, as in photos,
      which the colorization pretext task needs.
    background_weights: probabilities of flat, gradient, noise, natural (uncorrelated).
    scale_range: (min, max) shape diameter as a fraction of the image side.
    texture_contrast: in (0, 1]; scales the distance between a texture's two colours (1: every
      channel 88..168 apart; 0.25: 22..42 apart, a faint texture), in every split.
    grey: store every image as its luminance (ITU-R 601) in all three channels: no colour
      cue at all; every factor is drawn as in colour.
    seed: everything is a deterministic function of it.
    rotate: random orientation of shapes, textures and photo crops (False: all upright, so
      an image's orientation is learnable, e.g. by the rotation pretext task; every other
      factor is drawn exactly as with True).
    num_workers: processes used to generate (0 = min(4, cpu count)); does not change
      the data.
    dense: also store the dense targets of ssl_jax.data.builtin_dense (segmentation,
      edges, keypoints, a relief's height / depth / normals / curvature / shading), and
      shade the image by the relief; every factor is drawn as without it.
    """

    resolution: int = 32
    num_train: int = 1024
    num_test: int = 512
    num_cue_conflict: int = 512
    texture_correlation: float = 0.0
    background_correlation: float = 0.0
    foreground_colour_correlation: float = 0.0
    texture_contrast: float = 1.0
    grey: bool = False
    background_weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    scale_range: tuple[float, float] = (0.4, 0.8)
    seed: int = 0
    rotate: bool = True
    num_workers: int = 0
    dense: bool = False

    def __post_init__(self):
        if self.resolution < 16:
            raise ValueError(f"resolution={self.resolution} too small; need >= 16")
        for field in ("texture_correlation", "background_correlation",
                      "foreground_colour_correlation"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field}={value} must be in [0, 1]")
        if not 0.0 < self.texture_contrast <= 1.0:
            raise ValueError(f"texture_contrast={self.texture_contrast} must be in (0, 1]")
        w = np.asarray(self.background_weights, np.float64)
        if w.shape != (4,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"background_weights={self.background_weights} must be 4 "
                             f"non-negative weights for {BACKGROUND_NAMES}")
        lo, hi = self.scale_range
        if not 0.1 <= lo <= hi <= 1.0:
            raise ValueError(f"scale_range={self.scale_range} must satisfy "
                             "0.1 <= min <= max <= 1")
        for field in ("num_train", "num_test", "num_cue_conflict", "num_workers"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field}={getattr(self, field)} must be >= 0")

    def split_size(self, split: str) -> int:
        """Number of examples of `split` ('train', 'test' or 'cue_conflict')."""
        return _render.split_size(self, split)


def _split_chunks(config: ShapesTexturesConfig, split: str,
                  num_workers: int) -> Iterator[dict]:
    """Yields the PNG-encoded chunks of a split in order, made by `num_workers` processes."""
    n_chunks = -(-config.split_size(split) // _render.CHUNK)
    if num_workers <= 1 or n_chunks < _MIN_CHUNKS_FOR_POOL:
        for c in range(n_chunks):
            yield _render.encoded_chunk(config, split, c)
        return
    # 'spawn', not 'fork': forking a process that runs JAX/TF threads can deadlock. The
    # workers get a plain namespace so they never import TensorFlow to unpickle it.
    recipe = types.SimpleNamespace(**{
        f.name: getattr(config, f.name) for f in dataclasses.fields(config)
        if f.name not in ("version", "release_notes", "supported_versions", "tags")})
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
        yield from pool.map(_render.encoded_chunk, [recipe] * n_chunks,
                            [split] * n_chunks, range(n_chunks))


@contextlib.contextmanager
def _sorted_example_maps() -> Iterator[None]:
    """While building, TFDS serialises tf.train.Examples with sorted feature maps.

    Protobuf's map order is randomised per process, so without this two builds in two
    processes write the same examples as different bytes; sorted keys make the record
    files byte-identical across processes and machines. Scoped to our build; a TFDS
    without `get_tf_example` is left alone (data still identical, bytes may not be).
    """
    cls = tfds.core.example_serializer.ExampleSerializer
    if not hasattr(cls, "get_tf_example"):
        yield
        return
    original = cls.serialize_example

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)

    cls.serialize_example = serialize_example
    try:
        yield
    finally:
        cls.serialize_example = original


# small32's recipe, shared by its variants: 10k/2k/2k, large shapes on flat/gradient backgrounds.
_CLEAN = dict(num_train=10_000, num_test=2000, num_cue_conflict=2000,
              background_weights=(0.5, 0.5, 0.0, 0.0), scale_range=(0.55, 0.9))

# The dense configs' recipe: large shapes, some textured backgrounds so that background
# texture edges exist, and the dense targets.
_DENSE = dict(num_train=10_000, num_test=2000, num_cue_conflict=2000,
              background_weights=(0.35, 0.35, 0.1, 0.2), scale_range=(0.55, 0.9), dense=True)


def _dense_features(r: int) -> dict:
    """The TFDS features of builtin_dense.dense_targets at resolution r."""
    def floats(channels):
        return tfds.features.Tensor(shape=(r, r, channels), dtype=np.float16,
                                    encoding=tfds.features.Encoding.ZLIB)

    k = _dense.NUM_KEYPOINTS
    return {
        "segmentation": tfds.features.Image(shape=(r, r, 1)),
        "occlusion_edges": tfds.features.Image(shape=(r, r, 1)),
        "texture_edges": tfds.features.Image(shape=(r, r, 1)),
        "reshading": tfds.features.Image(shape=(r, r, 1)),
        "keypoints": tfds.features.Tensor(shape=(k, 2), dtype=np.float32),
        "keypoint_visible": tfds.features.Tensor(shape=(k,), dtype=np.bool_),
        "height": floats(1),
        "depth": floats(1),
        "normals": floats(3),
        "curvature": floats(1),
    }


# -------------------------------------------------------------------------- builder
class ShapesTextures(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes x textures x backgrounds; no download. See module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ShapesTexturesConfig(
            name="tiny", description="32 px, 1024/512/512; for tests (builds in seconds).",
            resolution=32, num_train=1024, num_test=512, num_cue_conflict=512,
            texture_correlation=0.5, background_correlation=0.5, seed=0),
        ShapesTexturesConfig(
            name="small32",
            description="32 px, 10k/2k/2k, clean: large shapes on flat/gradient "
                        "backgrounds, no shortcuts. CPU quickstart.",
            resolution=32, **_CLEAN, seed=1),
        ShapesTexturesConfig(
            name="base64",
            description="64 px, 50k/10k/5k, all backgrounds, texture tied to class "
                        "in 50% of train.",
            resolution=64, num_train=50_000, num_test=10_000, num_cue_conflict=5000,
            texture_correlation=0.5, seed=2),
        ShapesTexturesConfig(
            name="biased32",
            description="32 px, 10k/2k/2k, texture and background style tied to class "
                        "in 90% of train: shape-bias and copy-paste experiments.",
            resolution=32, num_train=10_000, num_test=2000, num_cue_conflict=2000,
            texture_correlation=0.9, background_correlation=0.9, seed=3),
        ShapesTexturesConfig(
            name="upright64",
            description="64 px, 10k/2k/2k, clean like small32 but nothing rotated: "
                        "orientation is learnable (rotation pretext task).",
            resolution=64, **_CLEAN, seed=5, rotate=False),
        ShapesTexturesConfig(
            name="upright32",
            description="32 px, 10k/2k/2k, small32's recipe with nothing rotated: upright "
                        "shapes are told apart at the strided stem's 8x8 maps (quickstart).",
            resolution=32, **_CLEAN, seed=9, rotate=False),
        ShapesTexturesConfig(
            name="faint32",
            description="upright32 with faint textures (texture_contrast 0.25).",
            resolution=32, **_CLEAN, seed=10, rotate=False, texture_contrast=0.25),
        ShapesTexturesConfig(
            name="faintgrey32",
            description="faint32 in grey levels: shape is the main cue left to tell two "
                        "images apart.",
            resolution=32, **_CLEAN, seed=11, rotate=False, texture_contrast=0.25, grey=True),
        ShapesTexturesConfig(
            name="texture32",
            description="32 px, 10k/2k/2k, small32's recipe with texture tied to class in "
                        "50% of train: shape bias at the quickstart budget.",
            resolution=32, **_CLEAN, texture_correlation=0.5, seed=6),
        ShapesTexturesConfig(
            name="uprightbg64",
            description="upright64 with the background style (kind and hue family) tied to "
                        "class in 90% of train: colours follow content (colorization).",
            resolution=64, **_CLEAN, seed=7, rotate=False, background_correlation=0.9),
        ShapesTexturesConfig(
            name="uprightfg64",
            description="upright64 with the foreground colours' hue family tied to class "
                        "in 90% of train: colour follows shape (colorization).",
            resolution=64, **_CLEAN, seed=8, rotate=False,
            foreground_colour_correlation=0.9),
        ShapesTexturesConfig(
            name="biased64",
            description="64 px version of biased32, 50k/10k/5k.",
            resolution=64, num_train=50_000, num_test=10_000, num_cue_conflict=5000,
            texture_correlation=0.9, background_correlation=0.9, seed=4),
        ShapesTexturesConfig(
            name="dense32",
            description="32 px, 10k/2k/2k, large rotated shapes on mostly flat/gradient "
                        "backgrounds, relief-shaded, with dense targets (segmentation, "
                        "edges, keypoints, height, depth, normals, curvature, reshading).",
            resolution=32, **_DENSE, seed=12),
        ShapesTexturesConfig(
            name="dense64",
            description="dense32 at 64 px.",
            resolution=64, **_DENSE, seed=13),
        ShapesTexturesConfig(
            name="densetiny",
            description="dense32's recipe at 1024/256/256: task-bank tests (builds in seconds).",
            resolution=32, **dict(_DENSE, num_train=1024, num_test=256, num_cue_conflict=256),
            seed=14),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default lookup of this file imports `importlib_resources`, which
        # tensorflow-datasets 4.9.10 needs but does not install; TFDS only uses the path
        # to find a checksums file, and this dataset downloads nothing.
        return epath.Path(__file__)

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:
        with _sorted_example_maps():
            super()._download_and_prepare(dl_manager, download_config)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(r, r, 3)),
                "label": tfds.features.ClassLabel(names=SHAPE_NAMES),
                "texture_label": tfds.features.ClassLabel(names=TEXTURE_NAMES),
                "texture_class": tfds.features.ClassLabel(names=SHAPE_NAMES),
                "background": tfds.features.ClassLabel(names=BACKGROUND_NAMES),
                "mask": tfds.features.Image(shape=(r, r, 1)),
                "bbox": tfds.features.BBoxFeature(),
                **(_dense_features(r) if self.builder_config.dense else {}),
            }),
            supervised_keys=("image", "label"),
            # Saved as metadata.json next to the records, so built data documents the
            # exact generation parameters and the class -> texture/background mappings.
            metadata=tfds.core.MetadataDict(
                generation={f: getattr(self.builder_config, f)
                            for f in _render.Recipe.__annotations__},
                class_texture=dict(CLASS_TEXTURE), class_background=dict(CLASS_BACKGROUND)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is generated locally.
        # TFDS refuses empty splits, so a split configured with 0 examples is left out.
        config = self.builder_config
        return {split: self._generate_examples(split) for split in SPLITS
                if config.split_size(split) > 0}

    def _generate_examples(self, split: str):
        config = self.builder_config
        workers = config.num_workers or min(4, os.cpu_count() or 1)
        index = 0
        for arrays in _split_chunks(config, split, workers):
            for i in range(arrays["label"].shape[0]):
                yield index, {key: value[i] for key, value in arrays.items()}
                index += 1
