"""Bad input at every entry point: run as a user would (a subprocess), each must end with exit
code 2, no traceback, a last stderr line `error: ...` that names the bad value, and nothing
already on disk changed (ssl_jax/errors.py is the policy).

Each case runs against a pre-existing directory `{old}` holding earlier outputs (checksummed
before and after) and may name a path `{new}` that must still not exist afterwards. Most
cases fail before JAX is imported (well under a second each); the few marked "trainer" need
the trainer or the converter's readers and take a few seconds.
"""
import os
import shutil
import subprocess
import sys

import pytest

import smoke_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TRAIN = [PY, "run_train.py", "--config"]
SMOKE = "configs/simclr.py:smoke"
EVAL = [PY, "run_eval.py", "--config"]
CONVERT = [PY, "-m", "checkpoints_convert"]
QUICK = [PY, "experiments/quickstart.py", "--outdir", "{old}"]

# (id, argv, substrings the last stderr line must contain). Placeholders: {old} a directory of
# earlier outputs, {new} a path that must not be created, {run} a copy of the smoke-trained
# workdir, {random}/{html}/{missing_key} files the converter must refuse.
CASES = [
    # run_train.py
    ("train-missing-config", TRAIN + ["configs/missing.py", "--workdir", "{old}"],
     ["configs/missing.py", "does not exist", "valid: configs/", "configs/simclr.py"]),
    ("train-bad-variant", TRAIN + ["configs/simclr.py:nosuch", "--workdir", "{old}"],
     ["'nosuch'", "valid: smoke, quickstart"]),
    ("train-bad-config-arg-value", TRAIN + [f"{SMOKE},epochs=abc", "--workdir", "{old}"],
     ["epochs='abc'", "expected float"]),
    ("train-unknown-config-arg", TRAIN + [f"{SMOKE},epoch=3", "--workdir", "{old}"],
     ["'epoch'", "valid:"]),
    ("train-bad-simclr-version", TRAIN + [f"{SMOKE},version=3", "--workdir", "{old}"],
     ["version 3", "valid: 1, 2"]),
    ("train-unknown-key", TRAIN + [SMOKE, "--workdir", "{old}", "--config.no_such_key=3"],
     ["no_such_key", "valid keys:", "batch_size"]),
    ("train-misspelt-nested-key", TRAIN + [SMOKE, "--workdir", "{old}",
                                           "--config.model.widht=0.5"],
     ["model.widht", "did you mean model.width"]),
    ("train-key-below-a-value", TRAIN + [SMOKE, "--workdir", "{old}",
                                         "--config.batch_size.x=3"],
     ["batch_size.x", "not a section"]),
    ("train-bad-value-type", TRAIN + [SMOKE, "--workdir", "{old}", "--config.batch_size=abc"],
     ["--config.batch_size=abc"]),
    ("train-missing-workdir", TRAIN + [SMOKE], ["--workdir is required"]),
    ("train-unknown-flag", TRAIN + [SMOKE, "--workdir", "{old}", "--epochs=3"], ["'epochs'"]),
    # trainer: resuming {run} with another config is refused, naming the changed key.
    ("train-another-config", TRAIN + [SMOKE, "--workdir", "{run}", "--config.seed=1",
                                      "--config.evals.knn.every_steps=0",
                                      "--config.dataset.data_dir={data_dir}"],
     ["another config", "seed: 0 -> 1"]),
    # run_eval.py
    ("eval-missing-config", EVAL + ["configs/eval/nosuch.py", "--outdir", "{old}"],
     ["configs/eval/nosuch.py", "configs/eval/linear.py"]),
    ("eval-unknown-config-arg", EVAL + ["configs/eval/linear.py:bogus=1", "--outdir", "{old}"],
     ["'bogus'", "probe_grid"]),
    ("eval-bad-config-arg-value", EVAL + ["configs/eval/linear.py:probe_grid=x", "--outdir",
                                          "{old}"], ["probe_grid='x'", "expected int"]),
    ("eval-no-checkpoint", EVAL + ["configs/eval/linear.py", "--outdir", "{old}"],
     ["--config.checkpoint is required"]),
    ("eval-missing-checkpoint", EVAL + ["configs/eval/linear.py", "--outdir", "{old}",
                                        "--config.checkpoint={new}"], ["{new}", "no such"]),
    ("eval-missing-checkpoint-b", EVAL + ["configs/eval/similarity.py", "--outdir", "{old}",
                                          "--config.checkpoint={run}",
                                          "--config.checkpoint_b={new}"],
     ["--config.checkpoint_b={new}"]),
    ("eval-unknown-key", EVAL + ["configs/eval/linear.py", "--outdir", "{old}",
                                 "--config.checkpoint={run}", "--config.knn=5"],
     ["'knn'", "did you mean knn_k"]),
    ("eval-missing-outdir", EVAL + ["configs/eval/linear.py", "--config.checkpoint={run}"],
     ["--outdir is required"]),
    # checkpoints_convert
    ("convert-missing-src", CONVERT + ["--family", "moco", "--src", "{new}.pth", "--out",
                                       "{new}"], ["{new}.pth", "does not exist"]),
    ("convert-missing-out", CONVERT + ["--family", "moco", "--src", "{random}"], ["--out"]),
    ("convert-existing-out", CONVERT + ["--family", "moco", "--src", "{random}", "--out",
                                        "{old}"], ["{old}", "already exists"]),
    ("convert-bad-family", CONVERT + ["--family", "mocov9", "--src", "{random}", "--out",
                                      "{new}"], ["--family=mocov9", "moco"]),
    ("convert-no-family", CONVERT + ["--src", "{random}", "--out", "{new}"], ["--family"]),
    ("convert-random-bytes", CONVERT + ["--family", "moco", "--src", "{random}", "--out",
                                        "{new}"], ["{random}", "not a PyTorch checkpoint"]),
    ("convert-html-page", CONVERT + ["--family", "moco", "--src", "{html}", "--out", "{new}",
                                     "--unsafe-unpickle"],
     ["{html}", "not a PyTorch checkpoint", "<!DOCTYPE html"]),
    ("convert-missing-key", CONVERT + ["--family", "moco", "--src", "{missing_key}", "--out",
                                       "{new}"], ["missing keys ['layer2.0.bn1.running_var']"]),
    ("convert-to-torch-file-src", CONVERT + ["--to-torch", "--src", "{random}", "--out",
                                             "{new}"], ["{random}", "not a directory"]),
    ("convert-to-torch-not-converted", CONVERT + ["--to-torch", "--src", "{run}", "--out",
                                                  "{new}"],
     ["{run}", "not a converted checkpoint directory"]),
    ("convert-to-torch-existing-out", CONVERT + ["--to-torch", "--src", "{run}", "--out",
                                                 "{old}"], ["{old}", "already exists"]),
    # experiments/quickstart.py (the main job)
    ("quickstart-unknown-override", QUICK + ["--override", "bogus_key=1"],
     ["bogus_key", "valid keys:", "num_epochs"]),
    ("quickstart-misspelt-override", QUICK + ["--override", "model.widht=1"],
     ["model.widht", "did you mean model.width"]),
    ("quickstart-override-bad-value", QUICK + ["--override", "num_epochs=abc"],
     ["num_epochs", "'abc'"]),
    ("quickstart-override-no-value", QUICK + ["--override", "num_epochs"],
     ["'num_epochs'", "KEY=VALUE"]),
    ("quickstart-bad-variant", QUICK + ["--variant", "bogus"], ["--variant 'bogus'"]),
    ("quickstart-bad-run", QUICK + ["--runs", "simclr,nosuch"], ["--runs", "'nosuch'"]),
    ("quickstart-bad-int", QUICK + ["--probe_grid", "x"], ["--probe_grid", "'x'"]),
    ("behaviour-bad-method", [PY, "experiments/behaviour.py", "--outdir", "{old}", "--methods",
                              "byol:epochs=x"], ["--methods", "epochs='x'"]),
    ("methods_table-bad-seeds", [PY, "experiments/methods_table.py", "--outdir", "{old}",
                                 "--seeds", "0,x"], ["--seeds '0,x'"]),
    # benchmarks
    ("bench-human-data-missing", [PY, "benchmarks/human_data_check.py", "--data", "{new}",
                                  "--out", "{old}"], ["--data '{new}'"]),
    ("bench-probe-bad-int", [PY, "benchmarks/linear_probe_vs_sklearn.py", "--n", "many"],
     ["--n", "'many'"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smoke_simclr_run, tiny_data_dir):
    """Files the cases refer to; the smoke run is copied (cases must not change it either)."""
    import torch

    from test_convert_cli import _moco

    base = tmp_path_factory.mktemp("bad_inputs")
    (base / "random.pth").write_bytes(os.urandom(4096))
    (base / "page.pth").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    keyed = base / "keyed"
    keyed.mkdir()
    src, *_ = _moco(keyed, **{"module.encoder_q.layer2.0.bn1.running_var": None})
    del torch
    run = base / "run"
    shutil.copytree(smoke_simclr_run, run)
    return {"random": str(base / "random.pth"), "html": str(base / "page.pth"),
            "missing_key": src, "run": str(run), "data_dir": tiny_data_dir}


def _earlier_outputs(path):
    """A directory as a finished command leaves it (the exact files do not matter)."""
    os.makedirs(path / "sub")
    (path / "metrics.json").write_text('{"linear_top1": 31.8}\n')
    (path / "report.md").write_text("# report\n")
    (path / "sub" / "metrics.jsonl").write_text('{"step": 6, "loss": 4.1}\n')


@pytest.mark.parametrize("argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv, expected, inputs, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _earlier_outputs(old)
    names = dict(inputs, old=str(old), new=str(new))
    argv = [a.format(**names) for a in argv]
    before = {p: smoke_run.tree_checksums(p) for p in (old, inputs["run"])}
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, SSL_JAX_DEBUG=""))
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), out.stderr[-3000:]
    for want in expected:
        assert want.format(**names) in last, (want, last)
    assert {p: smoke_run.tree_checksums(p) for p in before} == before
    assert not os.path.exists(new), "an output was created"
    assert not [p for p in os.listdir(tmp_path) if p not in ("old",)], os.listdir(tmp_path)


def test_at_least_30_cases_over_every_kind_of_entry_point():
    kinds = {c[0].split("-")[0] for c in CASES}
    assert len(CASES) >= 30 and kinds == {"train", "eval", "convert", "quickstart", "behaviour",
                                          "methods_table", "bench"}


def test_the_trainers_failures_are_expected_errors():
    """A NaN loss and "no readable checkpoint" end as one line, not a traceback."""
    from ssl_jax import checkpointing, errors, metrics

    assert issubclass(metrics.NonFiniteLossError, errors.UserError)
    assert issubclass(checkpointing.CheckpointError, errors.UserError)


# ------------------------------------------------------------------------- the policy itself
_SCRIPT = """
import sys
from ssl_jax import errors
def main():
    kind = sys.argv[1]
    if kind == "nan":
        from ssl_jax import metrics
        raise metrics.NonFiniteLossError("non-finite metrics at step 3: {'loss': nan}")
    if kind == "missing":
        open("/nonexistent/ssl_jax_file")
    if kind == "bug":
        return None + 1
errors.run(main)
"""


@pytest.mark.parametrize("kind,debug,code,traceback,last", [
    ("nan", False, 2, False, "error: non-finite metrics at step 3: {'loss': nan}"),
    ("missing", False, 2, False, "error: [Errno 2] No such file or directory: "
                                 "'/nonexistent/ssl_jax_file'"),
    ("nan", True, 2, True, "error: non-finite metrics at step 3: {'loss': nan}"),
    ("bug", False, 1, True, "TypeError: unsupported operand type(s) for +: 'NoneType' and "
                            "'int'"),
])
def test_policy_one_line_for_expected_failures_traceback_for_bugs(kind, debug, code, traceback,
                                                                  last):
    for how in ("flag", "env") if debug else ("",):
        argv = [PY, "-c", _SCRIPT, kind] + (["--debug"] if how == "flag" else [])
        env = dict(os.environ, SSL_JAX_DEBUG="1" if how == "env" else "")
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=env)
        assert out.returncode == code, out.stderr
        assert ("Traceback" in out.stderr) == traceback, out.stderr
        assert out.stderr.strip().splitlines()[-1] == last
