"""The main job (README command (a)) end to end at the smoke budget: one run picked with
--runs (with a config arg), a report whose rows are the runs plus random init, accuracies in range, and the
behaviour section (shape bias, robustness, attention) for the same rows."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ~2 min of CPU (two trainings and every evaluator in a subprocess): the longest default test,
# so it runs with the slow ones (CI runs both sets).
@pytest.mark.slow
def test_quickstart_smoke_writes_a_report_per_run(tiny_data_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "quickstart.py"), "--outdir",
         str(tmp_path), "--data_dir", tiny_data_dir, "--variant", "smoke",
         "--runs", "simclr:version=2", "--probe_grid", "2", "--few_shot_episodes", "5",
         "--behaviour_examples", "64", "--attention_examples", "32"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.load(open(tmp_path / "report.json"))
    assert list(report["results"]) == ["random-init", "simclr-version=2"]
    for row in report["results"].values():
        assert 0 <= row["linear_top1"] <= 100 and 0 <= row["knn_top1"] <= 100
    assert report["configs"]["simclr-version=2"]["simclr"]["head"] == "v2"
    assert list(report["behaviour"]) == list(report["results"])
    for row in report["behaviour"].values():
        assert 0 <= row["shape_bias"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert 0 <= row["attention"]["localisation_iou/grad_cam"] <= 1
        cue = row["stimuli"]["cue_conflict"]
        assert len(cue["correct"]) == 64 and cue["accuracy"] == row["cue_fractions"]["shape"]
        assert len(row["shape_bias_per_category"]) == 10
    md = open(tmp_path / "report.md").read()
    assert "| simclr-version=2 |" in md and os.path.exists(tmp_path / "report.png")
    assert "## Behaviour (002)" in md and os.path.exists(tmp_path / "robustness_contrast.png")
    assert "| kappa | random-init | simclr-version=2 |" in md
    assert "| random / self-supervised | 1 |" in md
    assert os.path.exists(tmp_path / "simclr-version=2" / "attention.png")


def test_quickstart_unknown_run_is_a_one_line_error(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "quickstart.py"), "--outdir",
         str(tmp_path), "--runs", "simclr,nosuch"], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: --runs: unknown run 'nosuch'; valid:")
