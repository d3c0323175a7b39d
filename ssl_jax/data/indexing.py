"""Stable example indices of a TFDS split (the rows of InsDis' memory bank, of copy-paste's mask
arrays and of the RBD mask cache). Imported by the pipeline and by ssl_jax.data.saliency, which
therefore need not import each other.
"""
from __future__ import annotations

import tensorflow as tf


def split_offsets(builder, split: str) -> tuple[list[int], int]:
    """(first global index of each shard file, number of examples) of the base split of
    `split` ("train[:90%]" -> "train"): the index space of `example_index`."""
    info = builder.info.splits[split.split("[")[0]]
    lengths = list(info.shard_lengths) or [info.num_examples]
    offsets = [0]
    for n in lengths[:-1]:
        offsets.append(offsets[-1] + n)
    return offsets, int(info.num_examples)


def example_index(tfds_id: tf.Tensor, offsets: list[int]) -> tf.Tensor:
    """Stable int32 position of an example in its split, from TFDS's `tfds_id`
    ("<name>-<split>.tfrecord-SSSSS-of-NNNNN__<record>"): shard offset + record. It does not
    depend on shuffling, caching, sharding or the epoch, so a memory bank row always belongs
    to the same image."""
    file_part, record = tf.strings.split(tfds_id, "__")[0], tf.strings.split(tfds_id, "__")[1]
    shard = tf.strings.to_number(
        tf.strings.split(tf.strings.split(file_part, ".tfrecord-")[-1], "-of-")[0], tf.int64)
    offset = tf.gather(tf.constant(offsets, tf.int64), shard)
    return tf.cast(offset + tf.strings.to_number(record, tf.int64), tf.int32)
