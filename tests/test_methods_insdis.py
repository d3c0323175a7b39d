"""InsDis / NPID: memory-bank update, NCE and softmax-NCE losses and Z against hand-computed
numpy values; stable example indices from the pipeline; one step on 8 devices equal to 1
device (loss, gradients, bank and Z updates); a smoke run through the trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import insdis as insdis_config
from ssl_jax import optim, train
from ssl_jax.data import augment, pipeline
from ssl_jax.methods import get_method, insdis
from step_on_devices import loss_and_grads_on


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_memory_update_is_the_normalised_half_half_average():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    v = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    got = np.asarray(insdis.update_memory(jnp.asarray(bank), jnp.array([0, 2]), jnp.asarray(v),
                                          0.5))
    # Row 0: (0.5, 0.5) -> (1, 1)/sqrt 2; row 2: (0.8, 0.4) -> (2, 1)/sqrt 5; row 1 untouched.
    np.testing.assert_allclose(got[0], np.array([1, 1]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(got[1], bank[1])
    np.testing.assert_allclose(got[2], np.array([2, 1]) / np.sqrt(5), rtol=1e-6)


def test_nce_loss_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=4) * 3, rng.normal(size=(4, 6)) * 3
    n, z = 50, 37.0
    p_pos, p_neg = np.exp(pos) / z, np.exp(neg) / z
    k_pn = 6 / n
    h_pos, h_neg = p_pos / (p_pos + k_pn), p_neg / (p_neg + k_pn)
    want = -(np.log(h_pos) + np.log(1 - h_neg).sum(1)).mean()
    got = insdis.nce_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.log(z), n)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_softmax_nce_and_z_estimate_hand_values():
    pos = np.array([2.0, 0.0])
    neg = np.array([[1.0, 0.0, -1.0], [3.0, 0.0, 0.0]])
    logits = np.concatenate([pos[:, None], neg], 1)
    ce = np.log(np.exp(logits).sum(1)) - pos
    assert float(insdis.softmax_nce_loss(jnp.asarray(pos), jnp.asarray(neg))) == pytest.approx(
        ce.mean(), rel=1e-6)
    # Z = N * mean(exp(logits)) over all 8 entries.
    want = np.log(1000 * np.exp(logits).mean())
    got = insdis.estimate_log_z(jnp.asarray(pos), jnp.asarray(neg), 1000)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_negative_logits_shared_and_per_example():
    rng = np.random.default_rng(1)
    bank = _normalise(rng.normal(size=(10, 4))).astype(np.float32)
    v = _normalise(rng.normal(size=(3, 4))).astype(np.float32)
    shared = np.array([1, 7, 7, 2])
    per = np.array([[0, 1], [9, 9], [3, 4]])
    np.testing.assert_allclose(insdis.negative_logits(v, bank, shared, 0.1),
                               v @ bank[shared].T / 0.1, rtol=1e-5)
    want = np.stack([v[b] @ bank[per[b]].T for b in range(3)]) / 0.1
    np.testing.assert_allclose(insdis.negative_logits(v, bank, per, 0.1), want, rtol=1e-5)
    idx = insdis.sample_negatives(jax.random.key(0), 3, 500, 10, per_example=True)
    assert idx.shape == (3, 500) and int(idx.min()) == 0 and int(idx.max()) == 9


def test_example_index_is_the_position_in_the_split(tiny_data_dir):
    """Every index of the shuffled, cropped training stream names the same example as the
    same position of the unshuffled split, in every epoch."""
    builder = pipeline.load_builder("shapes_textures/tiny", tiny_data_dir)
    n = pipeline.num_examples(builder, "train")
    ordered = [int(ex["label"]) for ex in tfds.as_numpy(builder.as_dataset(
        split="train", shuffle_files=False))]
    preset = augment.get_preset("insdis")
    it = pipeline.train_iterator(builder, "train", 16, preset.views, 16, seed=3,
                                 with_index=True)
    epochs = [[], []]
    for e in range(2):
        for _ in range(n // 16):
            batch = next(it)
            epochs[e] += list(zip(batch["index"].tolist(), batch["label"].tolist()))
    for seen in epochs:
        assert all(label == ordered[i] for i, label in seen)
        assert len({i for i, _ in seen}) == len(seen) > n // 2  # no repeats within an epoch
    assert [i for i, _ in epochs[0]] != [i for i, _ in epochs[1]]  # reshuffled
    assert pipeline.split_offsets(builder, "train")[1] == n



@pytest.mark.parametrize("loss", ["nce", "softmax_nce"])
def test_step_on_8_devices_equals_1_device_and_writes_the_bank(loss):
    config = insdis_config.get_config("smoke")
    config.insdis.loss = loss
    config.insdis.per_example_negatives = loss == "softmax_nce"
    config = train.with_total_steps(config, 6, num_train=40)
    method = get_method("insdis", config)
    preset = augment.get_preset(config.augment.preset)
    tx = optim.build_optimizer("sgd", lambda s: 0.1, 1e-4)
    state = train.init_state(method, tx, jax.random.key(0), (32, 32, 3))
    rng = np.random.default_rng(0)
    index = rng.permutation(40)[:16].astype(np.int32)
    batch = {"image": rng.integers(0, 256, (16, 1, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 10, (16,), dtype=np.int32), "index": index}
    key = jax.random.key(1)
    (l8, (ms8, _)), g8 = loss_and_grads_on(jax.devices(), method, preset, state, batch, key)
    (l1, (ms1, _)), g1 = loss_and_grads_on(jax.devices()[:1], method, preset, state, batch, key)

    assert np.isfinite(l1) and l1 > 0
    assert abs(l8 - l1) <= 1e-5 * abs(l1)
    for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
        assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-3)
    np.testing.assert_allclose(ms8["memory"]["bank"], ms1["memory"]["bank"], atol=1e-6)
    # Only the batch's rows changed; they are unit vectors; Z was estimated (first step).
    old = np.asarray(state.model_state["memory"]["bank"])
    new = np.asarray(ms1["memory"]["bank"])
    changed = np.flatnonzero(np.abs(new - old).max(1) > 0)
    np.testing.assert_array_equal(changed, np.sort(index))
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-5)
    assert float(ms1["memory"]["z"]) > 0 and float(state.model_state["memory"]["z"]) == 0


def test_a_large_bank_is_row_sharded_and_trains_like_a_replicated_one():
    """With the sharding threshold at 0 the bank's rows are split over the 8 devices; a full
    trainer step (optimizer included) gives the replicated bank's loss, parameters and bank."""
    from jax.sharding import PartitionSpec as P
    from ssl_jax import sharding
    config = train.with_total_steps(insdis_config.get_config("smoke"), 6, num_train=64)
    method = get_method("insdis", config)
    preset = augment.get_preset(config.augment.preset)
    tx = optim.build_optimizer("sgd", lambda s: 0.1, 1e-4)
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {"image": rng.integers(0, 256, (16, 1, 32, 32, 3), dtype=np.uint8),
         "label": rng.integers(0, 10, (16,), dtype=np.int32),
         "index": rng.permutation(64)[:16].astype(np.int32)}, sharding.data_sharding(mesh))
    step = jax.jit(train.make_train_step(method, tx, preset, lambda s: 0.1))
    results = []
    for threshold in (0, sharding.SHARD_STATE_BYTES):
        init_fn, abstract = train.abstract_train_state(method, tx, mesh, 32, threshold)
        state = init_fn(jax.random.key(0))
        spec = state.model_state["memory"]["bank"].sharding.spec
        assert abstract.model_state["memory"]["bank"].sharding.spec == spec
        assert spec == (P("data") if threshold == 0 else P())
        assert state.params["backbone"]["conv1"]["kernel"].sharding.spec == P()
        results.append(jax.device_get(step(state, batch, jax.random.key(1))))
    (sharded, m_s), (replicated, m_r) = results
    assert abs(float(m_s["loss"]) - float(m_r["loss"])) <= 1e-6 * abs(float(m_r["loss"]))
    np.testing.assert_allclose(sharded.model_state["memory"]["bank"],
                               replicated.model_state["memory"]["bank"], atol=1e-6)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(replicated.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_insdis_smoke_run_through_the_trainer(tiny_data_dir, tmp_path):
    config = insdis_config.get_config("smoke")
    config.dataset.data_dir = tiny_data_dir
    config.evals.knn.every_steps = 0
    final = train.train(config, str(tmp_path / "run"))
    assert np.isfinite(final["loss"]) and 0.0 <= final["instance_accuracy"] <= 1.0
    _, method, state = train.load_trained(str(tmp_path / "run"))
    bank = np.asarray(state.model_state["memory"]["bank"])
    n = pipeline.num_examples(pipeline.load_builder("shapes_textures/tiny", tiny_data_dir),
                              "train")
    assert bank.shape == (n, 128) and method.num_data == n
    assert float(state.model_state["memory"]["z"]) > 0


def test_insdis_config_errors():
    config = insdis_config.get_config("smoke")
    with pytest.raises(ValueError, match="insdis needs config.num_train"):
        get_method("insdis", config)
    config = train.with_total_steps(config, 6, num_train=40)
    config.insdis.loss = "infonce"
    with pytest.raises(ValueError, match="unknown insdis.loss 'infonce'; valid: nce, softmax_nce"):
        get_method("insdis", config)
