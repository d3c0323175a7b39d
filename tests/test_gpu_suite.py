"""benchmarks/gpu_suite.py at tiny sizes on the CPU: every section runs and reports positive,
finite rates, MFU is in (0, 1] when a peak is given, the files are written; bad flags and
full sizes without a GPU are one-line errors."""
import json
import math
import os
import subprocess
import sys

import gpu_suite  # benchmarks/gpu_suite.py (pytest.ini puts benchmarks/ on the path)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ~75 CPU-seconds, mostly XLA compiling the ResNet init and two train steps: slow (CI runs it).
@pytest.mark.slow
def test_tiny_suite_reports_every_section(tiny_data_dir, tmp_path):
    out = tmp_path / "suite"
    # A peak no 2-core CPU reaches, so MFU must land in (0, 1]; it is > 0 only if XLA's cost
    # analysis counted the step's FLOPs.
    report = gpu_suite.main(["--tiny", "--peak-tflops", "100", "--data-dir", tiny_data_dir,
                             "--out", str(out)])
    saved = json.loads((out / "gpu_suite.json").read_text())
    table = (out / "gpu_suite.md").read_text()
    assert saved["device"] == report["device"]

    assert set(saved["steps"]) == {"simclr", "byol"}
    for method, r in saved["steps"].items():
        assert (r["model"], r["width"], r["size"], r["batch"]) == ("resnet18", 0.125, 32, 8)
        assert r["compute_dtype"] == "bfloat16" and r["variant"] == "aug"
        assert _positive(r["img_s"]) and _positive(r["flops_per_step"]), (method, r)
        # On the CPU nothing is handed to a library XLA cannot count: both counts agree.
        assert r["flops_per_step_lowered"] == pytest.approx(r["flops_per_step"], rel=0.25)
        assert r["img_s"] == pytest.approx(8 / r["step_s"])
        assert r["peak_tflops"] == 100
        assert 0 < r["mfu"] <= 1, (method, r["mfu"])
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_s"] / 100e12)
        assert math.isfinite(r["final_loss"])
        assert f"| {method} train step" in table
    # A ResNet-18 step does at least the forward FLOPs of its 16 views' 3x3 convolutions.
    assert saved["steps"]["simclr"]["flops_per_step"] > 16 * 1e6

    rows = saved["pipeline"]["rows"]
    assert [(r["size"], r["threads"], r["views"]) for r in rows] == [(32, 1, 2)]
    for r in rows:
        assert _positive(r["img_s"]) and _positive(r["img_s_per_thread"])
        assert r["step_img_s"] == saved["steps"]["simclr"]["img_s"]
        assert r["pipeline_over_step"] == pytest.approx(r["img_s"] / r["step_img_s"])
    assert "tf.data host pipeline" in table

    cka = saved["cka"]
    assert cka["n"] == 512 and cka["pairs"] == 400
    assert _positive(cka["seconds"]) and _positive(cka["gflops"])
    assert _positive(cka["gemm_ceiling_gflops"]) and _positive(cka["fraction_of_gemm"])
    lo, hi = cka["cka_range"]
    assert -1 <= lo <= hi <= 1 + 1e-5 and hi > 0
    assert "all-pairs CKA" in table

    probe = saved["probe"]
    assert (probe["n"], probe["dim"], probe["classes"]) == (2048, 64, 10)
    assert _positive(probe["seconds"]) and _positive(probe["examples_per_s"])
    assert probe["iterations"] >= 1
    # The planted linear signal is learned: far above chance (10%).
    assert probe["top1"] > 3 * probe["chance_top1"], probe
    assert "linear probe" in table


def test_full_sizes_without_gpu_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no GPU"):
        gpu_suite.main(["--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, names", [
    (["--sections", "steps,gpu"], "--sections"),
    (["--cka-n", "0"], "--cka-n=0"),
    (["--pipeline-threads", "1,two"], "--pipeline-threads item 'two'"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flags, names):
    out = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--tiny", "--out",
                          str(tmp_path / "x"), *flags], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0], lines
    assert not (tmp_path / "x").exists()
