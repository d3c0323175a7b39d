"""Error consistency between networks in ssl_jax.evaluation.behaviour: cue-conflict per-image
correctness, the kappa / observed / expected matrices and their group means against numpy
references, and the report block."""
import numpy as np

from ssl_jax.data.builtin import SHAPE_NAMES
from ssl_jax.evaluation import behaviour

GROUPS = {"sup-1": "supervised", "sup-2": "supervised", "simclr": "self-supervised",
          "byol": "self-supervised"}


def _kappa(a, b):
    """Cohen's kappa written out: (c_obs - c_exp) / (1 - c_exp)."""
    c_obs = np.mean(a == b)
    c_exp = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    return (c_obs - c_exp) / (1 - c_exp)


def _correctness(n=200, seed=0):
    """Four fake networks on the same n images: errors partly shared (a common hard set)."""
    rng = np.random.default_rng(seed)
    hard = rng.uniform(size=n) < 0.3
    return {name: np.where(hard, rng.uniform(size=n) < 0.3, rng.uniform(size=n) < p)
            for name, p in zip(GROUPS, (0.9, 0.85, 0.8, 0.7))}


def _record(correct, accuracy=0.5):
    """A minimal `evaluate_behaviour` record for markdown_lines."""
    return {"test_accuracy": accuracy, "shape_bias": 0.5,
            "cue_fractions": {"shape": 0.4, "texture": 0.4, "other": 0.2},
            "attention": {f"localisation_iou/{m}": 0.1 for m in behaviour.MAPS},
            "robustness": {f: {"levels": [0, 1], "accuracy": [accuracy, 0.1]}
                           for f in behaviour.FAMILIES},
            "stimuli": {"cue_conflict": {"accuracy": float(np.mean(correct)),
                                         "correct": correct.tolist()}}}


def test_cue_conflict_scoring_marks_shape_decisions_correct():
    n = 3 * len(SHAPE_NAMES)
    shape = np.arange(n) % len(SHAPE_NAMES)
    texture = (shape + 1) % len(SHAPE_NAMES)
    other = (shape + 2) % len(SHAPE_NAMES)
    decisions = np.choose(np.arange(n) % 3, [shape, texture, other])  # shape, texture, other
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 3))
    cue = {"image": images, "label": shape, "texture_class": texture}

    def predict(x):  # the image's index is its pixel value
        return decisions[np.asarray(x)[:, 0, 0, 0].astype(int)]

    got = behaviour.score_cue_conflict(predict, cue, batch_size=7)
    assert got["cue_conflict"]["correct"] == (decisions == shape).tolist()
    assert got["cue_conflict"]["accuracy"] == got["cue_fractions"]["shape"] == 1 / 3
    assert got["shape_bias"] == 0.5
    assert set(got["shape_bias_per_category"]) == set(SHAPE_NAMES)
    for c, name in enumerate(SHAPE_NAMES):
        on_c = shape == c
        n_shape = np.sum(decisions[on_c] == shape[on_c])
        n_texture = np.sum(decisions[on_c] == texture[on_c])
        assert got["shape_bias_per_category"][name] == n_shape / (n_shape + n_texture)


def test_network_kappa_matrix_and_group_means_match_numpy():
    correct = _correctness()
    results = {name: {"stimuli": {"cue_conflict": {"correct": c.tolist()}}}
               for name, c in correct.items()}
    ec = behaviour.stimulus_error_consistency(results, "cue_conflict", GROUPS)
    names = list(GROUPS)
    assert ec["names"] == names
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ca, cb = correct[a], correct[b]
            if i != j:
                np.testing.assert_allclose(ec["kappa"][i, j], _kappa(ca, cb))
            np.testing.assert_allclose(ec["observed"][i, j], np.mean(ca == cb))
            np.testing.assert_allclose(ec["expected"][i, j], ca.mean() * cb.mean()
                                       + (1 - ca.mean()) * (1 - cb.mean()))
    assert np.all(np.diag(ec["kappa"]) == 1)

    pairs = {("supervised", "supervised"): [("sup-1", "sup-2")],
             ("self-supervised", "self-supervised"): [("simclr", "byol")],
             ("supervised", "self-supervised"): [("sup-1", "simclr"), ("sup-1", "byol"),
                                                 ("sup-2", "simclr"), ("sup-2", "byol")]}
    assert set(ec["groups"]["kappa"]) == set(pairs)
    for group_pair, members in pairs.items():
        kappas = [_kappa(correct[a], correct[b]) for a, b in members]
        got = ec["groups"]["kappa"][group_pair]
        assert got["n"] == len(members)
        np.testing.assert_allclose([got["mean"], got["std"]], [np.mean(kappas), np.std(kappas)])
        expected = [ec["expected"][names.index(a), names.index(b)] for a, b in members]
        np.testing.assert_allclose(ec["groups"]["expected"][group_pair]["mean"],
                                   np.mean(expected))


def test_default_groups_come_from_run_names():
    assert [behaviour.network_group(n) for n in ("random-init", "supervised", "supervised-s1",
                                                  "simclr-version=2", "byol")] == [
        "random", "supervised", "supervised", "self-supervised", "self-supervised"]


def test_report_shows_the_kappa_block_only_for_several_networks():
    correct = _correctness()
    results = {name: _record(c) for name, c in correct.items()}
    lines = behaviour.markdown_lines(results, GROUPS)
    ec = behaviour.stimulus_error_consistency(results, "cue_conflict", GROUPS)
    start = lines.index("| kappa | sup-1 | sup-2 | simclr | byol |")
    assert lines[start - 2].startswith("Error consistency between networks on `cue_conflict`")
    assert lines[start + 2] == "| sup-1 | 1.00 | " + " | ".join(
        f"{k:.2f}" for k in ec["kappa"][0, 1:]) + " |"
    mixed = ec["groups"]
    pair = ("supervised", "self-supervised")
    assert (f"| supervised / self-supervised | 4 | {mixed['kappa'][pair]['mean']:.2f} "
            f"({mixed['kappa'][pair]['std']:.2f}) | {mixed['observed'][pair]['mean']:.2f} | "
            f"{mixed['expected'][pair]['mean']:.2f} |") in lines
    assert any(line.startswith("| self-supervised / self-supervised | 1 |") for line in lines)
    # Rows of the existing tables are unchanged; no stimulus-accuracy table for cue_conflict.
    assert "| sup-1 | 50.0% | 0.500 | 0.40 / 0.40 / 0.20 | " + " / ".join(
        ["0.10"] * len(behaviour.MAPS)) + " |" in lines
    assert not any("cue_conflict acc." in line for line in lines)
    single = behaviour.markdown_lines({"sup-1": results["sup-1"]})
    assert not any(line.startswith("| kappa |") for line in single)


def test_robustness_record_counts_confusions_and_collapse():
    """Per level: the [truth, decision] counts (numpy bincount reference) and the response
    concentration (1/classes spread evenly, 1 when every decision is one class)."""
    labels = np.arange(40) % 4
    spread = labels.copy()                 # level 0: every decision right, spread evenly
    collapsed = np.full(40, 2)             # level 1: every decision is class 2
    curve = {"levels": [0.0, 0.9], "accuracy": [1.0, 0.25],
             "predictions": np.stack([spread, collapsed])}
    rec = behaviour.robustness_record(curve, labels, 4)
    for m, preds in zip(rec["confusion"], (spread, collapsed)):
        want = np.bincount(4 * labels + preds, minlength=16).reshape(4, 4)
        np.testing.assert_array_equal(m, want)
    assert rec["response_concentration"] == [0.25, 1.0]
    assert "predictions" not in rec and rec["accuracy"] == [1.0, 0.25]
    results = {"net": {"robustness": {"uniform_noise": rec}}}
    lines = behaviour.noise_collapse_lines(results)
    assert lines[-1] == "| net | 0.25 | 1.00 |" and "0.25 = spread evenly" in lines[0]


def test_robustness_grid_draws_every_family_with_humans(tmp_path):
    rec = {"levels": [0, 1], "accuracy": [0.9, 0.2], "response_concentration": [0.1, 0.5],
           "confusion": np.eye(10, dtype=int).tolist()}
    results = {n: {"robustness": {f: rec for f in ("contrast", "rotation", "colour")}}
               for n in ("a", "b")}
    path = tmp_path / "grid.png"
    behaviour.plot_robustness_grid(results, str(path),
                                   human={"contrast": {"accuracy": [1.0, 0.4]}}, title="t")
    assert path.stat().st_size > 10_000
