"""Depth-matched network CCA (Epstein et al.): the K-direction SVCCA against an independent
float64 numpy reference, its invariances, the depth pairing, and the whole path from
[b, h, w, c] activations of different spatial sizes to per-batch scores and their standard error."""
import math

import jax
import numpy as np
import pytest

from ssl_jax.similarity import (bases_similarity, batched_network_similarity,
                                depth_matched_pairs, k_svcca, layer_bases, mean_cca, to_examples)
from ssl_jax.similarity.cca import cca

TOL = 2e-5  # float32 SVDs against a float64 reference


def _leading_ref(x, y, k):
    """float64: centre, each side's k leading principal directions (left singular vectors,
    capped at the channels and the rank), singular values of Ux^T Uy, their mean."""
    def basis(a):
        a = np.asarray(a, np.float64)
        u, sv, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        rank = int((sv > sv[0] * 1e-9).sum())
        return u[:, :min(k, a.shape[1], rank)]

    ux, uy = basis(x), basis(y)
    return float(np.mean(np.linalg.svd(ux.T @ uy, compute_uv=False)))


def _planted(rng, n, p, q, shared, noise):
    """x, y that share a `shared`-dimensional latent, each mixed into its channels plus noise."""
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, p)) + noise * rng.standard_normal((n, p))
    y = z @ rng.standard_normal((shared, q)) + noise * rng.standard_normal((n, q))
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("p, q, k", [(12, 7, 5), (7, 12, 3), (16, 16, 16)])
def test_k_svcca_matches_reference_random(p, q, k):
    rng = np.random.default_rng(p * 100 + q)
    x = rng.standard_normal((300, p)).astype(np.float32)
    y = (0.3 * x[:, :1] + rng.standard_normal((300, q))).astype(np.float32)
    assert abs(float(k_svcca(x, y, k)) - _leading_ref(x, y, k)) <= TOL


def test_k_svcca_planted_subspace():
    rng = np.random.default_rng(1)
    x, y = _planted(rng, 500, 20, 14, shared=4, noise=0.3)
    ref4, ref10 = _leading_ref(x, y, 4), _leading_ref(x, y, 10)
    assert ref4 > 0.9 and ref10 < ref4  # the planted directions lead, the rest are noise
    assert abs(float(k_svcca(x, y, 4)) - ref4) <= TOL
    assert abs(float(k_svcca(x, y, 10)) - ref10) <= TOL


def test_k_svcca_k_capped_at_channels():
    rng = np.random.default_rng(2)
    x, y = _planted(rng, 200, 9, 6, shared=2, noise=1.0)
    capped = float(k_svcca(x, y, 50))
    assert abs(capped - float(k_svcca(x, y, 9))) <= 1e-6  # the wider layer's width
    assert abs(capped - _leading_ref(x, y, 9)) <= TOL
    assert abs(capped - float(mean_cca(x, y))) <= 1e-6  # k >= min(p, q): all correlations


def test_k_svcca_k_capped_at_rank():
    """A duplicated channel adds no direction: the mean is over the rank, not the width."""
    rng = np.random.default_rng(3)
    x, y = _planted(rng, 200, 5, 8, shared=2, noise=1.0)
    dup = np.concatenate([x, x[:, :3]], axis=1)  # 8 channels, rank 5
    assert abs(float(k_svcca(dup, y, 8)) - _leading_ref(x, y, 8)) <= TOL


def test_k_svcca_invariant_to_rotations_scale_and_shift():
    """Below the width, PCA picks the directions: invariant to orthogonal maps, scale and
    shifts (not to any invertible map); at k >= width, to any invertible map (mean CCA)."""
    rng = np.random.default_rng(4)
    x, y = _planted(rng, 400, 10, 8, shared=3, noise=0.5)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    x2 = (3.0 * x @ q + rng.standard_normal(10) * 5).astype(np.float32)
    base = float(k_svcca(x, y, 5))
    assert abs(float(k_svcca(x2, y, 5)) - base) <= 1e-4
    assert abs(float(k_svcca(y, x, 5)) - base) <= 1e-5  # symmetric
    a = rng.standard_normal((10, 10)) + 3 * np.eye(10)  # invertible, moderately conditioned
    x3 = (x @ a).astype(np.float32)
    assert abs(float(k_svcca(x3, y, 10)) - float(k_svcca(x, y, 10))) <= 1e-4


def test_k_svcca_is_not_fooled_by_few_distinct_rows():
    """A 1 x 1 map resized to s x s repeats each image's row; with fewer images than channels
    a full CCA's leading correlations are ~1 for unrelated layers, K directions are not."""
    rng = np.random.default_rng(9)
    x = np.repeat(rng.standard_normal((150, 128)), 16, axis=0).astype(np.float32)
    y = np.repeat(rng.standard_normal((150, 64)), 16, axis=0).astype(np.float32)
    assert float(np.sort(np.asarray(cca(x, y)))[-20:].mean()) > 0.95
    assert float(k_svcca(x, y, 20)) < 0.5


def test_k_svcca_jit_and_bad_inputs():
    rng = np.random.default_rng(5)
    x, y = _planted(rng, 100, 6, 5, shared=2, noise=1.0)
    jitted = jax.jit(lambda a, b: k_svcca(a, b, 3))
    assert abs(float(jitted(x, y)) - float(k_svcca(x, y, 3))) <= 1e-6
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            k_svcca(x, y, bad_k)
    with pytest.raises(ValueError, match="n_features"):
        k_svcca(x[:5], y[:5], 3)
    with pytest.raises(ValueError, match="zero variance"):
        k_svcca(np.ones_like(x), y, 3)


def test_depth_matched_pairs():
    alexnet = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    resnet = ["layer1", "layer2", "layer3", "layer4"]
    assert depth_matched_pairs(alexnet, resnet) == [
        ("conv1", "layer1"), ("conv2", "layer2"), ("conv3", "layer3"), ("conv4", "layer4")]
    assert depth_matched_pairs(resnet, resnet) == [(name, name) for name in resnet]
    assert depth_matched_pairs(alexnet, resnet, depth=2) == [("conv1", "layer1"),
                                                             ("conv2", "layer2")]
    with pytest.raises(ValueError, match="layers_b has 3 layers"):
        depth_matched_pairs(alexnet, resnet[:3])
    with pytest.raises(ValueError, match="layers_a has 4 layers"):
        depth_matched_pairs(resnet, alexnet, depth=5)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        depth_matched_pairs(alexnet, resnet, depth=0)
    with pytest.raises(ValueError, match="sequence of layer names"):
        depth_matched_pairs("conv1234", resnet)


def test_resize_of_constant_map_is_constant():
    a = np.broadcast_to(np.arange(1, 4, dtype=np.float32), (2, 8, 8, 3))  # per-channel constant
    for s in (3, 4, 16):
        rows = np.asarray(to_examples(a, "positions", s))
        assert rows.shape == (2 * s * s, 3)
        np.testing.assert_allclose(rows, np.broadcast_to([1.0, 2.0, 3.0], rows.shape), atol=1e-6)


def _activations(rng, n, size, channels, latent):
    """[n, size, size, channels] maps driven by a shared per-image latent plus spatial noise."""
    up = jax.image.resize(latent, (n, size, size, latent.shape[-1]), "bilinear")
    mix = rng.standard_normal((latent.shape[-1], channels))
    noise = rng.standard_normal((n, size, size, channels))
    return (np.asarray(up) @ mix + noise).astype(np.float32)


def test_whole_path_matches_numpy_reference():
    """Two 'networks' with layers at 8x8 and 2x2 (and 4x4, 6x6), resized to 4x4 positions."""
    rng = np.random.default_rng(6)
    n, s, batch_examples, k = 12, 4, 4, 3
    latent = rng.standard_normal((n, 4, 4, 5)).astype(np.float32)
    sizes_a, sizes_b = {"conv1": (8, 6), "conv2": (6, 7)}, {"layer1": (2, 5), "layer2": (4, 9)}
    acts_a = {name: _activations(rng, n, hw, c, latent) for name, (hw, c) in sizes_a.items()}
    acts_b = {name: _activations(rng, n, hw, c, latent) for name, (hw, c) in sizes_b.items()}
    rows_a = {name: to_examples(a, "positions", s) for name, a in acts_a.items()}
    rows_b = {name: to_examples(a, "positions", s) for name, a in acts_b.items()}
    pairs = depth_matched_pairs(list(acts_a), list(acts_b), depth=2)
    out = batched_network_similarity(rows_a, rows_b, pairs, positions=s * s,
                                     batch_examples=batch_examples, k=k)

    # Reference: resize with the same call, then everything else in float64 numpy.
    def resized(a):
        return np.asarray(jax.image.resize(a, (n, s, s, a.shape[-1]), "bilinear",
                                           antialias=True), np.float64)

    num_batches = n // batch_examples
    ref = np.zeros((num_batches, len(pairs)))
    for j, (la, lb) in enumerate(pairs):
        ra, rb = resized(acts_a[la]), resized(acts_b[lb])
        for i in range(num_batches):
            sl = slice(i * batch_examples, (i + 1) * batch_examples)
            x = ra[sl].reshape(-1, ra.shape[-1])  # (image, position) rows, channels columns
            y = rb[sl].reshape(-1, rb.shape[-1])
            ref[i, j] = _leading_ref(x, y, k)
    assert out["pairs"] == pairs
    assert out["per_pair"].shape == (num_batches, 2)
    np.testing.assert_allclose(out["per_pair"], ref, atol=1e-4)
    # The bases computed once per network give the same scores.
    again = bases_similarity(layer_bases(rows_a, s * s, batch_examples, k, "a"),
                             layer_bases(rows_b, s * s, batch_examples, k, "b"), pairs)
    np.testing.assert_allclose(again["per_pair"], out["per_pair"], atol=1e-6)
    assert ref.min() > 0.2  # the shared latent survives resizing: not a test of noise

    per_batch = ref.mean(axis=1)
    np.testing.assert_allclose(out["per_batch"], per_batch, atol=1e-4)
    assert abs(out["mean"] - per_batch.mean()) <= 1e-4
    se = np.std(per_batch, ddof=1) / math.sqrt(num_batches)
    assert abs(out["se"] - se) <= 1e-4


def test_per_batch_and_se_from_reference_scores():
    rng = np.random.default_rng(7)
    positions, batch_examples, num_batches, k = 4, 10, 5, 2
    rows = num_batches * batch_examples * positions
    x, y = _planted(rng, rows, 6, 4, shared=2, noise=1.0)
    x2, y2 = _planted(rng, rows, 3, 5, shared=1, noise=0.5)
    out = batched_network_similarity({"a1": x, "a2": x2}, {"b1": y, "b2": y2},
                                     [("a1", "b1"), ("a2", "b2")], positions, batch_examples, k)
    r = batch_examples * positions
    ref = np.array([[_leading_ref(a[i * r:(i + 1) * r], b[i * r:(i + 1) * r], k)
                     for a, b in ((x, y), (x2, y2))] for i in range(num_batches)])
    np.testing.assert_allclose(out["per_pair"], ref, atol=TOL)
    np.testing.assert_allclose(out["per_batch"], ref.mean(axis=1), atol=TOL)
    assert abs(out["se"] - ref.mean(axis=1).std(ddof=1) / math.sqrt(num_batches)) <= TOL

    one = batched_network_similarity({"a1": x}, {"b1": y}, [("a1", "b1")], positions,
                                     batch_examples * num_batches, k)
    assert one["per_batch"].shape == (1,) and math.isnan(one["se"])
    assert abs(one["mean"] - _leading_ref(x, y, k)) <= TOL


def test_batched_network_similarity_bad_inputs():
    rng = np.random.default_rng(8)
    x, y = _planted(rng, 120, 4, 3, shared=1, noise=1.0)  # 30 examples x 4 positions
    ok = dict(positions=4, batch_examples=10, k=2)
    with pytest.raises(ValueError, match="not divisible into batches of 7"):
        batched_network_similarity({"a": x}, {"b": y}, [("a", "b")], 4, 7, 2)
    with pytest.raises(ValueError, match="not a multiple of positions=7"):
        batched_network_similarity({"a": x}, {"b": y}, [("a", "b")], 7, 1, 2)
    with pytest.raises(ValueError, match="'c' is not in rows_b"):
        batched_network_similarity({"a": x}, {"b": y}, [("a", "c")], **ok)
    with pytest.raises(ValueError, match="batches x rows differ"):
        batched_network_similarity({"a": x}, {"b": y[:80]}, [("a", "b")], **ok)
    with pytest.raises(ValueError, match="pairs is empty"):
        batched_network_similarity({"a": x}, {"b": y}, [], **ok)
    with pytest.raises(ValueError, match="n_features"):  # 1 example x 4 positions per batch
        batched_network_similarity({"a": x}, {"b": y}, [("a", "b")], 4, 1, 2)
    dead = x.copy()
    dead[80:] = 1.0  # constant in the last batch only
    with pytest.raises(ValueError, match=r"rows_a\['a'\], batch 2: has zero variance"):
        batched_network_similarity({"a": dead}, {"b": y}, [("a", "b")], **ok)
