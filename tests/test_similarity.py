"""CKA, CCA family, Procrustes and mutual kNN against float64 numpy/scipy/sklearn references
written here (independent formulas: explicit H matrices, Song et al.'s HSIC_1 formula,
covariance whitening for CCA), plus invariance properties, golden values and bad input."""
import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
from sklearn.neighbors import NearestNeighbors

from ssl_jax import similarity as sim

TOL = 1e-5


# ----------------------------------------------------------------------------- references
def _hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h)


def _hsic_unbiased(k, l):
    """Song et al. (2012) eq. 5, written from the paper (not via U-centring)."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def _cka_ref(k, l, debiased=False):
    h = _hsic_unbiased if debiased else _hsic_biased
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def _rbf_ref(x, t):
    d = scipy.spatial.distance.cdist(x, x, "sqeuclidean")
    return np.exp(-d / (2 * t**2 * np.median(d)))


def _inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w**-0.5) @ v.T


def _cca_ref(x, y):
    """Canonical correlations and x-side canonical weights via covariance whitening."""
    x, y = x - x.mean(0), y - y.mean(0)
    wx, wy = _inv_sqrt(x.T @ x), _inv_sqrt(y.T @ y)
    u, rho, _ = np.linalg.svd(wx @ (x.T @ y) @ wy)
    return rho[: min(x.shape[1], y.shape[1])], wx @ u


def _svcca_ref(x, y, keep):
    def reduce(a):
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, keep) + 1)  # fewest leading dims reaching `keep`
        return u[:, :k] * s[:k]
    return np.mean(_cca_ref(reduce(x), reduce(y))[0])


def _pwcca_ref(x, y):
    if y.shape[1] < x.shape[1]:
        x, y = y, x
    rho, a = _cca_ref(x, y)
    xc = x - x.mean(0)
    h = xc @ a[:, : len(rho)]
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(1)
    return np.sum(alpha * rho) / np.sum(alpha)


def _data(n, p1, p2, seed, coupling=1.0):
    """x [n, p1] Gaussian; y [n, p2] a noisy linear map of x plus an offset (centring must matter)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p1))
    y = coupling * x @ rng.standard_normal((p1, p2)) + rng.standard_normal((n, p2)) + 3.0
    return x, y


def _golden():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


# ----------------------------------------------------------------------------- CKA
# (80, 6, 12): N >> p, feature space. (24, 150, 60): p >> N, Gram space.
CKA_SHAPES = [(80, 6, 12), (24, 150, 60)]


@pytest.mark.parametrize("n,p1,p2", CKA_SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_reference(n, p1, p2, debiased):
    x, y = _data(n, p1, p2, seed=n + p1)
    ref = _cka_ref(x @ x.T, y @ y.T, debiased)
    assert abs(float(sim.linear_cka(x, y, debiased=debiased)) - ref) <= TOL


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_reference(debiased):
    x, y = _data(40, 30, 8, seed=3)
    for t in (0.5, 1.0):
        ref = _cka_ref(_rbf_ref(x, t), _rbf_ref(y, t), debiased)
        assert abs(float(sim.rbf_cka(x, y, t, debiased=debiased)) - ref) <= TOL


def test_golden_values_of_kornblith_demo():
    x, y = _golden()
    assert abs(float(sim.linear_cka(x, y)) - 0.55761) < 1e-5
    assert abs(float(sim.rbf_cka(x, y, 0.5)) - 0.65483) < 1e-5
    assert abs(float(sim.linear_cka(x, y, debiased=True)) - 0.51346) < 1e-5
    assert abs(float(np.mean(np.asarray(sim.cca(x, y)) ** 2)) - 0.5454) < 1e-4


def test_cka_invariances():
    x, y = _data(*CKA_SHAPES[0], seed=86)  # shapes shared with other tests: fewer compiles
    base = float(sim.linear_cka(x, y))
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    assert abs(float(sim.linear_cka(x @ q, y)) - base) <= TOL  # orthogonal transform
    assert abs(float(sim.linear_cka(x * 37.0, y * 1e-3)) - base) <= TOL  # isotropic scale
    assert abs(float(sim.linear_cka(y, x)) - base) <= TOL  # symmetry
    # Anisotropic scaling changes CKA (CKA is not invariant to invertible linear maps).
    assert abs(float(sim.linear_cka(x * np.geomspace(1e-2, 1e2, 6), y)) - base) > 1e-2
    x, y = _data(40, 30, 8, seed=3)
    rbf = float(sim.rbf_cka(x, y))
    q = np.linalg.qr(rng.standard_normal((30, 30)))[0]
    assert abs(float(sim.rbf_cka(x @ q * 5.0, y)) - rbf) <= TOL
    assert abs(float(sim.rbf_cka(x, x[:, :8])) - float(sim.rbf_cka(x, x[:, :8] * 1e3))) <= TOL


def test_debiasing_removes_dimension_bias():
    # SIMILARITY.md: independent Gaussians, N=256: biased ~0.20 at D=64 and ~0.89 at D=2048
    # (feature- and Gram-space paths respectively); debiased ~0 for both.
    rng = np.random.default_rng(0)
    for d, biased in ((64, 0.20), (2048, 0.89)):
        x, y = rng.standard_normal((2, 256, d))
        assert abs(float(sim.linear_cka(x, y)) - biased) < 0.02
        assert abs(float(sim.linear_cka(x, y, debiased=True))) < 0.02


def test_float64_under_x64():
    x, y = _data(30, 5, 7, seed=11)
    with jax.enable_x64(True):
        value = sim.linear_cka(x, y, debiased=True)
        assert value.dtype == np.float64
        assert abs(float(value) - _cka_ref(x @ x.T, y @ y.T, True)) < 1e-12


# ----------------------------------------------------------------------------- CCA family
@pytest.mark.parametrize("n,p1,p2", [(60, 5, 9), (120, 12, 4)])
def test_cca_family_matches_reference(n, p1, p2):
    x, y = _data(n, p1, p2, seed=p1 * p2, coupling=0.5)
    rho_ref, _ = _cca_ref(x, y)
    np.testing.assert_allclose(np.asarray(sim.cca(x, y)), rho_ref, atol=TOL)
    assert abs(float(sim.mean_cca(x, y)) - rho_ref.mean()) <= TOL
    assert abs(float(sim.pwcca(x, y)) - _pwcca_ref(x, y)) <= TOL
    for keep in (0.99, 0.6):
        assert abs(float(sim.svcca(x, y, keep)) - _svcca_ref(x, y, keep)) <= TOL


def test_cca_invariant_to_invertible_linear_maps():
    x, y = _data(80, 6, 6, seed=5, coupling=0.7)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 6, 6)) + 3 * np.eye(6)
    expected = np.asarray(sim.cca(x, y))
    np.testing.assert_allclose(np.asarray(sim.cca(x @ a + 5.0, y @ b)), expected, atol=1e-5)
    # PWCCA weights depend on the neuron basis of the smaller layer, so only y's basis is free.
    assert abs(float(sim.pwcca(x, y @ b)) - float(sim.pwcca(x, y))) <= TOL


def test_cca_rank_deficient_layer_ignores_duplicated_neurons():
    x, y = _data(80, 4, 4, seed=9, coupling=0.8)
    dup = np.concatenate([x, x[:, :2]], axis=1)  # two duplicated neurons: same representation
    rho = np.asarray(sim.cca(dup, y))
    np.testing.assert_allclose(rho, np.asarray(sim.cca(x, y)), atol=TOL)
    assert abs(float(sim.mean_cca(dup, y)) - float(sim.mean_cca(x, y))) <= TOL


def test_cca_refuses_features_ge_examples_unless_opted_in():
    x, y = _data(10, 12, 3, seed=2)
    for fn in (sim.cca, sim.mean_cca, sim.svcca, sim.pwcca):
        with pytest.raises(ValueError, match="n_features"):
            fn(x, y)
    # Kornblith Theorem 1: with p >= n every linearly invariant index is trivial.
    assert abs(float(sim.mean_cca(x, np.concatenate([y, x[:, :9]], 1),
                                  allow_underdetermined=True)) - 1.0) < 1e-4


# ----------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("n,p1,p2", [(50, 8, 8), (12, 40, 25)])
def test_procrustes_matches_scipy(n, p1, p2):
    x, y = _data(n, p1, p2, seed=n)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    p = max(p1, p2)  # scipy needs equal widths: zero-pad, which leaves ||X^T Y||_* unchanged
    pad = lambda a: np.pad(a, ((0, 0), (0, p - a.shape[1])))
    _, nuclear = scipy.linalg.orthogonal_procrustes(pad(xc), pad(yc))
    assert abs(float(sim.procrustes(x, y)) - nuclear) <= TOL
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((p1, p1)))[0]
    assert abs(float(sim.procrustes(x, 4.0 * x @ q + 1.0)) - 1.0) <= TOL


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_mutual_knn_matches_sklearn(metric):
    x, y = _data(70, 6, 5, seed=4, coupling=0.5)
    k = 5

    def neighbours(a):
        nn_ = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(a)
        idx = nn_.kneighbors(a, return_distance=False)
        return [set(row[row != i][:k]) for i, row in enumerate(idx)]

    ref = np.mean([len(a & b) / k for a, b in zip(neighbours(x), neighbours(y))])
    assert abs(float(sim.mutual_knn(x, y, k=k, metric=metric)) - ref) <= TOL
    assert float(sim.mutual_knn(x, x, k=k, metric=metric)) == 1.0


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    x, y = _data(20, 4, 3, seed=1)
    with pytest.raises(ValueError, match="same examples"):
        sim.linear_cka(x, y[:-1])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        sim.linear_cka(bad, y)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        sim.rbf_cka(bad, y)
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        sim.cca(x, np.where(y > 1, np.inf, y))
    with pytest.raises(ValueError, match="at least 4"):
        sim.linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="empty layer"):
        sim.linear_cka(x, np.zeros((20, 0)))
    with pytest.raises(ValueError, match="constant"):
        sim.linear_cka(np.full((20, 4), 0.1), y)
    with pytest.raises(ValueError, match=r"\[n_examples, n_features\]"):
        sim.linear_cka(x.reshape(20, 2, 2), y)
    with pytest.raises(ValueError, match="threshold"):
        sim.rbf_cka(x, y, threshold=0.0)
    with pytest.raises(ValueError, match="keep"):
        sim.svcca(x, y, keep=1.5)
    with pytest.raises(ValueError, match="metric"):
        sim.mutual_knn(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="k must be"):
        sim.mutual_knn(x, y, k=20)


def test_measures_work_inside_a_user_jit():
    # Value checks are skipped on tracers; the numbers must be the same as eager calls.
    x, y = _data(80, 6, 12, seed=86)
    f = jax.jit(lambda a, b: (sim.linear_cka(a, b, debiased=True), sim.mean_cca(a, b)))
    cka, mcca = f(x.astype(np.float32), y.astype(np.float32))
    assert abs(float(cka) - float(sim.linear_cka(x, y, debiased=True))) <= 1e-6
    assert abs(float(mcca) - float(sim.mean_cca(x, y))) <= 1e-6


def test_sharded_inputs_give_single_device_results():
    # Examples sharded over the 8 fake devices (as a trainer's global batch would be).
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = lambda a: jax.device_put(a.astype(np.float32), NamedSharding(mesh, P("data")))
    for n, p1, p2 in CKA_SHAPES[:1] + [(24, 150, 60)]:
        x, y = _data(n, p1, p2, seed=n + p1)
        xs, ys = shard(x), shard(y)
        assert len(xs.sharding.device_set) == 8
        for debiased in (False, True):
            assert abs(float(sim.linear_cka(xs, ys, debiased=debiased))
                       - float(sim.linear_cka(x, y, debiased=debiased))) <= 1e-6
    x, y = _data(40, 30, 8, seed=3)
    assert abs(float(sim.rbf_cka(shard(x), shard(y))) - float(sim.rbf_cka(x, y))) <= 1e-6


def test_centring_operators_match_hsic_definitions():
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((2, 9, 3))
    k, l = a @ a.T, np.exp(-scipy.spatial.distance.cdist(b, b, "sqeuclidean"))
    n = 9
    uk, ul = np.asarray(sim.u_centre(k)), np.asarray(sim.u_centre(l))
    assert abs(np.sum(uk * ul) / (n * (n - 3)) - _hsic_unbiased(k, l)) <= 1e-5
    assert np.allclose(np.diag(uk), 0) and np.allclose(uk, uk.T, atol=1e-6)
    h = np.eye(n) - 1.0 / n
    np.testing.assert_allclose(np.asarray(sim.double_centre(k)), h @ k @ h, atol=1e-5)
    # SVCCA keeping every direction is mean CCA.
    x, y = _data(60, 5, 9, seed=45, coupling=0.5)
    assert abs(float(sim.svcca(x, y, keep=1.0)) - float(sim.mean_cca(x, y))) <= 1e-6
