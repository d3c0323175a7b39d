"""Checkpoint restore policy on a small pytree (no training): killed saves, corrupt and
truncated checkpoints, I/O errors, another model's state, read-only callers."""
import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpointing

TMP = ".orbax-checkpoint-tmp"


def _state(scale=1.0, width=3):
    return {"params": {"w": jnp.full((width, 4), float(scale)), "b": jnp.arange(4.0) * scale},
            "step": jnp.asarray(int(scale), jnp.int32)}


def _abstract(width=3):
    return jax.eval_shape(lambda: _state(width=width))


@pytest.fixture
def saved(tmp_path):
    """A checkpoint directory holding steps 2, 4 and 6 (state scaled by the step)."""
    directory = str(tmp_path / "checkpoints")
    manager = checkpointing.make_manager(directory, keep=None, save_every=1, async_save=False)
    for step in (2, 4, 6):
        checkpointing.save(manager, step, _state(step), {"metrics": {"loss": step}}, force=True)
    manager.close()
    return directory


def _listing(directory):
    return sorted(os.listdir(directory))


def _checksums(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hash(f.read())
    return out


def _garble(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"garbage")


def _truncate(step_dir):
    """Cut every data file of the state to half its size (a save interrupted mid-write)."""
    files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
             if os.path.isfile(p) and os.sep + "d" + os.sep in p]
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def test_killed_save_leftovers_are_removed_before_saving_again(saved):
    # What a kill -9 during saves of steps 8 and 10 leaves: unfinished step and item
    # directories. Step 8's holds a complete-looking copy (killed after writing, before the
    # rename that commits it).
    shutil.copytree(os.path.join(saved, "6"), os.path.join(saved, f"8{TMP}"))
    os.rename(os.path.join(saved, f"8{TMP}", "state"), os.path.join(saved, f"8{TMP}", f"state{TMP}"))
    os.makedirs(os.path.join(saved, f"10{TMP}", f"state{TMP}"))

    reader = checkpointing.make_manager(saved, keep=None, save_every=1, read_only=True)
    step, _, _ = checkpointing.restore_latest(reader, _abstract(), read_only=True)
    reader.close()
    assert step == 6
    assert f"8{TMP}" in _listing(saved)  # a reader leaves everything as it was

    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    step, state, meta = checkpointing.restore_latest(writer, _abstract())
    assert step == 6 and meta["metrics"]["loss"] == 6
    checkpointing.save(writer, 8, _state(8), {}, force=True)
    writer.wait_until_finished()
    writer.close()
    assert _listing(saved) == ["2", "4", "6", "8"]
    reader = checkpointing.make_manager(saved, keep=None, save_every=1, read_only=True)
    step, state, _ = checkpointing.restore_latest(reader, _abstract(), read_only=True)
    assert step == 8
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 4), 8.0))


@pytest.mark.parametrize("damage", [_garble, _truncate])
def test_damaged_newest_checkpoint_is_skipped_and_moved_aside_by_a_writer(saved, damage, caplog):
    damage(os.path.join(saved, "6"))
    before = _checksums(saved)
    reader = checkpointing.make_manager(saved, keep=None, save_every=1, read_only=True)
    with caplog.at_level(logging.WARNING):
        step, state, _ = checkpointing.restore_latest(reader, _abstract(), read_only=True)
    assert step == 4 and "step 6 is unreadable" in caplog.text
    np.testing.assert_array_equal(state["params"]["b"], np.arange(4.0) * 4)
    assert _checksums(saved) == before  # read-only: nothing renamed, nothing written

    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    step, _, _ = checkpointing.restore_latest(writer, _abstract())
    assert step == 4
    assert _listing(saved) == ["2", "4", "6.corrupt"]
    # The resumed run saves step 6 again; when that copy goes bad too, it is moved aside
    # next to the first one instead of failing on the name.
    checkpointing.save(writer, 6, _state(6), {}, force=True)
    writer.wait_until_finished()
    writer.close()
    damage(os.path.join(saved, "6"))
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    step, _, _ = checkpointing.restore_latest(writer, _abstract())
    writer.close()
    assert step == 4
    assert _listing(saved) == ["2", "4", "6.corrupt", "6.corrupt.1"]


def test_unreadable_meta_counts_as_corrupt(saved):
    with open(os.path.join(saved, "6", "meta", "metadata"), "w") as f:
        f.write("{not json")
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    assert checkpointing.restore_latest(writer, _abstract())[0] == 4
    writer.close()
    assert "6.corrupt" in _listing(saved)


def test_another_models_state_is_an_error_not_corruption(saved):
    before = _checksums(saved)
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    with pytest.raises(checkpointing.CheckpointError) as err:
        checkpointing.restore_latest(writer, _abstract(width=5))
    writer.close()
    message = str(err.value)
    assert "step 6" in message and "another model's state" in message and "\n" not in message
    assert "params/w: saved float32[3, 4], expected float32[5, 4]" in message
    assert _checksums(saved) == before


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
def test_memory_error_is_not_corruption(saved, monkeypatch, error):
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)

    def restore(*a, **k):
        raise error()
    monkeypatch.setattr(writer, "restore", restore)
    with pytest.raises(error):
        checkpointing.restore_latest(writer, _abstract())
    writer.close()
    assert _listing(saved) == ["2", "4", "6"]


def test_transient_io_errors_are_retried(saved, monkeypatch, caplog):
    monkeypatch.setattr(checkpointing, "RETRY_WAIT_S", 0.0)
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    real, calls = writer.restore, []

    def flaky(*a, **k):
        calls.append(a[0])
        if len(calls) < checkpointing.READ_TRIES:
            raise OSError(5, "Input/output error")
        return real(*a, **k)
    monkeypatch.setattr(writer, "restore", flaky)
    with caplog.at_level(logging.WARNING):
        step, _, _ = checkpointing.restore_latest(writer, _abstract())
    writer.close()
    assert step == 6 and calls == [6] * checkpointing.READ_TRIES
    assert caplog.text.count("retrying") == checkpointing.READ_TRIES - 1
    assert _listing(saved) == ["2", "4", "6"]


def test_persistent_io_error_is_one_clear_error_and_renames_nothing(saved, monkeypatch):
    monkeypatch.setattr(checkpointing, "RETRY_WAIT_S", 0.0)
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    calls = []

    def broken(*a, **k):
        calls.append(a[0])
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(writer, "restore", broken)
    with pytest.raises(checkpointing.CheckpointError) as err:
        checkpointing.restore_latest(writer, _abstract())
    writer.close()
    message = str(err.value)
    assert len(calls) == checkpointing.READ_TRIES
    assert message.startswith("could not read the checkpoint at step 6")
    assert "Input/output error" in message and "left as it is" in message
    assert "\n" not in message
    assert _listing(saved) == ["2", "4", "6"]


def test_a_requested_step_that_is_damaged_is_reported_not_replaced(saved):
    _garble(os.path.join(saved, "4"))
    reader = checkpointing.make_manager(saved, keep=None, save_every=1, read_only=True)
    with pytest.raises(checkpointing.CheckpointError, match="checkpoint at step 4 .* unreadable"):
        checkpointing.restore_step(reader, _abstract(), 4)
    assert checkpointing.restore_step(reader, _abstract(), 2)[0] == 2
    reader.close()
    assert _listing(saved) == ["2", "4", "6"]


def test_nothing_readable_is_an_error(saved):
    for step in (2, 4, 6):
        _garble(os.path.join(saved, str(step)))
    writer = checkpointing.make_manager(saved, keep=None, save_every=1)
    with pytest.raises(checkpointing.CheckpointError, match=r"no readable checkpoint .*\[6, 4, 2\]"):
        checkpointing.restore_latest(writer, _abstract())
    writer.close()
    assert _listing(saved) == ["2.corrupt", "4.corrupt", "6.corrupt"]  # nothing deleted


def test_keep_n_prunes_the_oldest_and_leaves_set_aside_directories(saved):
    os.rename(os.path.join(saved, "2"), os.path.join(saved, "2.corrupt"))
    writer = checkpointing.make_manager(saved, keep=2, save_every=1)
    for step in (8, 10):
        checkpointing.save(writer, step, _state(step), {}, force=True)
    writer.wait_until_finished()
    writer.close()
    assert _listing(saved) == ["10", "2.corrupt", "8"]
