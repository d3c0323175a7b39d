"""THE trainer: mesh -> data -> init (eval_shape) -> jit step -> checkpoints -> evals.

One readable loop for every method; the method supplies init / loss / features /
after_update (the contract: ssl_jax/methods/base.py) and nothing here is method-specific.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
import functools
from functools import partial
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from ssl_jax import checkpointing, evaluators, metrics as metrics_lib, optim, sharding
from ssl_jax import online_probe
from ssl_jax.data import augment, copy_paste, pipeline
from ssl_jax.methods import Method, get_method

log = logging.getLogger("ssl_jax.train")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # batch_stats and any method state (EMA targets, queues, banks)
    opt_state: Any
    # The online linear probe's parameters and optimizer state (ssl_jax/online_probe.py); None
    # when it is off, as in runs saved before it existed (their checkpoints have no such item).
    probe: online_probe.ProbeState | None = None


def checkpoint_tree(state: TrainState) -> dict:
    """`state` (or its abstract shapes) as checkpointed: its fields by name, without `probe`
    when there is none. A None field would be a node that checkpoints saved before the probe
    existed lack, so restoring them would fail; without it their files and a probe-less run's
    are the same."""
    tree = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if tree["probe"] is None:
        del tree["probe"]
    return tree


def restore(manager, abstract: TrainState, step: int | None = None, read_only: bool = False):
    """(step, TrainState, meta) of the checkpoint at `step` (None: the newest readable one), or
    None when there is none."""
    tree = checkpoint_tree(abstract)
    if step is None:
        restored = checkpointing.restore_latest(manager, tree, read_only=read_only)
    else:
        restored = checkpointing.restore_step(manager, tree, step)
    if restored is None:
        return None
    saved_step, state, meta = restored
    return saved_step, TrainState(**state), meta


# ---------------------------------------------------------------------------------------------
# Building blocks (pure; the tests call them directly)
# ---------------------------------------------------------------------------------------------

def to_float(images_uint8: jax.Array) -> jax.Array:
    return images_uint8.astype(jnp.float32) / 255.0


def device_augment(rng: jax.Array, images: jax.Array, preset: augment.Preset) -> jax.Array:
    """images: uint8 [B, V, H, W, 3] (already cropped/flipped on the host) ->
    float [B, V, H, W, 3] in [0, 1] after each view's colour/blur/solarize ops."""
    x = to_float(images)
    keys = jax.random.split(rng, len(preset.views))
    return jnp.stack([augment.augment_views(keys[v], x[:, v], preset.views[v])
                      for v in range(len(preset.views))], axis=1)


def init_state(method: Method, tx: optax.GradientTransformation, rng: jax.Array, image_shape,
               probe: online_probe.OnlineProbe | None = None) -> TrainState:
    images = jnp.zeros((1, *image_shape), jnp.float32)
    params, model_state = method.init(rng, images)
    probe_state = None
    if probe is not None:
        num_features = jax.eval_shape(method.features, params, model_state, images).shape[-1]
        probe_state = probe.init(num_features)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), probe=probe_state)


def step_views(preset: augment.Preset, state: TrainState, batch: dict, rng: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """(augmented views [B, V, H, W, 3] in [0, 1], the rng `loss` gets) of one step.
    Randomness is fold_in(rng, step), so a resumed run draws the same augmentations as an
    uninterrupted one."""
    rng = jax.random.fold_in(rng, state.step)
    aug_rng, loss_rng = jax.random.split(rng)
    return device_augment(aug_rng, batch["image"], preset), loss_rng


def method_loss_and_grads(method: Method, state: TrainState, views: jax.Array, batch: dict,
                          loss_rng: jax.Array):
    """((loss, (new_model_state, metrics)), grads) of the method's loss on `views`."""
    extra = {"index": batch["index"]} if method.needs_index else {}
    if method.target_keys:
        extra["targets"] = {k: batch[k] for k in method.target_keys}

    def loss_fn(params):
        return method.loss(params, state.model_state, views, batch["label"], loss_rng, **extra)

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def loss_and_grads(method: Method, preset: augment.Preset, state: TrainState, batch: dict,
                   rng: jax.Array):
    """((loss, (new_model_state, metrics)), grads) of one step on a global batch
    {"image": uint8 [B, V, H, W, 3], "label": [B]} (+ "index": [B] for methods with
    `needs_index`, e.g. memory banks)."""
    views, loss_rng = step_views(preset, state, batch, rng)
    return method_loss_and_grads(method, state, views, batch, loss_rng)


def check_whole_image_views(preset: augment.Preset, method: str) -> None:
    """A method with dense targets needs views that are the whole image, unflipped: the
    pipeline does not crop or flip the targets with them."""
    for view in preset.views:
        whole = view.crop == "center" and view.center_crop_fraction == 1.0 and not view.flip
        if not whole:
            raise ValueError(f"method {method!r} trains on dense targets, which are not cropped "
                             f"or flipped: use --config.augment.preset=dense (augment preset "
                             f"{preset.name!r} crops or flips)")


def make_train_step(method: Method, tx: optax.GradientTransformation, preset: augment.Preset,
                    schedule: optax.Schedule,
                    probe: online_probe.OnlineProbe | None = None) -> Callable:
    """(state, batch, rng) -> (state, metrics): `loss_and_grads`, then the optimizer update and
    the method's after_update (EMA targets, queues, banks); with a `probe`, also one step of
    the online linear probe on the first view's features before the update."""

    def step_fn(state: TrainState, batch: dict, rng: jax.Array):
        views, loss_rng = step_views(preset, state, batch, rng)
        (loss, (model_state, metrics)), grads = method_loss_and_grads(method, state, views, batch,
                                                                      loss_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  model_state=model_state, opt_state=opt_state)
        new_state = method.after_update(new_state)
        # param_norm and state_norm are the divergence guard's view of what would be
        # checkpointed (the loss and gradient are those of the parameters before the update).
        # Computed in float32, they are not finite when a value is NaN/inf or exploded past
        # ~1e19 (its square overflows), which no healthy run comes near: a checkpoint never
        # holds exploded parameters, BatchNorm statistics, EMA targets or queues.
        metrics = dict(metrics, learning_rate=schedule(state.step),
                       grad_norm=optax.global_norm(grads),
                       param_norm=_norm(new_state.params),
                       state_norm=_norm(new_state.model_state))
        if probe is not None:
            features = method.features(state.params, state.model_state, views[:, 0])
            probe_state, probe_metrics = probe.update(state.probe, features, batch["label"])
            new_state = new_state.replace(probe=probe_state)
            metrics.update(probe_metrics)
        return new_state, metrics

    return step_fn


def _norm(tree) -> jax.Array:
    """Global L2 norm of the floating-point leaves of `tree`, in float32 (0 when none)."""
    return optax.global_norm([x.astype(jnp.float32) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)])


@functools.lru_cache(maxsize=None)
def _jit_features(features_fn: Callable, mesh):
    """One jitted extractor per (features function, mesh), so periodic evals compile once."""

    # Outputs replicated: each process can read the whole global batch (multi-host gather).
    @partial(jax.jit, out_shardings=sharding.replicated(mesh))
    def feats(variables, batch):
        f = features_fn(*variables, to_float(batch["image"])).astype(jnp.float32)
        return f, batch["label"], batch["valid"]

    return feats


def extract_features(features_fn: Callable, variables: tuple, iterator, mesh
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`features_fn(*variables, images [B, H, W, 3] in [0, 1]) -> [B, D]` over every valid
    example of an eval iterator, sharded over the mesh. For a trained method:
    `extract_features(method.features, (state.params, state.model_state), ...)`.
    Returns (features [N, D] float32, labels [N]) on every process."""
    feats = _jit_features(features_fn, mesh)
    xs, ys = [], []
    for batch in iterator:
        g = sharding.global_batch({k: batch[k] for k in ("image", "label", "valid")}, mesh)
        f, y, valid = jax.device_get(feats(variables, g))
        xs.append(f[valid])
        ys.append(y[valid])
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------------------------------------
# Config checks: one-line errors that name the bad value and the valid choices
# ---------------------------------------------------------------------------------------------

def check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable ({e.strerror}); "
                         "pass --workdir pointing to a writable directory") from None


# Fields a resumed run may change without changing what it trains.
RESUME_MAY_CHANGE = ("log_every", "checkpoint_every", "keep_checkpoints", "dataset.data_dir",
                     "eval.", "evals.")
# Fields a resumed run may change that do change how it trains from there on (the way out of a
# divergence: a lower learning rate, clipping, a longer warmup); the run says so when they do.
# None of them is in the checkpoint (the schedule is a function of the step, and clipping
# leaves the optimizer state's structure alone), so the saved state fits either way. Values
# are those of runs saved before the key existed.
RESUME_MAY_RETUNE = {"optimizer.base_lr": None, "optimizer.warmup_fraction": None,
                     "optimizer.warmup_steps": 0, "optimizer.clip_grad_norm": 0.0}


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> str:
    """Refuse to resume a workdir trained with another config: its checkpoints would not fit
    the new model, or would silently continue a different schedule. Keys the saved config
    lacks were added to the code after that run and are not compared (their defaults keep the
    old behaviour). Returns '' or one line naming the RESUME_MAY_RETUNE fields that change."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return ""
    with open(path) as f:
        saved = _flatten(json.load(f))
    new = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
    changed = [k for k in sorted(saved) if saved[k] != new.get(k)
               and k not in RESUME_MAY_RETUNE
               and not any(k == f or (f.endswith(".") and k.startswith(f))
                           for f in RESUME_MAY_CHANGE)]
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        more = f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""
        raise ValueError(f"workdir {workdir!r} holds a run with another config ({diff}{more}); "
                         "use a new --workdir, or the saved settings to resume")
    retuned = [f"{k}: {saved.get(k, old)!r} -> {new.get(k)!r}"
               for k, old in RESUME_MAY_RETUNE.items()
               if k in new and saved.get(k, old) != new[k]]
    return f"resuming with a changed {', '.join(retuned)}" if retuned else ""


def without_probe_if_saved_without(workdir: str, config: ml_collections.ConfigDict
                                   ) -> ml_collections.ConfigDict:
    """`config`, or when `workdir` holds a run saved before the online probe existed (its
    config.json has no `online_probe`), a copy with the probe off: its checkpoints have no
    probe state, so the resumed run trains on without one."""
    path = os.path.join(workdir, "config.json")
    if not online_probe.from_config(config) or not os.path.exists(path) \
            or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return config
    with open(path) as f:
        if "online_probe" in json.load(f):
            return config
    config = copy.deepcopy(config)
    with config.unlocked():
        config.online_probe.enabled = False
    print("Resuming a run saved before the online linear probe existed: it stays off",
          flush=True)
    return config


def divergence_hint(config, workdir: str, last_saved: int | None) -> str:
    """What to do after a divergence, as one line ending in the command that resumes from the
    last checkpoint (always one of finite state: a diverged step is never saved) with a 10x
    lower learning rate and gradient clipping. The run's own run_train.py command line when
    this process is one, else the config fields to change."""
    oc = config.optimizer
    fix = {"optimizer.base_lr": float(f"{oc.base_lr / 10:.3g}"),
           "optimizer.clip_grad_norm": float(oc.get("clip_grad_norm", 0.0) or 1.0)}
    where = (f"from the last good checkpoint (step {last_saved})" if last_saved
             else "from the start (no checkpoint was saved yet)")
    command = resume_command(fix)
    if command is None:
        changes = ", ".join(f"{k}={v}" for k, v in fix.items())
        return f"re-run with {changes} on workdir {workdir} to resume {where}"
    return f"to resume {where} with a lower learning rate and gradient clipping, run: {command}"


def resume_command(overrides: dict, argv: list[str] | None = None) -> str | None:
    """This process's run_train.py command line (`argv`, default sys.argv) with each
    `--config.KEY=VALUE` of `overrides` replacing any earlier setting of KEY; None when the
    process is not run_train.py (e.g. an experiment calling train())."""
    import shlex
    import sys
    argv = list(sys.argv if argv is None else argv)
    if not argv or os.path.basename(argv[0]) != "run_train.py":
        return None
    out, skip = [sys.executable, argv[0]], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in {f"--config.{k}" for k in overrides}:
            skip = "=" not in arg  # `--config.KEY VALUE`: drop the value too
            continue
        out.append(arg)
    out += [f"--config.{k}={v}" for k, v in overrides.items()]
    return shlex.join(out)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def total_steps(config, num_train: int) -> int:
    if config.get("num_steps"):
        return int(config.num_steps)
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {num_train} training "
                         "examples; lower batch_size")
    return int(round(config.num_epochs * steps_per_epoch))


def with_total_steps(config: ml_collections.ConfigDict, steps: int,
                     num_train: int | None = None) -> ml_collections.ConfigDict:
    """A copy of `config` with `total_steps = steps` (the run length in optimizer steps) and,
    when given, `num_train` (the size of the training split's index space: memory banks)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.total_steps = int(steps)
        if num_train is not None:
            config.num_train = int(num_train)
    return config


def build_optimizer(config, steps: int):
    """(schedule, optax transformation) from config.optimizer for a run of `steps` steps."""
    oc = config.optimizer
    warmup = int(oc.get("warmup_steps", 0) or round(oc.get("warmup_fraction", 0.0) * steps))
    schedule = optim.learning_rate_schedule(oc.base_lr, config.batch_size, steps, warmup,
                                            oc.get("scale_with_batch", True))
    return schedule, optim.build_optimizer(oc.name, schedule, oc.weight_decay,
                                           oc.get("momentum", 0.9), oc.get("lars_eta", 1e-3),
                                           clip_grad_norm=oc.get("clip_grad_norm", 0.0),
                                           lr_multipliers=dict(oc.get("lr_multipliers", {})))


def abstract_train_state(method: Method, tx, mesh, image_size: int,
                         shard_state_bytes: int = sharding.SHARD_STATE_BYTES,
                         probe: online_probe.OnlineProbe | None = None):
    """(jitted init fn rng -> TrainState, its abstract shapes with shardings). Parameters,
    optimizer and probe state are replicated; model-state leaves of >= shard_state_bytes
    (memory banks, queues) are row-sharded over the devices (`sharding.state_leaf_sharding`)."""
    def init(rng):
        return init_state(method, tx, rng, (image_size, image_size, 3), probe)

    shapes = jax.eval_shape(init, jax.random.key(0))
    repl = sharding.replicated(mesh)
    shardings = shapes.replace(
        step=repl, params=jax.tree.map(lambda _: repl, shapes.params),
        opt_state=jax.tree.map(lambda _: repl, shapes.opt_state),
        model_state=jax.tree.map(
            lambda s: sharding.state_leaf_sharding(mesh, s, shard_state_bytes),
            shapes.model_state),
        probe=jax.tree.map(lambda _: repl, shapes.probe))
    init_fn = jax.jit(init, out_shardings=shardings)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)
    return init_fn, abstract


def load_trained(workdir: str, mesh=None, step: int | None = None):
    """(config, method, state) of the newest readable checkpoint of a run_train workdir, or of
    the checkpoint at `step`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r} is not an ssl_jax run directory (no config.json)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    mesh = mesh or sharding.make_mesh()
    method = get_method(config.method, config)
    _, tx = build_optimizer(config, 1)
    _, abstract = abstract_train_state(method, tx, mesh, config.dataset.image_size,
                                       probe=online_probe.from_config(config))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    # A reader: it changes nothing on disk (an unreadable checkpoint is skipped, not moved).
    manager = checkpointing.make_manager(ckpt_dir, keep=None, save_every=1, async_save=False,
                                         read_only=True)
    restored = restore(manager, abstract, step, read_only=True)
    manager.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    return config, method, restored[1]


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

def finished_run(workdir: str, step: int, meta: dict) -> dict[str, float]:
    """A re-run of a finished run: says so and returns its final metrics. final_metrics.json is
    written only when missing (a run killed between its last checkpoint and that file), from
    the last checkpoint's metrics, which are the same record."""
    path = os.path.join(workdir, "final_metrics.json")
    if os.path.exists(path):
        with open(path) as f:
            final = json.load(f)
    else:
        final = dict(meta.get("metrics") or {})
        if jax.process_index() == 0:
            with open(path, "w") as f:
                json.dump(final, f, indent=2)
    print(f"Run in {workdir} is complete (its last checkpoint is step {step}); nothing to do. Outputs are "
          "unchanged; use a new --workdir to train again.", flush=True)
    return final


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train `config.method` and return the final metrics. Resumes from the newest readable
    checkpoint in `workdir/checkpoints` when there is one."""
    check_workdir(workdir)
    preset = augment.get_preset(config.augment.preset, **dict(config.augment.get("overrides", {})))

    # --- Mesh and data ---
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(config.batch_size, mesh)
    builder = pipeline.load_builder(config.dataset.name, config.dataset.get("data_dir"))
    num_train = pipeline.num_examples(builder, config.dataset.train_split)
    steps = total_steps(config, num_train)
    size = config.dataset.image_size

    # Methods with step-dependent state (BYOL's tau schedule) read the run length from
    # config.total_steps, memory banks their size from config.num_train; a copy, so the
    # caller's (possibly locked) config is left as it was.
    _, index_space = pipeline.split_offsets(builder, config.dataset.train_split)
    config = with_total_steps(config, steps, index_space)
    config = without_probe_if_saved_without(workdir, config)
    retuned = check_same_run(workdir, config)
    method = get_method(config.method, config)
    if len(preset.views) != method.num_views:
        raise ValueError(f"augment preset {config.augment.preset!r} makes {len(preset.views)} "
                         f"view(s) but method {config.method!r} needs {method.num_views}")

    if method.target_keys:
        check_whole_image_views(preset, config.method)
    schedule, tx = build_optimizer(config, steps)
    probe = online_probe.from_config(config)
    evals = config.get("evals", {})
    evaluators.check_evals(evals)

    # --- State: abstract shapes first, so restore never materialises a throwaway init ---
    rng = jax.random.key(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    init_fn, abstract = abstract_train_state(method, tx, mesh, size, probe=probe)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    manager = checkpointing.make_manager(ckpt_dir, keep=config.get("keep_checkpoints", 3),
                                         save_every=1)
    restored = restore(manager, abstract)
    if restored is None:
        state = init_fn(init_rng)
        start = 0
    else:
        start, state, saved_meta = restored
        if start >= steps:
            # Finished: nothing to train, so nothing is rewritten (no empty final_metrics.json,
            # config.json, metrics.jsonl line or TensorBoard file).
            manager.close()
            return finished_run(workdir, start, saved_meta)
        log.info("resumed from %s at step %d", ckpt_dir, start)
        print(f"Resuming from checkpoint at step {start} in {ckpt_dir}", flush=True)
    if retuned:
        print(retuned[0].upper() + retuned[1:], flush=True)

    meta = {"config": config.to_dict(), "num_train": num_train, "total_steps": steps}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, default=str)

    train_step = jax.jit(make_train_step(method, tx, preset, schedule, probe), donate_argnums=0)
    # Configs saved before copy-paste existed have no sub-config: off.
    paste = copy_paste.from_config(config.augment.copy_paste, builder,
                                   config.dataset.train_split) \
        if "copy_paste" in config.augment else None
    data = pipeline.train_iterator(
        builder, config.dataset.train_split, config.batch_size,
        preset.views, size, seed=config.seed, start_step=start,
        cache=config.dataset.get("cache", True),
        with_index=method.needs_index, copy_paste=paste, extra_keys=method.target_keys)
    writer = metrics_lib.MetricWriter(workdir)

    eval_data = evaluators.data_of_run(config, builder)

    def evaluate(names: list[str], state: TrainState, step: int) -> dict[str, float]:
        network = evaluators.network_of_run(config, method, state, label=f"step {step}")
        inputs = evaluators.EvalInputs.from_network(network, eval_data, mesh)
        return evaluators.scalars(evaluators.run(names, evals, inputs))

    # --- Loop ---
    final: dict[str, float] = {}
    log_every, ckpt_every = config.log_every, config.checkpoint_every
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"{config.method}",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    last_saved = start or None
    try:
        for step in bar:
            batch = sharding.global_batch(next(data), mesh)
            state, step_metrics = train_step(state, batch, step_rng)
            seen += config.batch_size
            done = step + 1
            is_last = done == steps
            if done % log_every == 0 or done % ckpt_every == 0 or is_last:
                host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                metrics_lib.check_finite(done, host, hint=lambda: divergence_hint(
                    config, workdir, last_saved))
                rate = seen / (time.perf_counter() - t0)
                host["images_per_sec"] = rate
                writer.write(done, host)
                bar.set_postfix(loss=f"{host['loss']:.4f}", img_s=f"{rate:.0f}")
                t0, seen = time.perf_counter(), 0
                final = host
            due = evaluators.due(evals, done, is_last)
            if due:
                ev = evaluate(due, state, done)
                writer.write(done, ev)
                final.update(ev)
                bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.items()))
            if done % ckpt_every == 0 or is_last:
                # The step's metrics ride along in the checkpoint's meta, so every checkpoint
                # is tagged with its training progress (e.g. a pretext task's accuracy).
                checkpointing.save(manager, done, checkpoint_tree(state), dict(meta, metrics=host),
                                   force=True)
                last_saved = done
    finally:
        try:
            checkpointing.wait_until_finished(manager)
        finally:
            checkpointing.close(manager)
            writer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(final, f, indent=2)
    return final
