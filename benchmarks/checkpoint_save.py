"""python benchmarks/checkpoint_save.py [--saves 5] [--devices 8] [--orbax_default]

Seconds per synchronous checkpoint save of the SimCLR smoke run's train state
(configs/simclr.py:smoke: ResNet-18 x0.125 and its optimizer state, replicated over `--devices`
forced CPU devices), through ssl_jax.checkpointing (make_manager + save). The first save is
reported apart (it includes orbax's and jax's one-time work); then the mean of the others, and
one restore. `--orbax_default` saves through a manager with orbax's default handlers instead
(StandardSave, the global jax.Array handler: replica-parallel writes of every array), which is
what the per-manager handler of ssl_jax/checkpointing.py replaces.
"""
from __future__ import annotations

import os
import tempfile
import time

from absl import flags

from ssl_jax import errors

# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_integer("saves", 5, "saves timed after the first", flag_values=FLAGS)
flags.DEFINE_integer("devices", 8, "forced CPU devices the state is replicated over",
                     flag_values=FLAGS)
flags.DEFINE_bool("orbax_default", False, "save through orbax's default handlers instead",
                  flag_values=FLAGS)


def main() -> None:
    a = errors.parse_script_flags(FLAGS, doc=__doc__)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={a.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from ssl_jax import xla_flags
    xla_flags.configure_cpu()

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from configs import simclr
    from ssl_jax import checkpointing, sharding, train
    from ssl_jax.methods import get_method

    config = train.with_total_steps(simclr.get_config("smoke"), 10, 64)
    method = get_method(config.method, config)
    _, tx = train.build_optimizer(config, 10)
    init_fn, abstract = train.abstract_train_state(method, tx, sharding.make_mesh(),
                                                   config.dataset.image_size)
    state = train.checkpoint_tree(init_fn(jax.random.key(0)))
    leaves = jax.tree.leaves(state)
    size = sum(x.size * x.dtype.itemsize for x in leaves)
    print(f"{jax.device_count()} devices, {len(leaves)} arrays, {size / 2**20:.2f} MiB")

    with tempfile.TemporaryDirectory() as d:
        if a.orbax_default:
            manager = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False), item_names=("state", "meta"))

            def save(step):
                manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({})))
        else:
            manager = checkpointing.make_manager(d, keep=None, save_every=1, async_save=False)

            def save(step):
                checkpointing.save(manager, step, state, {})
        times = []
        for step in range(a.saves + 1):
            start = time.perf_counter()
            save(step)
            manager.wait_until_finished()
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        if a.orbax_default:
            manager.restore(a.saves, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(train.checkpoint_tree(abstract))))
        else:
            checkpointing.restore_step(manager, train.checkpoint_tree(abstract), a.saves)
        restore_s = time.perf_counter() - start
        manager.close()
    print(f"first save {times[0]:.2f} s; next {a.saves}: mean {np.mean(times[1:]):.2f} s "
          f"(min {min(times[1:]):.2f}, max {max(times[1:]):.2f}); restore {restore_s:.2f} s")


if __name__ == "__main__":
    from ssl_jax import host_memory
    host_memory.restart_with_huge_pages(__name__)  # huge pages (ssl_jax/host_memory.py)
    errors.run(main)
