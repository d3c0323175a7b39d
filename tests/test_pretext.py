"""Pretext tasks (rotation, jigsaw, counting, colorization): the pure pieces against numpy /
scikit-image / hand-computed values, one step on 8 devices equal to 1 device per task, and a
trainer smoke run whose checkpoints carry the pretext accuracy and work with the per-layer
probe evaluator."""
import importlib
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.color

from ssl_jax import optim, train
from ssl_jax.data import augment
from ssl_jax.methods import get_method, pretext_ops as po
from step_on_devices import loss_and_grads_on

TASKS = ("rotation", "jigsaw", "counting", "colorization")


def _config(task, arg="smoke,model=alexnet_bn"):
    return importlib.import_module(f"configs.{task}").get_config(arg)


# --------------------------------------------------------------------------------- rotation

def test_rotations_are_np_rot90_with_their_labels():
    x = np.random.default_rng(0).random((3, 5, 5, 2)).astype(np.float32)
    rot, y = po.rotations(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), np.repeat(np.arange(4), 3))
    for r in range(4):
        np.testing.assert_array_equal(np.asarray(rot[3 * r:3 * r + 3]),
                                      np.rot90(x, r, axes=(1, 2)))
    # 90 degrees counter-clockwise: the top-right pixel moves to the top-left.
    assert float(rot[3, 0, 0, 0]) == x[0, 0, 4, 0]
    with pytest.raises(ValueError, match="square"):
        po.rotations(jnp.zeros((1, 4, 5, 3)))


# ---------------------------------------------------------------------------------- jigsaw

def test_permutation_set_distinct_with_the_brute_force_minimum_hamming_distance():
    perms = po.max_hamming_permutations(100, 9, seed=0)
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 100
    brute = min(sum(a != b for a, b in zip(p, q))
                for p, q in itertools.combinations(perms.tolist(), 2))
    assert po.min_pairwise_hamming(perms) == brute
    # Far better than 100 random permutations (whose closest pair is typically 2-4 apart).
    rng = np.random.default_rng(1)
    random_min = po.min_pairwise_hamming(np.stack([rng.permutation(9) for _ in range(100)]))
    assert brute >= 6 > random_min
    np.testing.assert_array_equal(perms, po.max_hamming_permutations(100, 9, seed=0))


def test_permutation_greedy_step_is_max_min_by_exhaustive_search():
    perms = po.max_hamming_permutations(8, 4, seed=3)
    every = list(itertools.permutations(range(4)))
    for n in range(1, 8):
        chosen = perms[:n].tolist()
        best = max(min(sum(a != b for a, b in zip(p, q)) for q in chosen)
                   for p in every if list(p) not in chosen)
        got = min(sum(a != b for a, b in zip(perms[n], q)) for q in chosen)
        assert got == best
    with pytest.raises(ValueError, match=r"num_permutations=25 must be in \[1, 24\]"):
        po.max_hamming_permutations(25, 4)


def test_tiles_are_the_slices_inside_their_cells_with_gaps():
    cell, tile = po.tile_geometry(64, 3, 0.85)
    assert (cell, tile) == (21, 18)
    img = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    rng = np.random.default_rng(1)
    offsets = rng.integers(0, cell - tile + 1, (9, 3, 2))
    tiles = np.asarray(po.extract_tiles(jnp.asarray(img), jnp.asarray(offsets), 3, cell, tile))
    assert tiles.shape == (9, 18, 18, 3)
    cover = np.zeros((64, 64, 3), int)
    for k in range(9):
        i, j = divmod(k, 3)
        for c in range(3):
            y, x = i * cell + offsets[k, c, 0], j * cell + offsets[k, c, 1]
            np.testing.assert_array_equal(tiles[k, ..., c], img[y:y + tile, x:x + tile, c])
            assert i * cell <= y and y + tile <= (i + 1) * cell   # inside its cell
            assert j * cell <= x and x + tile <= (j + 1) * cell
            cover[y:y + tile, x:x + tile, c] += 1
    assert cover.max() == 1  # tiles never overlap
    # Centred tiles leave exactly cell - tile = 3 px between neighbours.
    mid = np.full((9, 3, 2), (cell - tile) // 2)
    t = np.asarray(po.extract_tiles(jnp.asarray(img), jnp.asarray(mid), 3, cell, tile))
    np.testing.assert_array_equal(t[1, :, 0], img[1:19, 22, :])
    cover = np.zeros(64, int)
    for j in range(3):
        cover[j * cell + 1:j * cell + 1 + tile] += 1
    assert np.flatnonzero(cover[:63] == 0).tolist() == [0, 19, 20, 21, 40, 41, 42, 61, 62]
    # Offsets outside [0, cell - tile] (channel jitter at a border) are clipped into the cell.
    far = np.asarray(po.extract_tiles(jnp.asarray(img), jnp.full((9, 3, 2), 99), 3, cell, tile))
    np.testing.assert_array_equal(far[0], img[3:21, 3:21])


def test_puzzle_position_k_shows_tile_perm_k():
    config = _config("jigsaw")
    config.jigsaw.update(channel_jitter=0, grayscale_prob=0.0, tile_size=0)
    method = get_method("jigsaw", config)
    img = np.random.default_rng(2).random((2, 64, 64, 3)).astype(np.float32)
    tiles, labels = method.puzzles(jax.random.key(0), jnp.asarray(img))
    tiles, labels = np.asarray(tiles), np.asarray(labels)
    cell, tile = method.cell, method.tile
    for b in range(2):
        perm = np.asarray(method.permutations[labels[b]])
        for k in range(9):
            i, j = divmod(int(perm[k]), 3)
            block = img[b, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell]
            # The tile is some tile x tile window of cell perm[k] (random offset).
            hits = [(y, x) for y in range(cell - tile + 1) for x in range(cell - tile + 1)
                    if np.array_equal(block[y:y + tile, x:x + tile], tiles[b, k])]
            assert hits, (b, k)


def test_standardize_zero_mean_unit_std_per_tile():
    x = np.random.default_rng(3).random((4, 6, 6, 3)) * 5 + 2
    s = np.asarray(po.standardize(jnp.asarray(x)))
    np.testing.assert_allclose(s.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(s.std(axis=(1, 2, 3)), 1, atol=1e-3)


# -------------------------------------------------------------------------------- counting

def test_count_views_are_quadrants_and_the_downsampled_image():
    x = np.random.default_rng(4).random((2, 8, 8, 3)).astype(np.float32)
    # Area resampling only, tiles at their native 4 px: the tiles are the quadrants and the
    # whole image is the 2 x 2 block means.
    tiles, whole = po.count_views(jax.random.key(0), jnp.asarray(x), 4, methods=("area",))
    tiles, whole = np.asarray(tiles), np.asarray(whole)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_array_equal(tiles[:, k], x[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4])
    np.testing.assert_allclose(whole, x.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4)), atol=1e-6)
    # Resized on to 8 px: shapes, and every operator is a normalised filter (constant stays).
    tiles, whole = po.count_views(jax.random.key(1), jnp.full((3, 8, 8, 3), 0.3), 8)
    assert tiles.shape == (3, 4, 8, 8, 3) and whole.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(tiles), 0.3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(whole), 0.3, atol=1e-5)


def test_resize_methods_and_random_choice_per_image():
    x = np.random.default_rng(6).random((1, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(po.resize(jnp.asarray(x), 8, "area")),
                                  x.repeat(2, axis=1).repeat(2, axis=2))
    with pytest.raises(ValueError, match="integer factor"):
        po.resize(jnp.asarray(x), 6, "area")
    # 64 copies of one image, each resampled by a method drawn for it: every output is one of
    # the four single-method results, and all four occur.
    batch = jnp.asarray(np.repeat(np.random.default_rng(7).random((1, 8, 8, 3)), 64, 0),
                        jnp.float32)
    out = np.asarray(po.random_resize(jax.random.key(2), batch, 4))
    singles = [np.asarray(po.resize(batch[:1], 4, m))[0] for m in po.RESAMPLING_METHODS]
    assert len({np.round(singles[i], 5).tobytes() for i in range(4)}) == 4
    which = [[i for i, s in enumerate(singles) if np.allclose(o, s, atol=1e-6)] for o in out]
    assert all(len(w) == 1 for w in which)
    assert {w[0] for w in which} == {0, 1, 2, 3}


def test_counting_loss_zero_when_additive_positive_otherwise():
    rng = np.random.default_rng(5)
    tiles = rng.random((6, 4, 10)).astype(np.float32)
    whole = tiles.sum(1)                                  # exactly additive
    other = whole + 2.0                                   # |.|^2 = 40 > margin 10
    loss, acc = po.counting_loss(jnp.asarray(tiles), jnp.asarray(whole), jnp.asarray(other), 10.)
    assert float(loss) == 0.0 and float(acc) == 1.0
    # Not additive: the squared error; other too close: the hinge M - d^2.
    whole2 = whole + 0.5                                  # pos = 10 * 0.25 = 2.5
    other2 = whole + 0.3                                  # neg = 10 * 0.09 = 0.9
    loss, acc = po.counting_loss(jnp.asarray(tiles), jnp.asarray(whole2), jnp.asarray(other2), 10.)
    assert float(loss) == pytest.approx(2.5 + (10 - 0.9), rel=1e-5)
    assert float(acc) == 0.0
    # phi = 0 (the trivial solution) pays the full margin.
    z = jnp.zeros((6, 4, 10))
    assert float(po.counting_loss(z, z[:, 0], z[:, 0], 10.)[0]) == pytest.approx(10.0)


# ---------------------------------------------------------------------------- colorization

def test_lab_matches_skimage_both_ways():
    rng = np.random.default_rng(6)
    rgb = rng.random((500, 3))
    rgb[:27] = np.stack(np.meshgrid(*[[0.0, 0.02, 1.0]] * 3), -1).reshape(-1, 3)  # corners, darks
    got = np.asarray(po.rgb_to_lab(jnp.asarray(rgb)))
    np.testing.assert_allclose(got, skimage.color.rgb2lab(rgb), atol=2e-3)
    img = rng.random((7, 9, 3))
    np.testing.assert_allclose(np.asarray(po.rgb_to_lab(jnp.asarray(img))),
                               skimage.color.rgb2lab(img), atol=2e-3)
    lab = skimage.color.rgb2lab(rgb)
    np.testing.assert_allclose(np.asarray(po.lab_to_rgb(jnp.asarray(lab))),
                               skimage.color.lab2rgb(lab), atol=1e-4)


def test_ab_bins_and_quantisation_round_trip():
    bins = po.in_gamut_bins(10.0)
    assert 200 < len(bins) < 330  # Zhang et al. report 313 from ImageNet's colours
    assert len(np.unique(bins, axis=0)) == len(bins)
    np.testing.assert_array_equal(bins % 10, 0)
    assert [0.0, 0.0] in bins.tolist()  # grays
    rgb = np.random.default_rng(7).random((5000, 3))
    ab = skimage.color.rgb2lab(rgb)[:, 1:].astype(np.float32)
    q = np.asarray(po.quantize_ab(jnp.asarray(ab), jnp.asarray(bins)))
    err = np.linalg.norm(ab - bins[q], axis=1)
    assert err.max() <= 5 * np.sqrt(2) + 1e-3  # at most half a cell's diagonal
    np.testing.assert_array_equal(q, np.argmin(((ab[:, None] - bins[None]) ** 2).sum(-1), 1))


def test_soft_encoding_rebalancing_and_annealed_mean():
    bins = jnp.asarray(po.in_gamut_bins(10.0))
    ab = jnp.asarray([[3.0, -12.0], [41.0, 20.0]])
    soft = np.asarray(po.soft_encode(ab, bins))
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    assert (soft > 0).sum(-1).tolist() == [5, 5]
    d2 = ((np.asarray(ab)[:, None] - np.asarray(bins)[None]) ** 2).sum(-1)
    for i in range(2):
        near = np.argsort(d2[i])[:5]
        want = np.exp(-d2[i, near] / 50.0)
        np.testing.assert_allclose(soft[i, near], want / want.sum(), rtol=1e-5)
    # Rebalancing: the hand formula; lambda = 1 (uniform mixing) -> all ones.
    q = bins.shape[0]
    counts = np.random.default_rng(8).random(q) ** 4
    w = np.asarray(po.rebalancing_weights(jnp.asarray(counts), bins, 0.5))
    kernel = np.exp(-((np.asarray(bins)[:, None] - np.asarray(bins)[None]) ** 2).sum(-1) / 50.)
    smooth = kernel @ (counts / counts.sum())
    smooth /= smooth.sum()
    want = 1 / (0.5 * smooth + 0.5 / q)
    np.testing.assert_allclose(w, want / (smooth * want).sum(), rtol=1e-4)
    assert np.all(np.diff(w[np.argsort(smooth)]) <= 1e-6)  # rarer (smoothed) bins weigh more
    np.testing.assert_allclose(np.asarray(po.rebalancing_weights(jnp.asarray(counts), bins,
                                                                 lam=1.0)), 1.0, rtol=1e-4)
    # Annealed mean: a one-hot distribution decodes to its bin; T = 1 is the plain mean.
    p = np.zeros(q, np.float32)
    p[5] = 1.0
    np.testing.assert_allclose(np.asarray(po.annealed_mean(jnp.asarray(p), bins)), bins[5],
                               atol=1e-4)
    p = np.random.default_rng(9).random(q).astype(np.float32)
    p /= p.sum()
    np.testing.assert_allclose(np.asarray(po.annealed_mean(jnp.asarray(p), bins, 1.0)),
                               p @ np.asarray(bins), rtol=1e-4)


# --------------------------------------------------------------------- 8 devices = 1 device

@pytest.mark.parametrize("task", TASKS)
def test_step_on_8_devices_equals_1_device(task):
    config = _config(task)
    method = get_method(task, config)
    preset = augment.get_preset(config.augment.preset)
    tx = optim.build_optimizer("sgd", lambda s: 0.1, 1e-4)
    state = train.init_state(method, tx, jax.random.key(0), (64, 64, 3))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 1, 64, 64, 3), dtype=np.uint8),
             "label": rng.integers(0, 10, (8,), dtype=np.int32)}
    key = jax.random.key(1)
    (l8, (ms8, m8)), g8 = loss_and_grads_on(jax.devices(), method, preset, state, batch, key)
    (l1, (ms1, m1)), g1 = loss_and_grads_on(jax.devices()[:1], method, preset, state, batch, key)
    assert np.isfinite(l1) and l1 > 0
    assert abs(l8 - l1) <= 1e-5 * abs(l1)
    assert 0.0 <= m1["pretext_accuracy"] <= 1.0
    assert abs(m8["pretext_accuracy"] - m1["pretext_accuracy"]) < 1e-6
    # Relative to the largest gradient: biases feeding a BatchNorm have a true gradient of 0
    # and float32 noise of ~1e-6 in both runs.
    scale = max(np.max(np.abs(b)) for b in jax.tree.leaves(g1))
    for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
        assert np.max(np.abs(a - b)) <= 1e-5 * scale
    for a, b in zip(jax.tree.leaves(ms8), jax.tree.leaves(ms1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if task == "colorization":  # every pixel of the batch counted once in the bin prior
        added = ms1["colour_prior"]["counts"] - state.model_state["colour_prior"]["counts"]
        assert float(added.sum()) == pytest.approx(8 * method.out_size ** 2)


def test_pretext_config_errors():
    with pytest.raises(ValueError, match="unknown pretext backbone model='vgg16'"):
        _config("rotation", "smoke,model=vgg16")
    config = _config("jigsaw")
    config.jigsaw.tile_fraction = 1.5
    with pytest.raises(ValueError, match="tile_fraction=1.5"):
        get_method("jigsaw", config)


# ------------------------------------------------------------- trainer and per-layer probes

@pytest.mark.slow  # ~30 s on the loaded 2-core machine: a trainer run plus run_eval's loader
def test_colorization_smoke_run_tags_checkpoints_and_per_layer_eval_sees_conv1_5(
        tiny_data_dir, tmp_path):
    from ssl_jax import checkpointing, sharding
    from ssl_jax.evaluators import inputs

    config = _config("colorization")
    config.dataset.data_dir = tiny_data_dir
    config.evals.knn.every_steps = 0
    config.keep_checkpoints = 10
    workdir = str(tmp_path / "run")
    final = train.train(config, workdir)
    assert 0.0 <= final["pretext_accuracy"] <= 1.0 and np.isfinite(final["loss"])
    # Every checkpoint's meta holds its step's metrics, equal to that step's metrics.jsonl row.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = {r["step"]: r for r in map(json.loads, f)}
    manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), keep=None,
                                         save_every=1, async_save=False)
    assert sorted(manager.all_steps()) == [2, 4, 6]
    for step in (2, 6):
        meta = manager.restore(step, args=checkpointing.ocp.args.Composite(
            meta=checkpointing.ocp.args.JsonRestore())).meta
        assert meta["metrics"]["pretext_accuracy"] == rows[step]["pretext_accuracy"]
    manager.close()
    # A chosen step restores (the trained prior has counted 2 steps of pixels).
    _, method, state2 = train.load_trained(workdir, step=2)
    assert int(state2.step) == 2
    assert float(state2.model_state["colour_prior"]["counts"].sum()) == pytest.approx(
        method.bins.shape[0] + 2 * 32 * 16 ** 2)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 3"):
        train.load_trained(workdir, step=3)
    # run_eval's per-layer evaluator finds AlexNet conv1..conv5 by default.
    network = inputs.load_network(workdir, 0, sharding.make_mesh())
    layers = inputs.resolve_layers("", inputs.sown_layers(network, 64))
    assert [n.split("/")[-1] for n in layers] == [f"conv{i}" for i in range(1, 6)]
    # The preview keeps the input's L (up to the clip into the sRGB gamut).
    img = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    out = np.asarray(method.colorize(state2.params, state2.model_state, jnp.asarray(img)))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    dl = np.abs(skimage.color.rgb2lab(out)[..., 0] - skimage.color.rgb2lab(img)[..., 0])
    assert np.median(dl) < 2.0


# ------------------------------------------------------- the upright built-in dataset variant

def test_upright_variant_changes_only_orientations():
    """rotate=False (shapes_textures/upright64) draws every factor as rotate=True does, but
    shapes are upright: circles are unchanged, every triangle has its vertex on top."""
    import dataclasses

    from ssl_jax.data import builtin, builtin_textures

    base = dataclasses.replace(builtin.ShapesTextures.builder_configs["upright64"],
                               resolution=32, num_train=512)
    up = builtin_textures.generate_chunk(base, "train", 0)
    rot = builtin_textures.generate_chunk(dataclasses.replace(base, rotate=True), "train", 0)
    for key in ("label", "texture_label", "background"):
        np.testing.assert_array_equal(up[key], rot[key])
    circle = up["label"] == builtin.SHAPE_NAMES.index("circle")
    np.testing.assert_array_equal(up["mask"][circle], rot["mask"][circle])

    def vertex_on_top(mask):
        rows = np.flatnonzero(mask.any(1))
        return mask[rows[0]].sum() < mask[rows[-1]].sum()

    tri = np.flatnonzero(up["label"] == builtin.SHAPE_NAMES.index("triangle"))
    assert len(tri) > 20
    assert all(vertex_on_top(up["mask"][i, ..., 0]) for i in tri)
    assert np.mean([vertex_on_top(rot["mask"][i, ..., 0]) for i in tri]) < 0.8
