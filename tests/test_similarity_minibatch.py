"""Minibatch all-pairs CKA against a numpy ratio-of-sums reference (single device and sharded
over the 8 fake devices), and exact streaming CKA against full-data CKA."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from ssl_jax import similarity as sim


def _hsic1(a, b):
    """Unbiased HSIC_1 of linear kernels (Song et al. 2012, eq. 5) in float64."""
    k, l = a @ a.T, b @ b.T
    n = k.shape[0]
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def _minibatch_ref(batches):
    l1, l2 = len(batches[0][0]), len(batches[0][1])
    cross, sx, sy = np.zeros((l1, l2)), np.zeros(l1), np.zeros(l2)
    for xs, ys in batches:
        for i, a in enumerate(xs):
            sx[i] += _hsic1(a, a)
            for j, b in enumerate(ys):
                cross[i, j] += _hsic1(a, b)
        for j, b in enumerate(ys):
            sy[j] += _hsic1(b, b)
    return cross / np.sqrt(np.outer(sx, sy))


def _batches(n_batches=3, b=16, widths_x=(5, 12, 7), widths_y=(9, 4), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        z = rng.standard_normal((b, 6))  # shared latent so layers are related
        xs = [z @ rng.standard_normal((6, w)) + rng.standard_normal((b, w)) for w in widths_x]
        ys = [np.tanh(z @ rng.standard_normal((6, w))) + 0.5 * rng.standard_normal((b, w)) + 2.0
              for w in widths_y]
        out.append((xs, ys))
    return out


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def test_minibatch_cka_equals_ratio_of_sums_reference(mesh):
    batches = _batches()
    ref = _minibatch_ref(batches)
    single = sim.minibatch_cka(batches)
    np.testing.assert_allclose(single, ref, atol=1e-5)
    # Batch axis sharded over 8 devices: same numbers up to summation order.
    sharded = sim.minibatch_cka(batches, mesh=mesh)
    np.testing.assert_allclose(sharded, single, atol=1e-6)
    # Not the (inflating) mean of per-batch CKAs.
    per_batch = np.mean([_minibatch_ref([bt]) for bt in batches], axis=0)
    assert np.max(np.abs(per_batch - ref)) > 1e-3


def test_minibatch_cka_within_one_model_and_dict_layers():
    batches = _batches(n_batches=2, widths_y=(3,), seed=1)
    xs_only = [({f"l{i}": a for i, a in enumerate(xs)}, None) for xs, _ in batches]
    within = sim.minibatch_cka(xs_only)
    ref = _minibatch_ref([(xs, xs) for xs, _ in batches])
    np.testing.assert_allclose(within, ref, atol=1e-5)
    np.testing.assert_allclose(np.diag(within), 1.0, atol=1e-6)
    np.testing.assert_allclose(within, within.T, atol=1e-6)


def test_minibatch_cka_bad_input(mesh):
    (xs, ys), = _batches(n_batches=1)
    state = sim.minibatch_cka_init(3, 2)
    with pytest.raises(ValueError, match="at least 4"):
        sim.minibatch_cka_update(state, [a[:3] for a in xs], [b[:3] for b in ys])
    with pytest.raises(ValueError, match="same examples"):
        sim.minibatch_cka_update(state, xs, [b[:8] for b in ys])
    with pytest.raises(ValueError, match="layer pairs"):
        sim.minibatch_cka_update(state, xs[:2], ys)
    with pytest.raises(ValueError, match="empty layer"):
        sim.minibatch_cka_update(state, xs[:2] + [np.zeros((16, 0))], ys)
    with pytest.raises(ValueError, match="not divisible"):
        sim.minibatch_cka_update(state, [a[:12] for a in xs], [b[:12] for b in ys], mesh=mesh)
    with pytest.raises(ValueError, match="no minibatches"):
        sim.minibatch_cka_result(state)
    bad = [a.copy() for a in xs]
    bad[1][0, 0] = np.nan
    state = sim.minibatch_cka_update(state, bad, ys)
    with pytest.raises(ValueError, match=r"layers \[1\] of x had NaN or inf"):
        sim.minibatch_cka_result(state)
    state = sim.minibatch_cka_update(sim.minibatch_cka_init(3, 2), xs, [ys[0], np.ones((16, 4))])
    with pytest.raises(ValueError, match=r"layers \[1\] of y are constant"):
        sim.minibatch_cka_result(state)


# ----------------------------------------------------------------------------- streaming
def _stream_data(n=90, p1=6, p2=11, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p1)) * np.linspace(0.5, 3, p1) + 40.0  # large offset vs spread
    y = x @ rng.standard_normal((p1, p2)) + 2 * rng.standard_normal((n, p2)) - 7.0
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_cka_equals_full_data_cka(debiased):
    x, y = _stream_data()
    cuts = [0, 44, 45, 90]  # uneven chunks, including a single example
    chunks = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    full = float(sim.linear_cka(x, y, debiased=debiased))
    # float64 reference: Gram-space HSIC with explicit centring
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    n = len(xd)
    if debiased:
        ref = _hsic1(xd - xd.mean(0), yd - yd.mean(0)) / np.sqrt(
            _hsic1(xd - xd.mean(0), xd - xd.mean(0)) * _hsic1(yd - yd.mean(0), yd - yd.mean(0)))
    else:
        h = np.eye(n) - 1.0 / n
        k, l = h @ xd @ xd.T @ h, h @ yd @ yd.T @ h
        ref = np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))
    assert abs(sim.streaming_linear_cka(chunks, debiased=debiased) - ref) <= 1e-5
    assert abs(full - ref) <= 1e-5
    # order of chunks does not matter
    assert abs(sim.streaming_linear_cka(chunks[::-1], debiased=debiased) - ref) <= 1e-5


def test_streaming_cka_wide_features():
    x, y = _stream_data(n=20, p1=30, p2=25, seed=3)  # p > n: still exact
    chunks = [(x[:7], y[:7]), (x[7:], y[7:])]
    for debiased in (False, True):
        assert abs(sim.streaming_linear_cka(chunks, debiased)
                   - float(sim.linear_cka(x, y, debiased=debiased))) <= 1e-5


def test_streaming_cka_bad_input():
    x, y = _stream_data()
    state = sim.streaming_cka_init(x[:10], y[:10])
    with pytest.raises(ValueError, match="chunk widths"):
        sim.streaming_cka_update(state, x[:10, :3], y[:10])
    with pytest.raises(ValueError, match="same examples"):
        sim.streaming_cka_update(state, x[:10], y[:9])
    small = sim.streaming_cka_update(state, x[:3], y[:3])
    with pytest.raises(ValueError, match="at least 4"):
        sim.streaming_cka_result(small, debiased=True)
    bad = x[:10].copy()
    bad[2, 2] = np.inf
    state = sim.streaming_cka_update(sim.streaming_cka_update(state, bad, y[:10]), x, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        sim.streaming_cka_result(state)
    const = np.full_like(x, 3.0)
    with pytest.raises(ValueError, match="x has zero variance"):
        sim.streaming_linear_cka([(const, y)])
    with pytest.raises(ValueError, match="empty"):
        sim.streaming_linear_cka([])
