"""Layer identification across seeds (Kornblith et al. 2019, Table 2 scoring)."""
import importlib.util
import os

import numpy as np
import pytest

from ssl_jax import similarity as sim


def _hand_built() -> np.ndarray:
    """3 networks x 3 layers: every ordered pair identifies every layer (diagonal 0.9, off 0.2)
    except pair (0, 1), layer 2 (most similar: layer 1) and pair (2, 0), layer 0 (a tie)."""
    s = np.full((3, 3, 3, 3), 0.2)
    s[:, :, [0, 1, 2], [0, 1, 2]] = 0.9
    s[0, 1, 2, 1] = 0.95
    s[2, 0, 0, 2] = 0.9
    for a in range(3):
        s[a, a] = np.nan  # self blocks are never read
    return s


def test_hits_and_accuracy_of_a_hand_built_tensor():
    hits = sim.corresponding_layer_hits(_hand_built())
    # ordered pairs row-major: (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    expected = np.ones((6, 3), bool)
    expected[0, 2] = False
    expected[4, 0] = False
    np.testing.assert_array_equal(hits, expected)
    acc, per_layer = sim.corresponding_layer_accuracy(_hand_built())
    assert acc == pytest.approx(16 / 18)
    np.testing.assert_allclose(per_layer, [5 / 6, 1.0, 5 / 6])


def test_real_indices_linear_cka_identifies_layers_and_saturated_cca_identifies_none():
    """Layer i of every network is a random linear map of latent i plus noise: linear CKA finds
    every corresponding layer. With more features than examples every CCA correlation is 1,
    so mean CCA ties everywhere and (ties being misses) identifies nothing."""
    rng = np.random.default_rng(0)
    n, n_layers, m = 24, 3, 3
    latents = [rng.normal(size=(n, 4)) for _ in range(n_layers)]
    acts = [[z @ rng.normal(size=(4, 6)) + 0.1 * rng.normal(size=(n, 6)) for z in latents]
            for _ in range(m)]
    wide = [[np.concatenate([a, rng.normal(size=(n, 30))], 1) for a in net] for net in acts]

    def tensor(fn, nets):
        s = np.full((m, m, n_layers, n_layers), np.nan)
        for a in range(m):
            for b in range(m):
                if a != b:
                    s[a, b] = [[float(fn(x, y)) for y in nets[b]] for x in nets[a]]
        return s

    assert sim.corresponding_layer_accuracy(tensor(sim.linear_cka, acts))[0] == 1.0
    saturated = tensor(lambda x, y: sim.mean_cca(x, y, allow_underdetermined=True), wide)
    np.testing.assert_allclose(saturated[0, 1], 1.0, atol=1e-5)
    assert sim.corresponding_layer_accuracy(np.round(saturated, 4))[0] == 0.0


def test_bad_input_raises_one_line_errors():
    with pytest.raises(ValueError, match=r"must be \[M, M, L, L\], got shape \(2, 2, 3\)"):
        sim.corresponding_layer_hits(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="at least 2 networks and 2 layers"):
        sim.corresponding_layer_hits(np.zeros((1, 1, 3, 3)))
    bad = _hand_built()
    bad[0, 2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/inf entries between different networks"):
        sim.corresponding_layer_hits(bad)


def _sanity_script():
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "similarity_sanity.py")
    spec = importlib.util.spec_from_file_location("similarity_sanity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sanity_script_fills_symmetric_by_transpose_and_asymmetric_in_both_orders():
    script = _sanity_script()
    acts = [[np.full((2, 1), 10.0 * a + i) for i in range(2)] for a in range(3)]
    first = lambda x, y: x[0, 0] - 0.5 * y[0, 0]  # noqa: E731  (asymmetric on purpose)
    asym = script.similarity_tensor(acts, first, symmetric=False, desc="t")
    assert asym[2, 0, 1, 0] == 21.0 - 0.0 and asym[0, 2, 0, 1] == 0.0 - 10.5
    sym = script.similarity_tensor(acts, first, symmetric=True, desc="t")
    assert sym[2, 0, 1, 0] == sym[0, 2, 0, 1] == 0.0 - 10.5  # computed once for (0, 2)
    assert np.isnan(sym[1, 1]).all()
    with pytest.raises(ValueError, match="--seeds must be >= 2"):  # one line at the CLI
        script.parse_args(["--seeds", "1"])
