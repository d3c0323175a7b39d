"""Orbax checkpoints of the train state: atomic, keep-N, restore into an abstract state.

A corrupt latest checkpoint is not fatal: restore falls back to the previous one, says so,
and (for a training run, never for a reader) moves the bad directory aside, never deleting it,
so nothing is lost. Unfinished saves of a killed run are removed before a run saves again.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax.errors import UserError

log = logging.getLogger(__name__)

# Orbax's default jax.Array handler saves replicated arrays "replica-parallel": every replica
# writes a slice of the array. It slices every array, however small, with one jitted slice
# per replica, so a small model's state (hundreds of BatchNorm vectors and kernels, replicated
# over 8 devices) costs thousands of dispatches per save. Splitting only slices of at least
# 1 MiB keeps the parallel write for large arrays and writes small ones from one replica; the
# threshold does not change the array data written. The state item therefore gets its own
# PyTreeCheckpointHandler with its own type-handler registry (orbax's public API; the global
# registry, which other code in the process may use, is left alone).
#
# Measured with `nice -n 19 python benchmarks/checkpoint_save.py --saves 5 [--orbax_default]`
# (the smoke SimCLR state: 170 arrays, 1.44 MiB, on 8 forced CPU devices; 2 shared cores):
#   orbax's default handler: first save 10.2-11.5 s (the slices' compiles), then 0.74-0.85 s
#   this handler:            first save 0.29-0.30 s, then 0.23-0.25 s
#   (the global override this replaced: first 0.25 s, then 0.30 s; restores 0.2-0.45 s all)
# Orbax turns replica-parallel off by default only when JAX_PLATFORMS names gpu or cuda.
#
# This ArrayHandler has no ArrayMetadata store (orbax's default one is built from a private
# module): a checkpoint no longer has the `array_metadatas/` folder nor `write_shape` in
# `_METADATA`, which orbax uses for typed PRNG keys (the state holds none: keys are made from the
# config's seed) and per-process checks of chunk shapes. The array data is written as before and
# `_CHECKPOINT_METADATA` names PyTreeCheckpointHandler instead of StandardCheckpointHandler (its
# wrapper). Checkpoints written before restore bitwise with this code, and this code's with the
# code before (checked on the smoke state).
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """The state item's handler: orbax's standard type handlers, with jax.Array's replaced by
    one that splits only slices of >= MIN_REPLICA_SLICE_BYTES between replicas."""
    array_handler = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    registry = ocp.type_handlers.create_type_handler_registry(*(
        (ty, array_handler if ty is jax.Array else ocp.type_handlers.get_type_handler(ty))
        for ty in ocp.type_handlers.supported_types()))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


# A read that fails with an OSError (a flaky network filesystem, a busy disk) is tried this many
# times in all, RETRY_WAIT_S apart, before it is reported; it never marks a checkpoint corrupt.
READ_TRIES = 3
RETRY_WAIT_S = 1.0


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used or saved: an expected failure (one line at the
    command line)."""


def make_manager(directory: str, keep: int | None, save_every: int, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """A manager for `directory`. A writer (read_only=False) first removes the unfinished
    `*.orbax-checkpoint-tmp` directories a killed save leaves behind: orbax re-creates such a
    directory when it saves that step again, and that raced with the new save's own
    directories ("Checkpoint directory does not exist: .../N.orbax-checkpoint-tmp/state...").
    Orbax never lists them as steps, so removing them loses nothing. A reader changes nothing
    on disk."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every, create=not read_only,
        read_only=read_only, cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save)
    state_handler = _state_handler()
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.PyTreeSave, state_handler)
    registry.add("state", ocp.args.PyTreeRestore, state_handler)
    registry.add("meta", ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add("meta", ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 handler_registry=registry)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         force: bool = False) -> bool:
    """Save `state` (any pytree of arrays) and a JSON-able `meta` dict at `step`. A failed
    save (of this step, or of the previous asynchronous one, which orbax reports here) raises
    CheckpointError; the failed step is never committed, earlier ones are untouched."""
    try:
        return manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    except MemoryError:
        raise
    except Exception as e:
        raise _save_error(manager, e) from e


def _state_restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any
                   ) -> ocp.args.PyTreeRestore:
    """Restore args of the state item: each array's shape, dtype and sharding from
    `abstract_state`; a leaf without a sharding (e.g. from jax.eval_shape) is restored with
    the sharding it was saved with. This is what StandardRestore did for the
    StandardCheckpointHandler that the state item's handler replaces."""
    if any(getattr(x, "sharding", None) is None for x in jax.tree.leaves(abstract_state)):
        saved = _saved_tree(manager, step)
        saved = {} if saved is None else {_leaf_name(p): m for p, m in
                                          jax.tree_util.tree_flatten_with_path(saved)[0]}

        def with_saved_sharding(path, x):
            if getattr(x, "sharding", None) is not None:
                return x
            sharding = getattr(saved.get(_leaf_name(path)), "sharding", None)
            return jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=sharding and sharding.to_jax_sharding())

        abstract_state = jax.tree_util.tree_map_with_path(with_saved_sharding, abstract_state)
    return ocp.args.PyTreeRestore(
        abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
    """Block until the asynchronous save in flight is committed; CheckpointError if it failed."""
    try:
        manager.wait_until_finished()
    except MemoryError:
        raise
    except Exception as e:
        raise _save_error(manager, e) from e


def close(manager: ocp.CheckpointManager) -> None:
    """Close after `wait_until_finished` (which raises a failed save): orbax raises that
    failure again here, so it is only logged."""
    try:
        manager.close()
    except Exception as e:
        log.warning("closing the checkpoint manager: %s", _first_line(e))


# Storage failures worth naming as such (tensorstore puts them at the end of a long line).
_STORAGE_ERRORS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                   "Permission denied")


def _save_error(manager: ocp.CheckpointManager, e: BaseException) -> CheckpointError:
    text = str(e)
    reason = next((r for r in _STORAGE_ERRORS if r in text), None)
    if reason is None:
        reason = f"{type(e).__name__}: {_first_line(e)}"
    try:
        free = f", {shutil.disk_usage(manager.directory).free / 2**20:.1f} MiB free"
    except OSError:
        free = ""
    manager.reload()
    return CheckpointError(
        f"saving a checkpoint in {manager.directory} failed ({reason}{free}); the checkpoints "
        f"saved before it are intact (steps {sorted(manager.all_steps())}): free space or fix "
        "the storage, then re-run the same command to resume")


# OSErrors that mean a file of the checkpoint is missing or misplaced: damage, not I/O trouble.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _io_error(manager, step: int, e: OSError, tries: int) -> CheckpointError:
    return CheckpointError(
        f"could not read the checkpoint at step {step} in {manager.directory} ({tries} "
        f"tr{'y' if tries == 1 else 'ies'}, {type(e).__name__}: {_first_line(e)}); it was left "
        "as it is: check the storage, then re-run")


class _Corrupt(Exception):
    """The checkpoint at a step cannot be read as a checkpoint (its cause is chained)."""


def _read(manager: ocp.CheckpointManager, step: int, abstract_state: Any
          ) -> tuple[int, Any, dict]:
    """(step, state, meta), or raises _Corrupt when the files are damaged, CheckpointError when
    they are fine but unreachable (OSError after READ_TRIES tries) or hold another model's
    state. MemoryError and anything raised outside orbax pass through unchanged."""
    for attempt in range(1, READ_TRIES + 1):
        try:
            args = ocp.args.Composite(state=_state_restore(manager, step, abstract_state),
                                      meta=ocp.args.JsonRestore())
            restored = manager.restore(step, args=args)
            return step, restored.state, dict(restored.meta or {})
        except MemoryError:
            raise
        except _MISSING as e:
            raise _Corrupt() from e  # a file of the checkpoint is missing: damage, not I/O
        except OSError as e:
            if attempt == READ_TRIES:
                raise _io_error(manager, step, e, READ_TRIES) from None
            log.warning("reading the checkpoint at step %d failed (%s: %s); retrying", step,
                        type(e).__name__, _first_line(e))
            time.sleep(RETRY_WAIT_S)
        except Exception as e:  # orbax/tensorstore raise ValueError, JSONDecodeError, ...
            mismatch = _mismatch(manager, step, abstract_state)
            if mismatch:
                raise CheckpointError(
                    f"the checkpoint at step {step} in {manager.directory} holds another "
                    f"model's state ({mismatch}); it was left as it is: restore it with the "
                    "config that wrote it, or use a new directory") from None
            if _readable(manager, step, abstract_state):
                raise CheckpointError(
                    f"the checkpoint at step {step} in {manager.directory} is readable but "
                    f"could not be restored onto this run's devices ({type(e).__name__}: "
                    f"{_first_line(e)}); it was left as it is") from e
            raise _Corrupt() from e
    raise AssertionError("unreachable")


def _arrays(tree) -> dict[str, tuple]:
    """{'params/conv/kernel': (shape, dtype)} of a pytree of arrays or of orbax's metadata of
    one: on disk dataclass fields and optax tuples are dict keys, so paths are compared as the
    plain names and indices they are made of."""
    return {_leaf_name(path): (tuple(x.shape), str(np.dtype(x.dtype)))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _leaf_name(path) -> str:
    """'params/conv/kernel' of a key path (see `_arrays`)."""
    return "/".join(str(next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)),
                             k)) for k in path)


def _saved_tree(manager: ocp.CheckpointManager, step: int):
    """The state item's metadata tree of the checkpoint at `step` (None when it has none)."""
    saved = manager.item_metadata(step).state
    return getattr(saved, "tree", saved)


def _mismatch(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> str:
    """'' when the checkpoint's own metadata is unreadable or lists exactly the arrays
    `abstract_state` asks for (then a failed restore means damaged data); otherwise the first
    array that differs."""
    try:
        saved = _saved_tree(manager, step)
        if saved is None:
            return ""
        have, want = _arrays(saved), _arrays(abstract_state)
    except Exception:  # unreadable metadata is damage, reported by the caller
        return ""
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            def spell(a):
                return "nothing" if a is None else f"{a[1]}{list(a[0])}"
            return (f"{len(have)} arrays, this model has {len(want)}; {name}: saved "
                    f"{spell(have.get(name))}, expected {spell(want.get(name))}")
    return ""


def _readable(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> bool:
    """Whether the checkpoint reads in full onto one local device: tells damaged files apart
    from a failure of the requested restore itself (e.g. its shardings)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract_state)
    try:
        manager.restore(step, args=ocp.args.Composite(
            state=_state_restore(manager, step, target), meta=ocp.args.JsonRestore()))
    except MemoryError:
        raise
    except _MISSING:
        return False
    except OSError as e:  # the storage failed again: say so, decide nothing
        raise _io_error(manager, step, e, 1) from None
    except Exception:
        return False
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _move_aside(directory: str, step: int) -> str | None:
    """Rename `directory/step` to `step.corrupt` (or `step.corrupt.1`, ... when an earlier one
    of that step is there: a step can go bad again after a run re-saved it). Returns the new
    path, or None when the directory is gone or cannot be renamed (nothing is deleted either
    way)."""
    bad = os.path.join(directory, str(step))
    if not os.path.isdir(bad):
        return None
    aside, n = f"{bad}.corrupt", 0
    while os.path.exists(aside):
        n += 1
        aside = f"{bad}.corrupt.{n}"
    try:
        os.rename(bad, aside)
    except OSError as e:
        log.warning("could not move %s aside (%s)", bad, _first_line(e))
        return None
    return aside


def restore_step(manager: ocp.CheckpointManager, abstract_state: Any, step: int
                 ) -> tuple[int, Any, dict]:
    """(step, state, meta) of the checkpoint at `step` (no fallback: the caller asked for it;
    nothing is renamed)."""
    if step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}; "
                                f"saved steps: {sorted(manager.all_steps())}")
    try:
        return _read(manager, step, abstract_state)
    except _Corrupt as e:
        cause = e.__cause__
        raise CheckpointError(
            f"the checkpoint at step {step} in {manager.directory} is unreadable "
            f"({type(cause).__name__}: {_first_line(cause)})") from None


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   read_only: bool = False) -> tuple[int, Any, dict] | None:
    """Restore the newest readable checkpoint into `abstract_state` (a pytree of
    jax.ShapeDtypeStruct with shardings, e.g. from jax.eval_shape). Returns
    (step, state, meta), or None when the directory holds no checkpoint.

    Only a checkpoint whose files cannot be read as a checkpoint counts as corrupt: it is
    skipped for the previous one and, unless `read_only` (evaluation, `load_trained`), renamed
    `STEP.corrupt` so the resumed run can save that step again. An I/O error (after retries)
    or a state of another shape raises CheckpointError and renames nothing."""
    steps = sorted(manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            return _read(manager, step, abstract_state)
        except _Corrupt as e:
            cause = e.__cause__
            log.warning("checkpoint at step %d is unreadable (%s: %s); %s", step,
                        type(cause).__name__, _first_line(cause),
                        "falling back to the previous one" if i + 1 < len(steps)
                        else "no older checkpoint to fall back to")
        if not read_only and jax.process_index() == 0:
            aside = _move_aside(str(manager.directory), step)
            if aside:
                log.warning("moved the unreadable checkpoint aside to %s", aside)
        if not read_only:
            manager.reload()
    if steps:
        raise CheckpointError(
            f"no readable checkpoint in {manager.directory} (tried steps {steps})"
            + ("" if read_only else "; unreadable ones were moved aside with a .corrupt suffix"))
    return None
