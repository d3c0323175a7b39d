"""Evaluators vs independent references (sklearn / numpy written here) and 8-device sharding."""
import jax
import numpy as np
import pytest
import scipy.special
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sklearn.linear_model import LogisticRegression

import ssl_jax.evaluation as ev
from ssl_jax.evaluation.few_shot import mean_and_ci95
from ssl_jax.evaluation.linear_probe import c_grid, select_best_C, validation_split


def _clusters(n, dim, classes, sep, seed, offset=1.0):
    """Overlapping Gaussian clusters, non-negative-ish and not centred (like pooled features)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * sep
    y = rng.integers(0, classes, n)
    x = means[y] + rng.normal(size=(n, dim)) + offset
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def probe_data():
    x, y = _clusters(1000, 32, 5, 0.5, seed=0)
    return x[:600], y[:600], x[600:], y[600:]


def _shard(a):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    spec = P("data") if a.ndim == 1 else P("data", None)
    return jax.device_put(a, NamedSharding(mesh, spec))


# ------------------------------------------------------------------------------ linear probe
@pytest.mark.parametrize("C", [0.05, 2.0])
def test_logreg_matches_sklearn(probe_data, C):
    tr_x, tr_y, te_x, te_y = probe_data
    params, info = ev.fit_logistic_regression(tr_x, tr_y, C, tol=1e-6)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(tr_x.astype(np.float64), tr_y)
    w, b = np.asarray(params.w), np.asarray(params.b)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(w, ref.coef_.T, atol=2e-3 * scale)
    # sklearn's multinomial intercept is only defined up to a constant shift across classes.
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=2e-3 * max(1.0, scale))
    ours = 100 * np.mean(np.argmax(te_x @ w + b, axis=1) == te_y)
    assert abs(ours - 100 * ref.score(te_x, te_y)) <= 0.3
    assert info["grad_max"] <= 1e-4


def test_logreg_sample_weight_matches_sklearn(probe_data):
    tr_x, tr_y, _, _ = probe_data
    sw = np.random.default_rng(11).uniform(0.0, 2.0, len(tr_y))
    params, _ = ev.fit_logistic_regression(tr_x, tr_y, 0.3, sample_weight=sw, tol=1e-6)
    ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(tr_x.astype(np.float64), tr_y, sample_weight=sw)
    np.testing.assert_allclose(np.asarray(params.w), ref.coef_.T, atol=2e-3 * np.abs(ref.coef_).max())


def test_linear_probe_grid_matches_sklearn_protocol(probe_data):
    """Same split, same grid: validation scores, chosen C and test accuracy agree with sklearn."""
    tr_x, tr_y, te_x, te_y = probe_data
    out = ev.linear_probe(tr_x, tr_y, te_x, te_y, num_grid=5, calibrate=False)
    assert out["C_grid"] == sorted(out["C_grid"]) and len(out["C_grid"]) == 5
    tr, va = validation_split(len(tr_y))
    # Compare where the problem is well posed (C <= 10); for nearly unregularised C neither
    # solver converges to a unique answer in reasonable time.
    well_posed = [i for i, c in enumerate(out["C_grid"]) if c <= 10]
    ref_scores = []
    for i in well_posed:
        clf = LogisticRegression(C=out["C_grid"][i], tol=1e-8, max_iter=3000)
        ref_scores.append(100 * clf.fit(tr_x[tr].astype(np.float64), tr_y[tr]).score(tr_x[va], tr_y[va]))
    ours = [out["val_scores"][i] for i in well_posed]
    # float32 vs float64 solutions may flip at most one borderline validation example.
    np.testing.assert_allclose(ours, ref_scores, atol=100 / len(va) + 1e-9)
    ref_best = select_best_C([out["C_grid"][i] for i in well_posed], ref_scores)
    assert out["best_C"] == ref_best and max(out["val_scores"]) == max(ours)
    ref = LogisticRegression(C=ref_best, tol=1e-10, max_iter=10_000).fit(tr_x.astype(np.float64), tr_y)
    assert abs(out["top1"] - 100 * ref.score(te_x, te_y)) <= 0.3


def test_mean_per_class_and_fixed_C(probe_data):
    tr_x, tr_y, te_x, te_y = probe_data
    keep = (te_y != 3) | (np.arange(len(te_y)) % 4 == 0)  # make the test set imbalanced
    te_x, te_y = te_x[keep], te_y[keep]
    out = ev.linear_probe(tr_x, tr_y, te_x, te_y, C=0.5, return_logits=True)
    pred = out["test_logits"].argmax(1)
    recalls = [np.mean(pred[te_y == c] == c) for c in range(5)]
    assert out["mean_per_class"] == pytest.approx(100 * np.mean(recalls), abs=1e-9)
    assert out["top1"] == pytest.approx(100 * np.mean(pred == te_y), abs=1e-9)
    assert out["best_C"] == 0.5 and "val_scores" not in out
    probs = scipy.special.softmax(out["test_logits"].astype(np.float64), axis=1)
    assert out["ece"] == pytest.approx(ev.expected_calibration_error(probs, te_y), abs=1e-6)


def test_c_grid_and_tie_break():
    cs = c_grid(45)
    np.testing.assert_allclose(np.sort(1 / cs), np.logspace(-6, 5, 45), rtol=1e-12)
    assert np.all(np.diff(cs) > 0)
    # Ties at the top go to the larger C, whatever the order of the inputs.
    assert select_best_C([0.1, 1.0, 10.0, 100.0], [80.0, 90.0, 90.0, 85.0]) == 10.0
    assert select_best_C([100.0, 10.0, 1.0], [85.0, 90.0, 90.0]) == 10.0
    assert select_best_C([1.0, 2.0], [50.0, 49.0]) == 1.0
    with pytest.raises(ValueError, match="metric"):
        ev.linear_probe(np.zeros((8, 2)), np.zeros(8), np.zeros((8, 2)), np.zeros(8), metric="top5")
    with pytest.raises(ValueError, match="num_classes=2"):
        ev.linear_probe(np.zeros((8, 2)), np.arange(8) % 2 - 1, np.zeros((8, 2)), np.zeros(8), num_classes=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        ev.knn(np.ones((8, 2)), np.arange(8) % 4, np.ones((2, 2)), np.zeros(2), num_classes=3)


def test_validation_split_is_004s_legacy_shuffle():
    indices = list(range(103))
    np.random.seed(0)
    np.random.shuffle(indices)
    tr, va = validation_split(103, 0.2, 0)
    np.testing.assert_array_equal(va, indices[:20])
    np.testing.assert_array_equal(tr, indices[20:])


def test_linear_probe_sharded_equals_unsharded():
    x, y = _clusters(640, 16, 4, 0.6, seed=3)
    args = (x[:480], y[:480], x[480:], y[480:])
    # Few, well-conditioned fits: every L-BFGS iteration is a collective on 8 fake devices.
    kw = dict(c_values=[0.01, 1.0], calibrate=False, return_logits=True)
    plain, sharded = ev.linear_probe(*args, **kw), ev.linear_probe(*map(_shard, args), **kw)
    assert sharded["top1"] == plain["top1"] and sharded["best_C"] == plain["best_C"]
    assert sharded["val_scores"] == plain["val_scores"]
    # Different float32 summation order -> slightly different L-BFGS stopping points.
    np.testing.assert_allclose(sharded["test_logits"], plain["test_logits"], atol=1e-2)


# ------------------------------------------------------------------------------ calibration
def _ece_reference(probs, labels, num_bins):
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, num_bins + 1)
    total = 0.0
    for b in range(num_bins):
        upper_ok = conf <= edges[b + 1] if b == num_bins - 1 else conf < edges[b + 1]
        in_bin = (conf >= edges[b]) & upper_ok
        if in_bin.any():
            total += in_bin.mean() * abs(np.mean(pred[in_bin] == labels[in_bin]) - conf[in_bin].mean())
    return total


@pytest.mark.parametrize("num_bins", [15, 7])
def test_ece_matches_numpy_reference(num_bins):
    rng = np.random.default_rng(num_bins)
    probs = scipy.special.softmax(rng.normal(size=(2000, 10)) * 3, axis=1)
    labels = rng.integers(0, 10, 2000)
    labels[:1000] = probs[:1000].argmax(1)  # mix of right and wrong predictions
    got = ev.expected_calibration_error(probs, labels, num_bins=num_bins)
    assert got == pytest.approx(_ece_reference(probs, labels, num_bins), abs=1e-6)
    assert 0.0 < got < 1.0


def test_ece_edge_cases():
    # Confidence exactly 1.0 falls in the closed last bin; all correct -> perfectly calibrated.
    onehot = np.eye(3)[[0, 1, 2, 0]]
    assert ev.expected_calibration_error(onehot, np.array([0, 1, 2, 0])) == 0.0
    assert ev.expected_calibration_error(onehot, np.array([1, 1, 2, 0])) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="probs"):
        ev.expected_calibration_error(np.ones(4), np.zeros(4))


def _overconfident(n, temperature, seed):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, 6)) * 1.5
    labels = np.array([rng.choice(6, p=p) for p in scipy.special.softmax(true_logits, axis=1)])
    return true_logits * temperature, labels


def _nll(logits, labels):
    return float(np.mean(scipy.special.logsumexp(logits, 1) - logits[np.arange(len(labels)), labels]))


def test_temperature_scaling_recovers_temperature_and_lowers_nll():
    logits, labels = _overconfident(6000, 3.0, seed=1)
    t = ev.temperature_scale(logits, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    assert _nll(logits / t, labels) < _nll(logits, labels) - 0.1
    # The fitted T is the NLL minimiser: nudging it either way does not help.
    assert _nll(logits / t, labels) <= min(_nll(logits / (t * 1.02), labels), _nll(logits / (t / 1.02), labels))
    cv = ev.temperature_scaled_ece(logits, labels, folds=5, seed=0)
    assert cv["scaled_ece"] < 0.5 * cv["ece"]
    assert len(cv["temperatures"]) == 5 and all(abs(tt - 3.0) < 0.5 for tt in cv["temperatures"])


def test_temperature_scaled_ece_folds_match_004():
    logits, labels = _overconfident(503, 2.0, seed=2)
    cv = ev.temperature_scaled_ece(logits, labels, folds=5, seed=0)
    indices = list(range(503))
    np.random.seed(0)
    np.random.shuffle(indices)
    folds = [np.array(indices[i * 100:(i + 1) * 100]) for i in range(5)]  # 3 left over, unused
    expected = []
    for i in range(5):
        rest = np.concatenate(folds[:i] + folds[i + 1:])
        t = ev.temperature_scale(logits[folds[i]], labels[folds[i]])
        expected.append(_ece_reference(scipy.special.softmax(logits[rest] / t, 1), labels[rest], 15))
    assert cv["scaled_ece"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert cv["ece"] == pytest.approx(_ece_reference(scipy.special.softmax(logits, 1), labels, 15), abs=1e-9)


def test_reliability_diagram_png(tmp_path):
    import matplotlib.image

    logits, labels = _overconfident(500, 3.0, seed=4)
    path = ev.reliability_diagram(scipy.special.softmax(logits, 1), labels, str(tmp_path / "rel.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[0] > img.shape[1] > 300 and img[..., :3].std() > 0.05  # a drawn figure


def test_calibration_sharded_equals_unsharded():
    logits, labels = _overconfident(800, 2.0, seed=5)
    probs = scipy.special.softmax(logits, 1).astype(np.float32)
    assert ev.expected_calibration_error(_shard(probs), _shard(labels)) == ev.expected_calibration_error(probs, labels)


# ------------------------------------------------------------------------------ kNN
def _knn_reference(tr_x, tr_y, te_x, k, t, num_classes):
    tr = tr_x / np.linalg.norm(tr_x, axis=1, keepdims=True)
    te = te_x / np.linalg.norm(te_x, axis=1, keepdims=True)
    votes = np.zeros((len(te), num_classes))
    for i, q in enumerate(te):
        sim = tr @ q
        nn = np.argsort(-sim)[:k]
        for j in nn:
            votes[i, tr_y[j]] += np.exp(sim[j] / t)
    return votes


@pytest.mark.parametrize("k,t,batch", [(20, 0.07, 32), (7, 0.5, 100)])
def test_knn_matches_bruteforce(k, t, batch):
    x, y = _clusters(500, 24, 6, 0.4, seed=6, offset=0.0)
    tr_x, tr_y, te_x, te_y = x[:400], y[:400], x[400:], y[400:]
    votes = _knn_reference(tr_x.astype(np.float64), tr_y, te_x.astype(np.float64), k, t, 6)
    out = ev.knn(tr_x, tr_y, te_x, te_y, k=k, temperature=t, batch_size=batch)
    assert out["top1"] == pytest.approx(100 * np.mean(votes.argmax(1) == te_y), abs=1e-9)
    top5 = np.argsort(-votes, 1, kind="stable")[:, :5]  # zero-vote ties: lower class first
    assert out["top5"] == pytest.approx(100 * np.mean((top5 == te_y[:, None]).any(1)), abs=1e-9)
    assert 20 < out["top1"] < 100


def test_knn_sharded_equals_unsharded_and_k_clipped():
    x, y = _clusters(256, 16, 4, 0.5, seed=7, offset=0.0)
    args = (x[:192], y[:192], x[192:], y[192:])
    plain = ev.knn(*args, k=200, batch_size=24)  # k > N_train: clipped to all 192
    assert plain == ev.knn(*map(_shard, args), k=200, batch_size=24)
    ref = _knn_reference(x[:192].astype(np.float64), y[:192], x[192:].astype(np.float64), 192, 0.07, 4)
    assert plain["top1"] == pytest.approx(100 * np.mean(ref.argmax(1) == y[192:]), abs=1e-9)


# ------------------------------------------------------------------------------ few-shot
def test_episode_sampler_properties():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 8, 900)
    labels[:3] = 8  # class 8 has 3 examples: never eligible for shots + queries = 10
    ep = ev.sample_episodes(labels, ways=4, shots=3, queries=7, episodes=50, seed=1)
    assert ep.support.shape == (50, 4, 3) and ep.query.shape == (50, 4, 7)
    for e in range(50):
        assert len(set(ep.classes[e])) == 4 and 8 not in ep.classes[e]
        s, q = ep.support[e].ravel(), ep.query[e].ravel()
        assert len(set(s)) == s.size and len(set(q)) == q.size and not set(s) & set(q)
        np.testing.assert_array_equal(labels[ep.support[e]], np.repeat(ep.classes[e][:, None], 3, 1))
        np.testing.assert_array_equal(labels[ep.query[e]], np.repeat(ep.classes[e][:, None], 7, 1))
    again = ev.sample_episodes(labels, ways=4, shots=3, queries=7, episodes=50, seed=1)
    other = ev.sample_episodes(labels, ways=4, shots=3, queries=7, episodes=50, seed=2)
    for a, b, c in zip(ep, again, other):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ep.support, other.support)
    with pytest.raises(ValueError, match="ways=9"):
        ev.sample_episodes(labels, ways=9, shots=3, queries=7)


def test_interval_formula():
    acc = np.array([60.0, 80.0, 100.0, 80.0])
    out = mean_and_ci95(acc)
    assert out["mean"] == 80.0
    assert out["ci95"] == pytest.approx(1.96 * np.sqrt(200.0) / 2.0)  # std(ddof=0) = sqrt(200)


def test_few_shot_matches_numpy_protonet_and_sharding():
    x, y = _clusters(640, 12, 10, 0.5, seed=9)
    out = ev.few_shot(x, y, ways=5, shots=5, queries=15, episodes=40, seed=0, chunk=16)
    ep = ev.sample_episodes(y, 5, 5, 15, 40, seed=0)
    accs = []
    for s, q in zip(ep.support, ep.query):
        protos = x[s].astype(np.float64).mean(1)
        d = ((x[q].astype(np.float64)[:, :, None, :] - protos) ** 2).sum(-1)
        accs.append(100 * np.mean(d.argmin(-1) == np.arange(5)[:, None]))
    assert out["mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert out["ci95"] == pytest.approx(1.96 * np.std(accs) / np.sqrt(40), abs=1e-6)
    assert 20 < out["mean"] < 100
    assert ev.few_shot(_shard(x), _shard(y), episodes=40, chunk=16) == out


# ------------------------------------------------------------------------------ SGD linear eval
def test_linear_probe_sgd_matches_torch_sgd_and_sharding():
    import math

    import torch

    x, y = _clusters(320, 8, 3, 0.8, seed=10)
    tr_x, tr_y, te_x, te_y = x[:256], y[:256], x[256:], y[256:]
    kw = dict(epochs=3, batch_size=64, learning_rate=0.05, momentum=0.9, weight_decay=1e-2, seed=4)
    out = ev.linear_probe_sgd(tr_x, tr_y, te_x, te_y, **kw)
    # Independent reference: torch SGD (coupled weight decay on w only) on the same batches.
    w = torch.zeros(8, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w], "weight_decay": 1e-2}, {"params": [b], "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9)
    rng, total, t = np.random.default_rng(4), 3 * 4, 0
    for _ in range(3):
        perm, losses = rng.permutation(256), []
        for i in range(4):
            idx = perm[i * 64:(i + 1) * 64]
            for group in opt.param_groups:
                group["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * t / total))
            loss = torch.nn.functional.cross_entropy(
                torch.from_numpy(tr_x[idx].astype(np.float64)) @ w + b, torch.from_numpy(tr_y[idx]))
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
            t += 1
    pred = (te_x.astype(np.float64) @ w.detach().numpy() + b.detach().numpy()).argmax(1)
    assert out["top1"] == pytest.approx(100 * np.mean(pred == te_y), abs=1e-9)
    # Last-epoch losses depend on every earlier update: a trajectory check, not just accuracy.
    assert out["train_loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    assert out["train_loss"] < 0.9 * math.log(3)
    assert ev.linear_probe_sgd(_shard(tr_x), tr_y, _shard(te_x), te_y, **kw)["top1"] == out["top1"]


def test_linear_probe_official_val_split(probe_data):
    """With val_x/val_y given, C is chosen on exactly that split and the refit uses train+val."""
    tr_x, tr_y, te_x, te_y = probe_data
    out = ev.linear_probe(tr_x[:400], tr_y[:400], te_x, te_y, val_x=tr_x[400:], val_y=tr_y[400:],
                          c_values=[1e-4, 0.1], calibrate=False, return_logits=True)
    for c, score in zip([1e-4, 0.1], out["val_scores"]):
        clf = LogisticRegression(C=c, tol=1e-8, max_iter=3000).fit(tr_x[:400].astype(np.float64), tr_y[:400])
        assert abs(score - 100 * clf.score(tr_x[400:], tr_y[400:])) <= 100 / 200 + 1e-9
    assert out["best_C"] == 0.1
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(tr_x.astype(np.float64), tr_y)
    np.testing.assert_allclose(out["test_logits"] - out["test_logits"].mean(1, keepdims=True),
                               ref.decision_function(te_x) - ref.decision_function(te_x).mean(1, keepdims=True),
                               atol=2e-3)
