"""errors.parse_script_flags: the absl flags of the scripts in experiments/ and benchmarks/ (and
`python -m checkpoints_convert`): argparse-like namespaces, --help, one-line errors with exit 2."""
import os
import subprocess
import sys

import pytest
from absl import flags

from ssl_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("outdir", "runs/x", "output folder", flag_values=fv)
    flags.DEFINE_integer("probe_grid", 9, "points of the grid", flag_values=fv)
    flags.DEFINE_bool("no-cache", False, "do not cache", flag_values=fv)
    flags.DEFINE_enum("method", "moco", ["moco", "byol"], "the method", flag_values=fv)
    flags.DEFINE_multi_string("override", [], "KEY=VALUE (repeatable)", flag_values=fv)
    flags.DEFINE_multi_float("grid-width", [], "widths (repeatable)", flag_values=fv)
    return fv


def test_defaults_values_and_hyphenated_names():
    fv = _flags()
    args = errors.parse_script_flags(fv, [])
    assert vars(args) == {"outdir": "runs/x", "probe_grid": 9, "no_cache": False,
                          "method": "moco", "override": [], "grid_width": []}
    args = errors.parse_script_flags(fv, ["--outdir", "a b", "--probe_grid=3", "--no-cache",
                                          "--method", "byol", "--grid-width", "0.25"])
    assert (args.outdir, args.probe_grid, args.no_cache, args.method, args.grid_width) == (
        "a b", 3, True, "byol", [0.25])


def test_multi_string_collects_every_value_and_each_parse_starts_from_the_defaults():
    fv = _flags()
    args = errors.parse_script_flags(fv, ["--override", "a=1", "--override=b.c=2"])
    assert args.override == ["a=1", "b.c=2"]
    args.override.append("mutated")  # the namespace holds copies
    assert errors.parse_script_flags(fv, ["--outdir", "y"]).override == []
    assert errors.parse_script_flags(fv, []).outdir == "runs/x"


@pytest.mark.parametrize("argv, names", [
    (["--probe_grid", "x"], ["--probe_grid=x", "'x'"]),
    (["--method", "simclr"], ["--method=simclr", "moco|byol"]),
    (["--outdirr", "y"], ["'outdirr'", "outdir"]),
    (["--outdir"], ["--outdir"]),
    (["runs/y"], ["'runs/y'", "flags only"]),
])
def test_bad_flags_are_one_line_user_errors(argv, names):
    with pytest.raises(errors.UserError) as err:
        errors.parse_script_flags(_flags(), argv, prog="script.py")
    message = str(err.value)
    assert "\n" not in message and message.endswith("(see script.py --help)"), message
    for name in names:
        assert name in message, message


_SCRIPT = """
'''A script: its first line.'''
import sys
from absl import flags
from ssl_jax import errors
FLAGS = flags.FlagValues()
flags.DEFINE_integer("n", 5, "how many", flag_values=FLAGS)
flags.DEFINE_multi_string("override", [], "KEY=VALUE", flag_values=FLAGS)
def main():
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    print(args.n, args.override)
errors.run(main)
"""


def _run(*argv):
    return subprocess.run([sys.executable, "-c", _SCRIPT, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_a_script_runs_and_fails_like_every_entry_point():
    out = _run("--n=3", "--override", "a=1", "--override", "b=2")
    assert out.returncode == 0 and out.stdout.strip() == "3 ['a=1', 'b=2']", out.stderr
    out = _run("--n", "many")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: flag --n=many: invalid literal for int() with base 10: 'many' "
        "(see -c --help)"]
    for help_flag in ("--help", "-h"):
        out = _run(help_flag)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("A script: its first line.")
        assert "--n: how many" in out.stdout and "--override: KEY=VALUE" in out.stdout
