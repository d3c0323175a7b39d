"""Every distinct convolution of a ResNet-18 train step, timed alone: ssl_jax against torch.

    .venv/bin/python benchmarks/conv_geometry.py --width 0.25 --stem strided --images 512
    .venv/bin/python benchmarks/conv_geometry.py --width 0.25 --stem cifar --images 256
    taskset -c 0 .venv/bin/python benchmarks/conv_geometry.py --threads 1   # one core
    .venv/bin/python benchmarks/conv_geometry.py --stem cifar --images 256 --kernel_grad_chunk_mib 0

The step benchmark (simclr_throughput.py) says how fast a whole step is; this says which
convolutions make the difference. The model's convolutions are collected by intercepting its
`Conv` modules on an `images`-image batch (SimCLR's batch 256 = 512 images through the
network), grouped by geometry (input shape, kernel, stride, padding, output channels) and
each group timed once:
- JAX: `ssl_jax.models.conv.Conv` as the model uses it, in the CPU form `cpu_form()` picks (the
  form is printed), with the XLA flag of ssl_jax.xla_flags.configure_cpu; jit-compiled, one
  CPU device.
- torch: `F.conv2d` with channels-last tensors (torch's faster CPU layout for these sizes).
Four passes each: the forward, the input gradient, the weight gradient, and all three in one
call (what a train step needs). Medians over `reps` runs after one warm-up call. The last
column is what one step spends on the group: "all" times how often it occurs, except for the
stem, whose input is the images: a step needs no gradient there, so it counts forward +
weight gradient (`fwd+dw`, timed as one call). The totals are the step's convolution time
per side. `--threads 1` under `taskset -c 0` shows which passes use a second core.
"""
from __future__ import annotations

import collections
import os
import statistics
import time

from absl import flags

from ssl_jax import errors, xla_flags

FLAGS = flags.FlagValues()
flags.DEFINE_float("width", 0.25, "ResNet-18 width multiplier", flag_values=FLAGS)
flags.DEFINE_enum("stem", "strided", ["cifar", "strided"],
                  "cifar (3x3 stride 1, no max-pool) or strided (7x7/2 + max-pool)",
                  flag_values=FLAGS)
flags.DEFINE_integer("images", 512, "images through the network per step (2 x batch)",
                     flag_values=FLAGS)
flags.DEFINE_integer("size", 32, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("reps", 7, "timed calls per pass", flag_values=FLAGS)
flags.DEFINE_float("kernel_grad_chunk_mib", 2.0, "the library form's weight-gradient chunk "
                   "(ssl_jax.models.conv.KERNEL_GRAD_CHUNK_BYTES) in MiB; 0: the whole batch "
                   "at once", flag_values=FLAGS)
flags.DEFINE_integer("threads", 0, "torch's threads; 1 also keeps XLA's Eigen convolutions on "
                     "one thread (0: all cores)", flag_values=FLAGS)

Geometry = collections.namedtuple("Geometry", "shape kernel strides padding features")
PASSES = ("fwd", "dx", "dw", "all", "fwd+dw")


def model_convolutions(width: float, stem: str, images: int, size: int) -> collections.Counter:
    """Counter of Geometry -> occurrences over the ResNet-18's convolutions for one forward."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ssl_jax.models import get_model
    from ssl_jax.models.conv import Conv

    model = get_model("resnet18", width=width, cifar_stem=stem == "cifar")
    found = collections.Counter()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, Conv) and context.method_name == "__call__":
            padding = module.padding if isinstance(module.padding, str) else tuple(
                tuple(p) for p in module.padding)
            strides = module.strides or 1  # flax takes an int for every dimension too
            strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
            found[Geometry(tuple(args[0].shape), tuple(module.kernel_size), strides, padding,
                           module.features)] += 1
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((images, size, size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=True), x)
    return found


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_jax(geometry: Geometry, reps: int) -> tuple[str, dict]:
    """(cpu form, {pass: ms}) of ssl_jax's Conv at this geometry."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ssl_jax.models.conv import NHWC_HWIO, Conv, cpu_form

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=geometry.shape), jnp.float32)
    conv = Conv(geometry.features, geometry.kernel, geometry.strides, padding=geometry.padding,
                use_bias=False)
    params = conv.init(jax.random.PRNGKey(0), x)
    out = conv.apply(params, x)
    grad = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    kernel = params["params"]["kernel"]
    form = cpu_form(x, kernel, geometry.strides, geometry.padding if isinstance(
        geometry.padding, str) else list(geometry.padding),
        dimension_numbers=NHWC_HWIO)

    def vjp(p, x, g, wrt):
        return jax.vjp(lambda p, x: conv.apply(p, x), p, x)[1](g)[wrt]

    calls = {
        "fwd": jax.jit(conv.apply),
        "dx": jax.jit(lambda p, x, g: vjp(p, x, g, 1)),
        "dw": jax.jit(lambda p, x, g: vjp(p, x, g, 0)),
        "all": jax.jit(lambda p, x, g: (conv.apply(p, x), vjp(p, x, g, slice(None)))),
        "fwd+dw": jax.jit(lambda p, x, g: (conv.apply(p, x), vjp(p, x, g, 0))),
    }
    args = {"fwd": (params, x)}
    return form, {name: _median_ms(lambda: jax.block_until_ready(
        call(*args.get(name, (params, x, grad)))), reps) for name, call in calls.items()}


def time_torch(geometry: Geometry, reps: int) -> dict:
    """{pass: ms} of torch's conv2d, channels-last, at this geometry (padding as explicit
    per-side pads, applied with F.pad where they are uneven)."""
    import jax
    import torch
    import torch.nn.functional as F

    n, h, w, c = geometry.shape
    pads = (jax.lax.padtype_to_pads((h, w), geometry.kernel, geometry.strides, geometry.padding)
            if isinstance(geometry.padding, str) else list(geometry.padding))
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(geometry.features, c, *geometry.kernel).contiguous(
        memory_format=torch.channels_last)
    even = all(lo == hi for lo, hi in pads)

    def conv(x, weight):
        if not even:
            x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
        return F.conv2d(x, weight, stride=geometry.strides,
                        padding=tuple(p[0] for p in pads) if even else 0)

    with torch.no_grad():
        grad = torch.randn_like(conv(x, weight))
    x.requires_grad_(True)
    weight.requires_grad_(True)

    def forward():
        with torch.no_grad():
            conv(x, weight)

    def backward(inputs):
        return lambda: torch.autograd.grad(conv(x, weight), inputs, grad)

    times = {"fwd": _median_ms(forward, reps), "dx": _median_ms(backward([x]), reps),
             "dw": _median_ms(backward([weight]), reps),
             "all": _median_ms(backward([x, weight]), reps)}
    x.requires_grad_(False)  # the images: autograd computes no input gradient
    times["fwd+dw"] = _median_ms(backward([weight]), reps)
    return times


def describe(geometry: Geometry) -> str:
    n, h, w, c = geometry.shape
    kh, kw = geometry.kernel
    return (f"{h}x{w}x{c} -> {geometry.features}, {kh}x{kw}/{geometry.strides[0]}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = errors.parse_script_flags(FLAGS, argv, doc=__doc__)
    if min(args.images, args.size, args.reps) < 1:
        raise errors.UserError("--images, --size and --reps must be >= 1")
    if args.kernel_grad_chunk_mib < 0:
        raise errors.UserError("--kernel_grad_chunk_mib must be >= 0 (0: no chunks)")
    if args.threads == 1:  # Eigen's convolutions on the calling thread only
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    xla_flags.configure_cpu()
    import torch
    torch.set_num_threads(args.threads or os.cpu_count())
    from ssl_jax.models import conv
    module_chunk = conv.KERNEL_GRAD_CHUNK_BYTES  # restored after: tests call main() in-process
    conv.KERNEL_GRAD_CHUNK_BYTES = (int(args.kernel_grad_chunk_mib * 2**20)
                                    if args.kernel_grad_chunk_mib else 2**62)
    try:
        return time_convolutions(args)
    finally:
        conv.KERNEL_GRAD_CHUNK_BYTES = module_chunk


def time_convolutions(args) -> list[dict]:
    """Time every geometry of the model on both sides, print the table, return its rows."""
    rows = []
    geometries = model_convolutions(args.width, args.stem, args.images, args.size)
    header = (f"{'convolution':<28} {'count':>5} {'form':<15} "
              + " ".join(f"{p:>6}" for p in PASSES) + " | "
              + " ".join(f"{p:>6}" for p in PASSES) + " | per step")
    chunks = (f"{args.kernel_grad_chunk_mib:g} MiB chunks" if args.kernel_grad_chunk_mib
              else "whole batch")
    print(f"ResNet-18 width {args.width}, {args.stem} stem, {args.images} images of "
          f"{args.size} px (library weight gradients: {chunks}); ms per call, "
          f"JAX | torch channels-last")
    print(header)
    for index, (geometry, count) in enumerate(geometries.items()):
        form, jax_ms = time_jax(geometry, args.reps)
        torch_ms = time_torch(geometry, args.reps)
        step_pass = "fwd+dw" if index == 0 else "all"  # the stem (called first) sees images
        row = dict(convolution=describe(geometry), count=count, form=form, jax_ms=jax_ms,
                   torch_ms=torch_ms, step_ms={"jax": count * jax_ms[step_pass],
                                               "torch": count * torch_ms[step_pass]})
        rows.append(row)
        print(f"{describe(geometry):<28} {count:>5} {form:<15} "
              + " ".join(f"{jax_ms[p]:6.1f}" for p in PASSES) + " | "
              + " ".join(f"{torch_ms[p]:6.1f}" for p in PASSES)
              + f" | {row['step_ms']['jax']:7.1f} {row['step_ms']['torch']:7.1f}", flush=True)
    jax_total = sum(r["step_ms"]["jax"] for r in rows)
    torch_total = sum(r["step_ms"]["torch"] for r in rows)
    print(f"total per step (what a train step computes of every convolution): JAX "
          f"{jax_total:.1f} ms, "
          f"torch {torch_total:.1f} ms (JAX / torch time {jax_total / torch_total:.2f})")
    return rows


if __name__ == "__main__":
    from ssl_jax import host_memory
    host_memory.restart_with_huge_pages(__name__)  # huge pages (ssl_jax/host_memory.py)
    errors.run(main)
