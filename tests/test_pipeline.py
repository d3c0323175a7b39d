"""tf.data pipeline: multi-process slicing, resume skipping, TFDS datasets by name, eval padding."""
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssl_jax.data import augment, pipeline

VIEWS = augment.get_preset("simclr_cifar").views


def _batches(builder, nproc, pid, n, start=0, batch=32):
    with mock.patch.object(jax, "process_count", return_value=nproc), \
            mock.patch.object(jax, "process_index", return_value=pid):
        it = pipeline.train_iterator(builder, "train", batch, VIEWS, 32, seed=3, start_step=start)
        return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_data_dir):
    return pipeline.load_builder("shapes_textures/tiny", tiny_data_dir)


def test_processes_split_each_global_batch_exactly(tiny):
    one = _batches(tiny, 1, 0, 3)
    halves = [_batches(tiny, 2, pid, 3) for pid in range(2)]
    for k in range(3):
        for key in ("image", "label"):
            joined = np.concatenate([halves[0][k][key], halves[1][k][key]])
            np.testing.assert_array_equal(joined, one[k][key])
    assert one[0]["image"].shape == (32, 2, 32, 32, 3) and one[0]["image"].dtype == np.uint8
    # Two views of one image are different crops.
    assert not np.array_equal(one[0]["image"][:, 0], one[0]["image"][:, 1])


def test_resume_at_step_k_sees_batch_k(tiny):
    # 1024 examples / 32 = 32 steps per epoch: step 33 is in the second (reshuffled) epoch.
    run = _batches(tiny, 1, 0, 35)
    resumed = _batches(tiny, 1, 0, 2, start=33)
    for a, b in zip(run[33:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # The second epoch is a different order of the same examples.
    assert not np.array_equal(run[0]["label"], run[32]["label"])


def test_eval_iterator_pads_the_last_batch_and_marks_it(tiny):
    batches = list(pipeline.eval_iterator(tiny, "test", 96, 32))
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 512 and len(valid) == 96 * 6 and not valid[512:].any()
    labels = np.concatenate([b["label"] for b in batches])[valid]
    reference = np.array([int(ex["label"]) for ex in tfds.as_numpy(
        tiny.as_dataset(split="test", shuffle_files=False))])
    np.testing.assert_array_equal(labels, reference)


def test_named_tfds_dataset_through_the_pipeline(tmp_path):
    # Any TFDS image-classification dataset by name; mock_data stands in for the download.
    with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path)):
        builder = pipeline.load_builder("cifar10", str(tmp_path))
        batch = next(pipeline.train_iterator(builder, "train", 16, VIEWS, 24, seed=0,
                                             cache=False, shuffle_buffer=64))
        evals = list(pipeline.eval_iterator(builder, "test", 16, 24, crop_fraction=0.875))
    assert batch["image"].shape == (16, 2, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].min() >= 0 and batch["label"].max() < 10
    assert sum(int(b["valid"].sum()) for b in evals) == 64


def test_unknown_dataset_is_a_one_line_error_with_choices():
    with pytest.raises(ValueError) as err:
        pipeline.load_builder("no_such_dataset_xyz")
    msg = str(err.value)
    assert "no_such_dataset_xyz" in msg and "shapes_textures/<config>" in msg and "\n" not in msg
    assert "tiny" in msg and "small32" in msg


def test_private_thread_pool_gives_the_same_batches(tiny):
    # benchmarks/pipeline_throughput.py times the pipeline on N threads (`threads=N`); the
    # data must not depend on it.
    default = _batches(tiny, 1, 0, 2, batch=16)
    it = pipeline.train_iterator(tiny, "train", 16, VIEWS, 32, seed=3, threads=1)
    for k in range(2):
        batch = next(it)
        for key in ("image", "label"):
            np.testing.assert_array_equal(batch[key], default[k][key])
    with pytest.raises(ValueError, match="threads=-1"):
        pipeline.train_iterator(tiny, "train", 16, VIEWS, 32, seed=3, threads=-1)
