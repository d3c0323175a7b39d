"""Orbax checkpoints of the train state: atomic, keep-N, restore into an abstract state.

A corrupt or unreadable latest checkpoint is not fatal: restore falls back to the previous
one, says so, and moves the bad directory aside (never deletes it) so nothing is lost.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store

from ssl_jax.errors import UserError

log = logging.getLogger(__name__)

# Orbax's default jax.Array handler saves replicated arrays "replica-parallel": every replica
# writes a slice of the array. It slices every array, however small, with one jitted slice
# per replica, so a small model's state (hundreds of BatchNorm vectors and kernels, replicated
# over 8 devices) costs ~4000 dispatches and their compiles per save: 3 s per checkpoint of
# the smoke run's ResNet-18 x0.125. Splitting only slices of at least 1 MiB keeps the parallel
# write for large arrays and writes small ones from one replica. The threshold does not change
# what is written. The handler is otherwise orbax's default (including its metadata store);
# registering it replaces the default for jax.Array in this process.
MIN_REPLICA_SLICE_BYTES = 1 << 20
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
    override=True)


class CheckpointError(UserError, RuntimeError):
    """No readable checkpoint: an expected failure (one line at the command line)."""


def make_manager(directory: str, keep: int, save_every: int, async_save: bool = True
                 ) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every, create=True,
        enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         force: bool = False) -> bool:
    """Save `state` (any pytree of arrays) and a JSON-able `meta` dict at `step`."""
    return manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)


def restore_step(manager: ocp.CheckpointManager, abstract_state: Any, step: int
                 ) -> tuple[int, Any, dict]:
    """(step, state, meta) of the checkpoint at `step` (no fallback: the caller asked for it)."""
    if step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}; "
                                f"saved steps: {sorted(manager.all_steps())}")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return step, restored.state, dict(restored.meta or {})


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any
                   ) -> tuple[int, Any, dict] | None:
    """Restore the newest readable checkpoint into `abstract_state` (a pytree of
    jax.ShapeDtypeStruct with shardings, e.g. from jax.eval_shape). Returns
    (step, state, meta), or None when the directory holds no checkpoint."""
    steps = sorted(manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for truncated/corrupt files
            bad = os.path.join(str(manager.directory), str(step))
            aside = f"{bad}.corrupt"
            log.warning("checkpoint at step %d is unreadable (%s: %s); %s", step,
                        type(e).__name__, str(e).splitlines()[0][:200],
                        "falling back to the previous one" if i + 1 < len(steps)
                        else "no older checkpoint to fall back to")
            if os.path.isdir(bad) and jax.process_index() == 0:
                os.replace(bad, aside)
            manager.reload()
            continue
        return step, restored.state, dict(restored.meta or {})
    if steps:
        raise CheckpointError(
            f"no readable checkpoint in {manager.directory} (tried steps {steps}); "
            "unreadable ones were moved aside with a .corrupt suffix")
    return None
