"""experiments/whats_missing.py (000 in miniature): the findings' verdicts on hand-made
records, the bank's bar, bad flags failing before any training, and (slow) the whole script
at the smoke variant."""
import json

import pytest

import whats_missing as wm
from ssl_jax import errors

TASKS = ["class", "segment_fg", "normals", "autoencoding", "denoising"]
GROUPS = {"class": "semantic", "segment_fg": "semantic", "normals": "3D",
          "autoencoding": "reconstruction", "denoising": "reconstruction"}


def _record(sup, rand, ssl, se=0.01):
    cca = {}
    for t in TASKS:
        cca[f"supervised | {t}"] = {"mean": sup[t], "se": se}
        cca[f"random_resnet | {t}"] = {"mean": rand[t], "se": se}
        cca[f"simclr | {t}"] = {"mean": ssl[t], "se": se}
    return {"tasks": TASKS, "groups": GROUPS, "cca": cca,
            "networks": ["random_resnet", "supervised", "simclr"]}


def test_findings_verdicts_go_either_way():
    sup = {"class": 0.8, "segment_fg": 0.7, "normals": 0.6, "autoencoding": 0.3, "denoising": 0.2}
    rand = {t: 0.4 for t in TASKS}
    ssl = {"class": 0.5, "segment_fg": 0.7, "normals": 0.5, "autoencoding": 0.4, "denoising": 0.3}
    lines = wm.findings(_record(sup, rand, ssl))
    assert "supervised closer than random** (by more than 2 combined standard errors) on 3 of 5" \
        in lines[0] and lines[0].endswith("Holds here.")
    assert "random closer on 2 (autoencoding, denoising)" in lines[0]
    assert "least similar tasks to supervised**: denoising, autoencoding, normals" in lines[1]
    assert lines[1].endswith("(the test: both among the four least similar).")
    assert "Holds" in lines[1]
    # SimCLR minus supervised by group: semantic (-0.3 + 0) / 2, 3D -0.1, reconstruction +0.1.
    assert "semantic -0.150, 3D -0.100, reconstruction +0.100; most missing: semantic, " \
           "then 3D" in lines[2]
    # Within two standard errors is not "closer"; reversed, the verdicts flip.
    flat = wm.findings(_record({t: 0.41 for t in TASKS}, rand, ssl, se=0.05))
    assert "on 0 of 5 tasks; random closer on 0" in flat[0] and "Does not hold" in flat[0]
    flipped = wm.findings(_record(rand, sup, ssl))
    assert "Does not hold" in flipped[0] and "Does not hold" in flipped[1]


def test_clearly_better_bar():
    assert wm.clearly_better("class", 60.0, 54.9) and not wm.clearly_better("class", 59.0, 55.0)
    assert wm.clearly_better("denoising", 16.0, 15.0)
    assert not wm.clearly_better("denoising", 15.5, 15.0)
    assert wm.clearly_better("normals", 8.5, 10.0) and not wm.clearly_better("normals", 8.9, 10.0)


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "class,depth"], "unknown task_bank.task 'depth'"),
    (["--networks", "simclr,nope"], "--networks: unknown nope"),
    (["--networks", "simclr"], "need their references supervised and random_resnet"),
])
def test_bad_flags_fail_before_training(flags, message, tmp_path):
    with pytest.raises((errors.UserError, ValueError), match=message):
        wm.main(["--outdir", str(tmp_path)] + flags)
    assert not list(tmp_path.iterdir())  # nothing trained or written


@pytest.mark.slow
def test_smoke_run_writes_the_report(tmp_path):
    wm.main(["--variant", "smoke", "--outdir", str(tmp_path), "--reuse_dir", "",
             "--tasks", "class,normals", "--networks",
             "random_resnet,supervised,simclr,random_alexnet,supervised_alexnet_bn,"
             "rotation_alexnet_bn", "--batches", "2", "--batch_examples", "64",
             "--attention_examples", "32"])
    record = json.load(open(tmp_path / "whats_missing.json"))
    assert set(record["bank"]) == {"class", "normals"}
    assert len(record["cca"]) == 2 * 6
    for v in record["cca"].values():
        assert 0 <= v["mean"] <= 1 and v["se"] >= 0
    assert set(record["confusions"]) == {"resnet", "alexnet"}
    for name in ("fig3_supervised_vs_random.png", "fig4_whats_missing.png",
                 "attention_resnet.png", "confusion_alexnet.png", "whats_missing.md"):
        assert (tmp_path / name).stat().st_size > 1000
    # --report_only re-renders from the record, re-reading the bank's scores.
    (tmp_path / "whats_missing.md").unlink()
    wm.main(["--report_only", "--outdir", str(tmp_path)])
    assert "## The task bank" in (tmp_path / "whats_missing.md").read_text()
