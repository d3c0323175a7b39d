"""Divergence guard pieces: gradient clipping, resuming with a retuned optimizer, and the
command the divergence error suggests (the end-to-end run is in test_train_run.py)."""
import json
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import simclr as simclr_config
from ssl_jax import metrics as metrics_lib, optim, train


def test_clipping_scales_gradients_and_keeps_the_optimizer_state_structure():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = {"w": jnp.full((3, 2), 10.0), "b": jnp.full(2, 10.0)}  # global norm 28.3
    plain = optim.build_optimizer("sgd", lambda s: 0.1, 0.0)
    clipped = optim.build_optimizer("sgd", lambda s: 0.1, 0.0, clip_grad_norm=1.0)
    # Same state tree: a run may switch clipping on when it resumes from a checkpoint.
    assert (jax.tree.structure(plain.init(params)) == jax.tree.structure(clipped.init(params)))
    update, _ = clipped.update(grads, clipped.init(params), params)
    assert float(optax.global_norm(update)) == pytest.approx(0.1 * 1.0, rel=1e-5)
    small = jax.tree.map(lambda g: g / 100, grads)  # norm 0.28 < 1: untouched
    a, _ = clipped.update(small, clipped.init(params), params)
    b, _ = plain.update(small, plain.init(params), params)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="clip_grad_norm=-1.0 is negative"):
        optim.build_optimizer("sgd", lambda s: 0.1, 0.0, clip_grad_norm=-1.0)


def _saved_run(tmp_path, config):
    (tmp_path / "checkpoints").mkdir()
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config.to_dict(), f)
    return str(tmp_path)


def test_resume_may_retune_the_optimizer_and_says_so(tmp_path):
    saved = simclr_config.get_config("smoke")
    old = saved.to_dict()
    del old["optimizer"]["clip_grad_norm"], old["optimizer"]["warmup_steps"]  # an older run
    workdir = _saved_run(tmp_path, saved)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    assert train.check_same_run(workdir, saved) == ""
    new = saved.copy_and_resolve_references()
    new.optimizer.base_lr = 0.03
    new.optimizer.clip_grad_norm = 1.0
    new.optimizer.warmup_steps = 100
    note = train.check_same_run(workdir, new)
    assert note == ("resuming with a changed optimizer.base_lr: 0.3 -> 0.03, "
                    "optimizer.warmup_steps: 0 -> 100, optimizer.clip_grad_norm: 0.0 -> 1.0")
    other = new.copy_and_resolve_references()
    other.optimizer.momentum = 0.5  # still another run
    with pytest.raises(ValueError, match=r"another config \(optimizer\.momentum: 0.9 -> 0.5\)"):
        train.check_same_run(workdir, other)


def test_resume_command_replaces_the_retuned_flags():
    argv = ["run_train.py", "--config", "configs/simclr.py:smoke", "--workdir", "runs/a b",
            "--config.optimizer.base_lr=5", "--config.optimizer.clip_grad_norm", "2.0",
            "--config.seed=1"]
    fix = {"optimizer.base_lr": 0.5, "optimizer.clip_grad_norm": 1.0}
    command = train.resume_command(fix, argv)
    assert shlex.split(command) == [
        sys.executable, "run_train.py", "--config", "configs/simclr.py:smoke", "--workdir",
        "runs/a b", "--config.seed=1", "--config.optimizer.base_lr=0.5",
        "--config.optimizer.clip_grad_norm=1.0"]
    assert train.resume_command(fix, ["experiments/quickstart.py", "--outdir", "x"]) is None


def test_divergence_message_is_one_line_with_the_command(monkeypatch):
    config = simclr_config.get_config("smoke")
    config.optimizer.base_lr = 1e6
    monkeypatch.setattr(sys, "argv", ["run_train.py", "--config", "c.py:smoke", "--workdir",
                                      "w"])
    with pytest.raises(metrics_lib.NonFiniteLossError) as err:
        metrics_lib.check_finite(5, {"loss": 1.0, "param_norm": float("inf")},
                                 hint=lambda: train.divergence_hint(config, "w", 4))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("non-finite metrics at step 5: {'param_norm': inf}; no "
                              "checkpoint was written for this step; to resume from the last "
                              "good checkpoint (step 4)")
    assert message.endswith("run_train.py --config c.py:smoke --workdir w "
                            "--config.optimizer.base_lr=100000.0 "
                            "--config.optimizer.clip_grad_norm=1.0")
    monkeypatch.setattr(sys, "argv", ["experiments/quickstart.py"])
    assert train.divergence_hint(config, "w", None) == (
        "re-run with optimizer.base_lr=100000.0, optimizer.clip_grad_norm=1.0 on workdir w "
        "to resume from the start (no checkpoint was saved yet)")
