"""frozen.recalibrate_batch_stats: a random network's BatchNorm statistics estimated on the train
split. Checked on the stem's BatchNorm, whose input (the stem convolution's output) does not
depend on any statistics: its recalibrated mean is the numpy mean of that input over the full
batches, its variance the mean of the per-batch (biased) variances."""
import jax
import numpy as np
import pytest

from configs import simclr as simclr_config
from ssl_jax import train
from ssl_jax.data import pipeline
from ssl_jax.evaluation.frozen import random_init, recalibrate_batch_stats
from ssl_jax.methods.common import build_backbone, normalize

BATCH = 256  # tiny's 1024 train images: 4 full batches


@pytest.mark.slow  # ~15 s of compiles; the default run is at its 10-minute budget
def test_stem_statistics_are_the_train_split_averages(tiny_data_dir):
    from jax.sharding import Mesh

    config = simclr_config.get_config("smoke")
    config.dataset.data_dir = tiny_data_dir
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    _, state = random_init(config, mesh, seed=0)
    got = recalibrate_batch_stats(config, state, batch_size=BATCH)
    stem = got.model_state["batch_stats"]["backbone"]["bn1"]

    # Independent reference: the stem convolution's outputs, captured in eval mode.
    backbone = build_backbone(config)
    variables = {"params": state.params["backbone"],
                 "batch_stats": state.model_state["batch_stats"]["backbone"]}
    builder = pipeline.load_builder(config.dataset.name, tiny_data_dir)
    means, variances = [], []
    for batch in pipeline.eval_iterator(builder, "train", global_batch_size=BATCH,
                                        image_size=config.dataset.image_size):
        x = normalize(train.to_float(batch["image"]))
        _, inter = backbone.apply(variables, x, train=False, capture_intermediates=True,
                                  mutable=["intermediates"])
        conv = np.asarray(inter["intermediates"]["conv1"]["__call__"][0], np.float64)
        conv = conv.reshape(-1, conv.shape[-1])
        means.append(conv.mean(0))
        variances.append(conv.var(0))
    assert len(means) == 4
    np.testing.assert_allclose(stem["mean"], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stem["var"], np.mean(variances, 0), rtol=1e-4, atol=1e-5)
    # The untrained statistics were the identity's, and every other layer was re-estimated.
    before = state.model_state["batch_stats"]["backbone"]
    assert np.allclose(before["bn1"]["var"], 1.0)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                           got.model_state["batch_stats"]["backbone"])
    assert all(jax.tree.leaves(changed))
