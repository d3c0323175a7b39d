"""RBD saliency (Zhu et al. 2014) and the saliency metrics, against hand values and numpy/sklearn."""
import numpy as np
import pytest
from sklearn.metrics import fbeta_score

from ssl_jax.data import pipeline, saliency


def _grid_labels(rows: int, cols: int, block: int) -> np.ndarray:
    """A hand-built superpixel grid: rows x cols square superpixels of block x block pixels."""
    return np.kron(np.arange(rows * cols).reshape(rows, cols), np.ones((block, block), int))


def test_rbd_finds_an_off_centre_object():
    rng = np.random.default_rng(0)
    h = w = 48
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - 30) ** 2 + (xx - 18) ** 2 < 9 ** 2
    image = np.full((h, w, 3), (90, 110, 100), np.float64) + rng.normal(0, 4, (h, w, 3))
    image[truth] = (220, 40, 40)
    image = np.clip(image, 0, 255).astype(np.uint8)
    s = saliency.rbd(image)
    assert s.shape == (h, w) and s.dtype == np.float32 and 0 <= s.min() and s.max() <= 1
    assert saliency.f_beta(s[None], truth[None])[0] > 0.9
    assert saliency.mae(s[None], truth[None])[0] < 0.1
    # The centre prior, which ignores the pixels, does worse on this off-centre object.
    prior = saliency.centre_prior(h, w)[None]
    assert saliency.f_beta(prior, truth[None])[0] < 0.6


def test_grid_adjacency_boundary_and_geodesic_match_hand_values():
    labels = _grid_labels(3, 3, 4)  # ids 0..8, 4 = the centre
    adj = saliency.adjacency(labels)
    expected = np.zeros((9, 9), bool)
    for i in range(9):
        r, c = divmod(i, 3)
        for rr, cc in ((r + 1, c), (r, c + 1)):  # 4-neighbours only: corners touch diagonally
            if rr < 3 and cc < 3:
                expected[i, rr * 3 + cc] = expected[rr * 3 + cc, i] = True
    np.testing.assert_array_equal(adj, expected)
    on_boundary = saliency.boundary_ids(labels)
    np.testing.assert_array_equal(on_boundary, np.arange(9) != 4)

    # Geodesic distances against a Floyd-Warshall written here (colours: a 1-d L ramp).
    lab = np.arange(9, dtype=np.float64)[:, None] * np.array([[7.0, 0, 0]])
    dist = np.abs(lab[:, None, 0] - lab[None, :, 0])
    links = adj | (on_boundary[:, None] & on_boundary[None])
    ref = np.where(links, dist, np.inf)
    np.fill_diagonal(ref, 0)
    for k in range(9):
        ref = np.minimum(ref, ref[:, k:k + 1] + ref[k:k + 1])
    np.testing.assert_allclose(saliency.geodesic_distances(dist, adj, on_boundary), ref)


def test_edge_clip_and_clipped_geodesic_match_hand_values():
    # A 1 x 3 strip, L = 0, 5, 20: nearest colour within two hops 5, 5, 15 -> clip 25 / 3.
    labels = _grid_labels(1, 3, 2)
    lab = np.array([[0.0, 0, 0], [5, 0, 0], [20, 0, 0]])
    dist = np.abs(lab[:, None, 0] - lab[None, :, 0])
    adj = saliency.adjacency(labels)
    clip = saliency.edge_clip(dist, adj)
    np.testing.assert_allclose(clip, 25 / 3)
    geo = saliency.geodesic_distances(dist, adj, saliency.boundary_ids(labels), clip)
    # Edges 0-1: 0, 1-2: 15 - 25/3, 0-2 (border link): 20 - 25/3; 0 -> 2 goes via 1.
    np.testing.assert_allclose(geo[0], [0, 0, 15 - 25 / 3])
    np.testing.assert_allclose(geo[1, 2], 15 - 25 / 3)


def test_boundary_connectivity_on_a_grid_matches_hand_values():
    # 8 identical border superpixels around a centre 10 Lab units away (= sigma_clr):
    # bg: Area = 8 + e^-0.5, Len = 8; centre: Area = 1 + 8 e^-0.5, Len = 8 e^-0.5.
    labels = _grid_labels(3, 3, 4)
    lab = np.zeros((9, 3))
    lab[4, 0] = 10.0
    dist = np.sqrt(((lab[:, None] - lab[None]) ** 2).sum(-1))
    adj, on_boundary = saliency.adjacency(labels), saliency.boundary_ids(labels)
    geo = saliency.geodesic_distances(dist, adj, on_boundary)
    bdcon = saliency.boundary_connectivity(geo, on_boundary, sigma_clr=10.0)
    e = np.exp(-0.5)
    expected = np.full(9, 8 / np.sqrt(8 + e))
    expected[4] = 8 * e / np.sqrt(1 + 8 * e)
    np.testing.assert_allclose(bdcon, expected, rtol=1e-12)
    np.testing.assert_allclose(saliency.background_probability(bdcon),
                               1 - np.exp(-expected ** 2 / 2), rtol=1e-12)


def test_weighted_contrast_matches_a_direct_sum():
    rng = np.random.default_rng(1)
    n = 6
    dist = rng.uniform(0, 30, (n, n))
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0)
    pos, w_bg = rng.uniform(0, 1, (n, 2)), rng.uniform(0, 1, n)
    ref = [sum(dist[p, i] * np.exp(-np.sum((pos[p] - pos[i]) ** 2) / (2 * 0.25 ** 2)) * w_bg[i]
               for i in range(n)) for p in range(n)]
    np.testing.assert_allclose(saliency.weighted_contrast(dist, pos, w_bg), ref, rtol=1e-12)


def test_least_squares_matches_a_direct_numpy_solve():
    rng = np.random.default_rng(2)
    n = 12
    w_bg, w_fg = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    adj = np.triu(rng.uniform(size=(n, n)) < 0.3, 1)
    smooth = np.where(adj, rng.uniform(0.1, 1.1, (n, n)), 0.0)
    smooth = smooth + smooth.T
    # Residual rows of the energy: sqrt(w_bg) s_i, sqrt(w_fg) (s_i - 1), sqrt(w_ij)(s_i - s_j).
    rows, target = [], []
    for i in range(n):
        rows.append(np.sqrt(w_bg[i]) * np.eye(n)[i]); target.append(0.0)
        rows.append(np.sqrt(w_fg[i]) * np.eye(n)[i]); target.append(np.sqrt(w_fg[i]))
    for i, j in zip(*np.nonzero(np.triu(smooth, 1))):
        rows.append(np.sqrt(smooth[i, j]) * (np.eye(n)[i] - np.eye(n)[j])); target.append(0.0)
    ref = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)[0]
    s = saliency.optimise_saliency(w_bg, w_fg, smooth)
    np.testing.assert_allclose(s, ref, rtol=1e-9, atol=1e-12)
    assert s.min() >= 0 and s.max() <= 1


def test_f_beta_and_mae_hand_values_and_sklearn():
    s = np.array([[[1.0, 1.0], [0.0, 0.0]]])
    g = np.array([[[1, 0], [0, 0]]])
    # threshold 2 x 0.5 = 1: both ones predicted, P = 1/2, R = 1.
    np.testing.assert_allclose(saliency.f_beta(s, g), [1.3 * 0.5 / (0.3 * 0.5 + 1)])
    np.testing.assert_allclose(saliency.mae(s, g), [0.25])
    # Threshold 2 x 0.3 = 0.6 above every value: nothing predicted, F = 0.
    np.testing.assert_allclose(saliency.f_beta(np.array([[[0.5, 0.5], [0.2, 0.0]]]), g), [0.0])
    # An all-zero map has threshold 0, so (>=) predicts every pixel: P = 1/4, R = 1.
    np.testing.assert_allclose(saliency.f_beta(np.zeros((1, 2, 2)), g),
                               [1.3 * 0.25 / (0.3 * 0.25 + 1)])

    rng = np.random.default_rng(3)
    sal, truth = rng.uniform(size=(5, 8, 8)) ** 2, rng.uniform(size=(5, 8, 8)) < 0.3
    ref = [fbeta_score(truth[i].ravel(), sal[i].ravel() >= min(2 * sal[i].mean(), 1),
                       beta=np.sqrt(0.3)) for i in range(5)]
    np.testing.assert_allclose(saliency.f_beta(sal, truth), ref, rtol=1e-12)
    np.testing.assert_allclose(saliency.mae(sal, truth), np.abs(sal - truth).mean((1, 2)))


def test_centre_prior_is_a_centred_gaussian():
    p = saliency.centre_prior(8, 8, sigma_fraction=0.25)
    # Pixel centres at +-0.5 px of the middle; sigma = 2 px.
    np.testing.assert_allclose(p[3, 3], np.exp(-(0.25 ** 2 + 0.25 ** 2) / 2))
    np.testing.assert_allclose(p[3, 7], np.exp(-(0.25 ** 2 + 1.75 ** 2) / 2))
    np.testing.assert_allclose(p, p[::-1, ::-1])


def test_rbd_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        saliency.rbd(np.zeros((8, 8)))


def test_split_masks_are_keyed_by_example_index_and_cached(tiny_data_dir, tmp_path):
    builder = pipeline.load_builder("shapes_textures/tiny", tiny_data_dir)
    path = str(tmp_path / "masks.npy")
    masks = saliency.compute_split_masks(builder, "test", path, progress=False)
    assert masks.shape == (512, 32, 32) and masks.dtype == np.uint8
    offsets, _ = pipeline.split_offsets(builder, "test")
    import tensorflow_datasets as tfds
    ds = builder.as_dataset(split="test", read_config=tfds.ReadConfig(add_tfds_id=True),
                            shuffle_files=True)
    for ex in ds.take(3).as_numpy_iterator():
        index = int(pipeline.example_index(ex["tfds_id"], offsets))
        np.testing.assert_array_equal(
            masks[index], np.round(saliency.rbd(ex["image"]) * 255).astype(np.uint8))
    # A second call reads the file (a changed file shows it is not recomputed).
    np.save(path, masks[:2])
    assert saliency.compute_split_masks(builder, "test", path).shape == (2, 32, 32)
