"""python benchmarks/simclr_step_profile.py [--steps 2] [--trace_dir /tmp/simclr_trace]
    [--width 0.25 --stem strided --batch 256]   # the main job's network

Where the CPU time of the SimCLR train step goes: the step of benchmarks/simclr_throughput.py
(ResNet-18, CIFAR stem, 32 px, batch 128, `noaug`, the XLA flag of ssl_jax.xla_flags.configure_cpu) traced
with jax.profiler for a few steps after warm-up; prints the traced XLA ops' time per step,
grouped by op kind (the HLO name without its number), and writes the compiled HLO next to the
trace so that a fusion's operands can be looked up. Times are what the profiler records on the
XLA:CPU threads (tracing slows the step; compare shares, not absolute numbers).
"""
from __future__ import annotations

import collections
import glob
import os
import re
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
import simclr_throughput as bench  # noqa: E402


def op_times(trace_dir: str, steps: int) -> collections.Counter:
    """Seconds per step of every traced XLA op kind in the newest trace under trace_dir."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    kinds = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Python frames ($...) and the executor's own spans contain the ops.
                if name.startswith(("$", "Thunk")):
                    continue
                kinds[re.sub(r"\.\d+$", "", name)] += event.duration_ps / 1e12 / steps
    return kinds


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_integer("steps", 2, None, flag_values=FLAGS)
flags.DEFINE_string("trace_dir", "runs/simclr_trace", None, flag_values=FLAGS)
flags.DEFINE_integer("top", 12, None, flag_values=FLAGS)
flags.DEFINE_float("width", 1.0, "ResNet-18 width multiplier", flag_values=FLAGS)
flags.DEFINE_enum("stem", "cifar", ["cifar", "strided"], None, flag_values=FLAGS)
flags.DEFINE_integer("batch", 128, None, flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    import jax

    from ssl_jax import train
    from ssl_jax.data import augment

    config = bench.jax_config("resnet18", args.batch, 32, "float32", args.width, args.stem)
    method, tx, schedule, batch, init = bench.jax_step_parts(config, args.batch, 32)
    preset = augment.get_preset(config.augment.preset, **bench.NOAUG_OVERRIDES)
    state = init(jax.random.key(0))
    step = jax.jit(train.make_train_step(method, tx, preset, schedule), donate_argnums=0)
    key = jax.random.key(1)
    compiled = step.lower(state, batch, key).compile()
    os.makedirs(args.trace_dir, exist_ok=True)
    with open(os.path.join(args.trace_dir, "step_hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    with jax.profiler.trace(args.trace_dir):
        for _ in range(args.steps):
            state, metrics = compiled(state, batch, key)
            jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t0) / args.steps
    kinds = op_times(args.trace_dir, args.steps)
    total = sum(kinds.values())
    print(f"{wall:.2f} s per traced step (wall); traced op time {total:.2f} s per step")
    for name, seconds in kinds.most_common(args.top):
        print(f"{seconds:7.3f} s  {100 * seconds / total:5.1f}%  {name}")


if __name__ == "__main__":
    errors.run(main)
