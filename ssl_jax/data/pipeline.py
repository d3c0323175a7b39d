"""tf.data input pipeline: any TFDS image-classification dataset by name, or the built-in one.

Host side (here): read, shuffle, decode, random-resized-crop and flip per view, batch.
Device side (`ssl_jax.data.augment`): colour jitter, grayscale, blur, solarize, one RNG per image.

Multi-host: every process walks the same seeded global stream of records but decodes only the
rows of each global batch that belong to it, so the global batch is identical for any number of
processes (1 process x 8 devices trains exactly like 2 processes x 4 devices), while the
expensive work (decode, crop) is split. Resuming at step s skips s global batches of undecoded
records, which makes a resumed run see exactly the data an uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_jax.data import copy_paste as copy_paste_lib, crop
from ssl_jax.data.indexing import example_index, split_offsets

BUILTIN = "shapes_textures"


def _builder(name: str, data_dir: str | None):
    import ssl_jax.data.builtin  # noqa: F401  (registers `shapes_textures` with TFDS)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError / ValueError for bad configs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        configs = ", ".join(c.name for c in tfds.builder_cls(BUILTIN).BUILDER_CONFIGS)
        raise ValueError(
            f"unknown dataset {name!r} ({first}); valid: any TFDS image-classification dataset "
            f"(e.g. cifar10, stl10, imagenette, imagenet2012) or the built-in "
            f"{BUILTIN}/<config> with config in: {configs}") from None
    return builder


def load_builder(name: str, data_dir: str | None = None):
    """The TFDS builder for `name`, prepared. The built-in dataset is generated on first use
    (no download); other datasets must already be prepared in `data_dir` when offline."""
    builder = _builder(name, data_dir)
    if name.split("/")[0] == BUILTIN:
        builder.download_and_prepare()
    elif not os.path.isdir(builder.data_dir) or not tf.io.gfile.exists(
            os.path.join(builder.data_dir, "dataset_info.json")):
        builder.download_and_prepare()
    return builder


def num_examples(builder, split: str) -> int:
    return builder.info.splits[split].num_examples


def _image_decoders(builder):
    # Keep images encoded until after the per-process filter: skipping/filtering is then cheap.
    if isinstance(builder.info.features["image"], tfds.features.Image):
        return {"image": tfds.decode.SkipDecoding()}
    return None


def _decode_image(builder, encoded):
    feature = builder.info.features["image"]
    if isinstance(feature, tfds.features.Image):
        image = feature.decode_example(encoded)
    else:
        image = encoded
    if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def example_view_seed(seed: int, index: tf.Tensor, view_index: int) -> tf.Tensor:
    """Stateless seed of one view of the example at global stream position `index`. It depends
    on (seed, index, view) only, never on the process count, so any sharding and any resumed run
    sees the same crops."""
    return tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + view_index, index])


def pair_with_previous(ds: tf.data.Dataset, first: dict) -> tf.data.Dataset:
    """Adds to every element the previous element of the stream as "other" (the first gets
    `first`): the source of copy-paste's 'image' backgrounds. One pass over one iterator, so
    it stays deterministic and, placed before the per-process filter, identical for any
    process count."""
    def step(previous, ex):
        return ex, {**ex, "other": previous}

    return ds.scan(first, step)


def train_iterator(builder, split: str, global_batch_size: int, views: tuple, image_size: int,
                   seed: int, start_step: int = 0, cache: bool = True,
                   shuffle_buffer: int = 50_000, with_index: bool = False,
                   copy_paste: "copy_paste_lib.CopyPaste | None" = None, threads: int = 0,
                   extra_keys: tuple = ()) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of this process's part of each global batch.

    views: one `augment.ViewConfig` per view (its host-side crop/flip fields are used here).
    copy_paste: optional `copy_paste.CopyPaste`, applied to each view independently BEFORE its
    crop and flip (see ssl_jax/data/copy_paste.py).
    threads: > 0 runs the whole pipeline on its own pool of that many threads, each op
    single-threaded (benchmarks/pipeline_throughput.py measures images/s per core this way);
    0 leaves tf.data's shared pool (all cores). The data are the same either way.
    Yields {"image": uint8 [b, V, S, S, 3], "label": int32 [b]}, b = global_batch_size /
    process_count, plus "index": int32 [b] (`example_index`) with `with_index` (memory banks),
    plus each of `extra_keys` (dataset features such as dense targets, decoded, per example:
    not cropped or flipped, so only whole-image views keep them aligned).
    """
    if threads < 0:
        raise ValueError(f"threads={threads} must be >= 0 (0: tf.data's shared thread pool)")
    nproc, pid = jax.process_count(), jax.process_index()
    if global_batch_size % nproc:
        raise ValueError(f"batch_size={global_batch_size} not divisible by {nproc} processes")
    local = global_batch_size // nproc
    needs = copy_paste.masks.needs if copy_paste else ()
    read_index = with_index or "index" in needs
    decoders = _image_decoders(builder)
    if decoders is not None and "mask" in needs:
        decoders["mask"] = tfds.decode.SkipDecoding()
    ds = builder.as_dataset(split=split, shuffle_files=True, decoders=decoders,
                            read_config=tfds.ReadConfig(shuffle_seed=seed,
                                                        add_tfds_id=read_index))
    keys = ("image", "label") + (("index",) if read_index else ()) + (
        ("mask",) if "mask" in needs else ()) + tuple(extra_keys)
    out_keys = ("image", "label") + (("index",) if with_index else ()) + tuple(extra_keys)
    if read_index:
        offsets, _ = split_offsets(builder, split)
        ds = ds.map(lambda ex: {**ex, "index": example_index(ex["tfds_id"], offsets)})
    ds = ds.map(lambda ex: {k: ex[k] for k in keys})
    # The stream's first "other": one record read eagerly, before cache/shuffle see the data.
    first = ds.take(1).get_single_element() if copy_paste else None
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    if copy_paste:
        ds = pair_with_previous(ds, first)
    ds = ds.enumerate().skip(start_step * global_batch_size)
    ds = ds.filter(lambda i, ex: (i % global_batch_size) // local == pid)

    def decoded(ex):
        out = {**ex, "image": _decode_image(builder, ex["image"])}
        if "mask" in ex and decoders is not None and "mask" in decoders:
            out["mask"] = builder.info.features["mask"].decode_example(ex["mask"])
        return out

    if copy_paste:
        textures = tf.constant(copy_paste.textures)
        side = builder.info.features["image"].shape[0] or image_size

    def prepare(i, ex):
        ex = decoded(ex)
        image = ex["image"]
        if copy_paste:
            other = decoded(ex["other"])
            mask, other_mask = copy_paste.masks(ex), copy_paste.masks(other)
        out = []
        for v, view in enumerate(views):
            view_seed = example_view_seed(seed, i, v)
            if copy_paste:
                # Its own stream (fold_in), so switching copy-paste on leaves the crops as
                # they were.
                image = copy_paste_lib.copy_paste_view(
                    ex["image"], mask, other["image"], other_mask,
                    tf.random.experimental.stateless_fold_in(view_seed, 1), copy_paste.cfg,
                    textures, side)
            out.append(crop.crop_view(image, view_seed, image_size, view))
        return {"image": tf.stack(out), "label": tf.cast(ex["label"], tf.int32),
                **{k: ex[k] for k in out_keys[2:]}}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        ds = ds.with_options(options)
    return ds.as_numpy_iterator()


def eval_iterator(builder, split: str, global_batch_size: int, image_size: int,
                  crop_fraction: float = 1.0, extra_keys: tuple = ()
                  ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` in order, eval preprocessing (centre crop). The last global batch
    is padded to full size; `valid` (bool [b]) marks real examples. Yields this process's rows:
    {"image": uint8 [b, S, S, 3], "label": int32 [b], "valid": bool [b], *extra_keys}."""
    nproc, pid = jax.process_count(), jax.process_index()
    local = global_batch_size // nproc
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=_image_decoders(builder))

    def prepare(ex):
        image = _decode_image(builder, ex["image"])
        out = {"image": crop.center_crop(image, image_size, crop_fraction),
               "label": tf.cast(ex["label"], tf.int32), "valid": tf.constant(True)}
        out.update({k: ex[k] for k in extra_keys})
        return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(global_batch_size).prefetch(tf.data.AUTOTUNE)
    for batch in ds.as_numpy_iterator():
        n = len(batch["label"])
        if n < global_batch_size:
            batch = {k: np.concatenate([v, np.zeros((global_batch_size - n,) + v.shape[1:],
                                                    v.dtype)]) for k, v in batch.items()}
        yield {k: v[pid * local:(pid + 1) * local] for k, v in batch.items()}
