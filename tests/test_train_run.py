"""End-to-end trainer behaviour: SIGKILL resume, corrupt checkpoints, NaN guard, bad input."""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import simclr as simclr_config
from ssl_jax import metrics as metrics_lib, train
import smoke_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_cmd, _run = smoke_run.smoke_cmd, smoke_run.run


def _final_params(workdir, step):
    path = os.path.join(str(workdir), "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    # Restore onto one local device whatever topology saved it (e.g. 2 processes).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    meta = checkpointer.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    return jax.device_get(checkpointer.restore(path, target)["params"])


@pytest.fixture
def uninterrupted_run(smoke_simclr_run):
    return smoke_simclr_run


def test_sigkill_mid_run_resumes_to_identical_parameters(uninterrupted_run, tiny_data_dir,
                                                         tmp_path):
    cmd = _cmd(tmp_path, tiny_data_dir)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill as soon as the first checkpoint (step 2 of 6) is committed.
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(tmp_path / "checkpoints" / "2"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.isdir(tmp_path / "checkpoints" / "6")

    out = _run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resuming from checkpoint at step" in out.stdout
    resumed = _final_params(tmp_path, 6)
    reference = _final_params(uninterrupted_run, 6)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU


def test_corrupt_latest_checkpoint_falls_back_and_reader_renames_nothing(uninterrupted_run, caplog):
    import shutil
    workdir = uninterrupted_run.parent / "corrupt_copy"
    shutil.copytree(uninterrupted_run, workdir)
    # Garble every file of the newest checkpoint's state.
    for path in glob.glob(str(workdir / "checkpoints" / "6" / "state" / "**" / "*"),
                          recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"garbage")
    with caplog.at_level("WARNING"):
        config, method, state = train.load_trained(str(workdir))
    assert int(state.step) == 4
    assert "step 6 is unreadable" in caplog.text and "falling back" in caplog.text
    # load_trained only reads: the damaged checkpoint stays where it is (a training run
    # re-run on this workdir moves it aside, tests/test_checkpointing.py).
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    good = _final_params(uninterrupted_run, 4)
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(good)):
        np.testing.assert_array_equal(a, b)


def test_rerunning_a_finished_run_says_so_and_changes_nothing(uninterrupted_run, tiny_data_dir,
                                                             tmp_path, capsys):
    import json
    import shutil
    workdir = tmp_path / "finished"
    shutil.copytree(uninterrupted_run, workdir)
    before = smoke_run.tree_checksums(workdir)
    with open(workdir / "final_metrics.json") as f:
        saved = json.load(f)
    assert saved and "loss" in saved
    config = simclr_config.get_config("smoke")  # the smoke command's config
    config.dataset.data_dir = tiny_data_dir
    config.evals.knn.every_steps = 0
    assert train.train(config, str(workdir)) == saved
    assert f"Run in {workdir} is complete" in capsys.readouterr().out
    assert smoke_run.tree_checksums(workdir) == before  # every output kept, nothing added
    # Killed between the last checkpoint and final_metrics.json: the file is written from the
    # last checkpoint's metrics (the same record).
    os.remove(workdir / "final_metrics.json")
    assert train.train(config, str(workdir)) == saved
    with open(workdir / "final_metrics.json") as f:
        assert json.load(f) == saved


def test_resuming_with_another_config_is_a_one_line_error(uninterrupted_run):
    import json
    import ml_collections
    with open(uninterrupted_run / "config.json") as f:
        saved = ml_collections.ConfigDict(json.load(f))
    same = saved.copy_and_resolve_references()
    same.log_every = 7  # logging and eval fields may change on resume
    same.evals.knn.every_steps = 3
    train.check_same_run(str(uninterrupted_run), same)
    newer = same.copy_and_resolve_references()
    newer.model.added_since = "x"  # a key the saved run predates is not compared
    train.check_same_run(str(uninterrupted_run), newer)
    other = saved.copy_and_resolve_references()
    other.model.cifar_stem = not saved.model.cifar_stem
    with pytest.raises(ValueError, match=r"holds a run with another config \(model\.cifar_stem: "
                                         r"True -> False\); use a new --workdir"):
        train.check_same_run(str(uninterrupted_run), other)


def test_divergence_stops_before_checkpointing(tiny_data_dir, tmp_path, monkeypatch):
    config = simclr_config.get_config("smoke")
    config.dataset.data_dir = tiny_data_dir
    config.evals.knn.every_steps = 0
    config.num_steps = 2
    config.checkpoint_every = 1
    # No warmup at 2 steps: the first update explodes the parameters (|w| ~ 1e29) while its
    # loss, computed before the update, is finite. That state must not be checkpointed.
    config.optimizer.base_lr = 1e30
    monkeypatch.setattr(sys, "argv", ["run_train.py", "--workdir", str(tmp_path)])
    with pytest.raises(metrics_lib.NonFiniteLossError) as err:
        train.train(config, str(tmp_path))
    message = str(err.value)
    assert message.startswith("non-finite metrics at step 1: {'param_norm': inf")
    assert "\n" not in message and "from the start" in message
    assert message.endswith("--config.optimizer.base_lr=1e+29 "
                            "--config.optimizer.clip_grad_norm=1.0")
    assert [n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()] == []


@pytest.mark.slow  # two trainer subprocesses, ~2-3 min on the loaded 2-core machine
def test_divergence_message_gives_a_resume_command_that_works(uninterrupted_run,
                                                                tiny_data_dir, tmp_path):
    """A healthy run at step 2 resumed with a learning rate ~10x too high diverges; the
    command its error names resumes from the last good checkpoint and finishes."""
    import re
    import shlex
    import shutil
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted_run, workdir)
    for step in ("4", "6"):
        shutil.rmtree(workdir / "checkpoints" / step)
    os.remove(workdir / "final_metrics.json")
    out = _run(_cmd(workdir, tiny_data_dir, "--config.optimizer.base_lr=1e6"))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "non-finite metrics at step" in last and "no checkpoint was written" in last
    match = re.search(r"from the last good checkpoint \(step (\d+)\) .*, run: (.+)$", last)
    assert match, last
    good, suggested = int(match.group(1)), shlex.split(match.group(2))
    assert good in (2, 4) and str(good) in os.listdir(workdir / "checkpoints")
    assert suggested[-2:] == ["--config.optimizer.base_lr=100000.0",
                              "--config.optimizer.clip_grad_norm=1.0"]
    out = _run(suggested)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resuming from checkpoint at step {good}" in out.stdout
    assert ("Resuming with a changed optimizer.base_lr: 1000000.0 -> 100000.0, "
            "optimizer.clip_grad_norm: 0.0 -> 1.0") in out.stdout
    for leaf in jax.tree.leaves(_final_params(workdir, 6)):
        assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize("field,value,expected", [
    ("method", "simclrr", "unknown method 'simclrr'; valid: supervised, simclr"),
    ("model.name", "resnet19", "resnet19"),
    ("dataset.name", "no_such_dataset", "unknown dataset 'no_such_dataset'"),
    ("augment.preset", "fancy", "unknown augmentation preset 'fancy'"),
])
def test_bad_config_values_raise_one_line_errors(tiny_data_dir, tmp_path, field, value, expected):
    config = simclr_config.get_config("smoke")
    config.dataset.data_dir = tiny_data_dir
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError) as err:
        train.train(config, str(tmp_path))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "valid" in message


def test_unwritable_workdir_is_a_one_line_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    config = simclr_config.get_config("smoke")
    try:
        if os.access(locked, os.W_OK):  # running as root: permissions do not bind
            target = "/proc/ssl_jax_workdir"
        else:
            target = str(locked / "run")
        with pytest.raises(ValueError, match="is not writable"):
            train.train(config, target)
    finally:
        locked.chmod(0o700)


def test_cli_unknown_config_key_is_one_line(tmp_path, tiny_data_dir):
    out = _run(_cmd(tmp_path, tiny_data_dir, "--config.no_such_key=3"))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "no_such_key" in last, out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "checkpoints")


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# SiLU instead of ReLU: with ReLU the comparison measures where a kink falls, not the
# collectives. Gloo sums cross-process partials in another order than XLA's in-process
# all-reduce; that last-bit difference moved one pre-activation at ~0 across ReLU's kink in
# layer4 (one channel's BN-bias gradient off by 1%, every earlier layer's gradient then
# off by ~2e-3), and 6 ReLU steps ended 1.56e-5 apart. The same flip happens in ONE process
# on a 4-device mesh vs 1 device (float64 reference: 1, 2 and 8 devices within 4e-6 of it,
# 4 devices 1.4e-3 off); with a smooth activation 2, 4 and 8 devices are within 3e-6 of 1.
SMOOTH = "--config.model.activation=silu"


@pytest.mark.slow  # ~2 min on an idle 2-core machine: 3 more trainer processes
def test_two_processes_train_like_one(tiny_data_dir, tmp_path):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo collectives) reach the
    parameters of 1 process x 8 devices on the same 6 steps."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    out = _run(_cmd(one_dir, tiny_data_dir, SMOOTH))
    assert out.returncode == 0, out.stderr[-3000:]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen(
        _cmd(two_dir, tiny_data_dir, SMOOTH, "--distributed",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={pid}"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for pid in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    two = jax.tree.leaves(_final_params(two_dir, 6))
    one = jax.tree.leaves(_final_params(one_dir, 6))
    # Relative error of the whole parameter vector: some early-layer gradient leaves of this
    # tiny network are sums that nearly cancel, so per-leaf relative errors reflect the
    # summation order (they do the same on one process, 2 devices vs 1).
    diff = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(two, one)))
    norm = np.sqrt(sum(float(np.sum(b ** 2)) for b in one))
    max_abs = max(float(np.max(np.abs(a - b))) for a, b in zip(two, one))
    print(f"2 processes vs 1: |dp|/|p| = {diff / norm:.3g}, max |dp| = {max_abs:.3g}")
    assert diff / norm <= 1e-5, (diff / norm, max_abs)
