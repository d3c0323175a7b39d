"""benchmarks/conv_geometry.py at a tiny batch: it finds every convolution of the ResNet-18
(20: the stem, 16 in the blocks, 3 shortcuts), groups them by geometry, names the CPU form
each takes, and reports positive times for both sides."""
import math

import conv_geometry  # benchmarks/conv_geometry.py (pytest.ini puts benchmarks/ on the path)
import pytest


@pytest.mark.slow  # ~20 s: 11 geometries x 4 jit-compiled passes
def test_strided_width_quarter_rows_and_forms():
    rows = conv_geometry.main(["--images", "2", "--reps", "1", "--width", "0.25",
                               "--stem", "strided"])
    assert sum(r["count"] for r in rows) == 20
    stem = rows[0]  # needs no input gradient: its step time is forward + weight gradient
    assert stem["step_ms"]["jax"] == stem["jax_ms"]["fwd+dw"]
    forms = {r["convolution"]: (r["count"], r["form"]) for r in rows}
    assert forms == {
        "32x32x3 -> 16, 7x7/2": (1, "space_to_depth"),
        "8x8x16 -> 16, 3x3/1": (4, "library"),
        "8x8x16 -> 32, 3x3/2": (1, "phase_split"),
        "8x8x16 -> 32, 1x1/2": (1, "pointwise"),
        "4x4x32 -> 32, 3x3/1": (3, "library"),
        "4x4x32 -> 64, 3x3/2": (1, "patches"),
        "4x4x32 -> 64, 1x1/2": (1, "pointwise"),
        "2x2x64 -> 64, 3x3/1": (3, "dense_map"),
        "2x2x64 -> 128, 3x3/2": (1, "dense_map"),
        "2x2x64 -> 128, 1x1/2": (1, "pointwise"),
        "1x1x128 -> 128, 3x3/1": (3, "dense_map"),
    }
    for r in rows:
        for side in ("jax_ms", "torch_ms"):
            assert set(r[side]) == set(conv_geometry.PASSES)
            assert all(math.isfinite(v) and v > 0 for v in r[side].values()), r
        assert set(r["step_ms"]) == {"jax", "torch"}


@pytest.mark.slow  # ~20 s
def test_cifar_stem_rows():
    rows = conv_geometry.main(["--images", "2", "--reps", "1", "--stem", "cifar"])
    assert sum(r["count"] for r in rows) == 20
    assert (rows[0]["convolution"], rows[0]["form"]) == ("32x32x3 -> 16, 3x3/1", "library")
    assert rows[0]["step_ms"]["torch"] == rows[0]["torch_ms"]["fwd+dw"]


def test_bad_flag_is_one_line_error():
    with pytest.raises(Exception, match="--images"):
        conv_geometry.main(["--images", "0"])
    with pytest.raises(Exception, match="--kernel_grad_chunk_mib"):
        conv_geometry.main(["--kernel_grad_chunk_mib", "-1"])
