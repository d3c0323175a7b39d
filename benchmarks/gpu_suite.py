"""GPU suite: train-step images/s and MFU, input pipeline, all-pairs CKA and linear probe speed.

    .venv/bin/python benchmarks/gpu_suite.py --out runs/gpu_suite          # on a GPU, full sizes
    .venv/bin/python benchmarks/gpu_suite.py --tiny --out runs/gpu_suite_tiny   # CPU, seconds
    .venv/bin/python benchmarks/gpu_suite.py --sections steps,probe --peak-tflops 989 --out DIR

Writes DIR/gpu_suite.json (every number, the device, jax version, load average) and
DIR/gpu_suite.md (a short table), and prints the table. Sections (`--sections`, all by default):

- steps: the trainer's SimCLR and BYOL train steps (configs/simclr.py:imagenet and
  configs/byol.py:imagenet: ResNet-50, bfloat16 compute, LARS, their device augmentation),
  built and timed by benchmarks/simclr_throughput.py's `time_step` on one device: compile and
  `--warmup` steps untimed, then `--repeats` runs of `--steps` steps, median run. images/s
  counts source images (one image = its 2 views). MFU = FLOPs per step / step time / peak,
  with FLOPs per step from XLA's cost analysis of the compiled step (`compiled.cost_analysis()`,
  every op of the step: forward, backward, augmentation, optimizer) and the peak dense bf16
  FLOP/s of the device from PEAK_BF16_TFLOPS (by `device_kind`) or `--peak-tflops`; a device
  not in the table has MFU "unknown".
- pipeline: images/s of the tf.data host pipeline alone (decode, crop, flip, batch) at the
  steps' image size, on 1 and all host threads (`--pipeline-threads`), beside the SimCLR step's
  images/s: benchmarks/pipeline_throughput.py's `measure`.
- cka: all-pairs minibatch CKA (ssl_jax.similarity's minibatch_cka_update) of two
  ResNet-18-shaped models (20 x 20 layers, random activations) over `--cka-n` examples, with
  benchmarks/cka_all_pairs.py's pool, FLOP count and float32 GEMM ceiling; median of
  `--cka-reps` runs after one compile run.
- probe: ssl_jax.evaluation.linear_probe (L-BFGS, one fit at a fixed C, no grid search) on
  `--probe-n` x `--probe-dim` random Gaussian features whose labels come from a planted linear
  map plus Gumbel noise, so test top-1 well above chance shows the probe learned. The solver is
  compiled by a first call that stops at once (tol = inf); the second call is timed.

Without a GPU the full sizes are refused; `--tiny` (or `--cpu` with explicit small sizes) runs
everything on the CPU in seconds, as tests/test_gpu_suite.py does.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

SECTIONS = ("steps", "pipeline", "cka", "probe")
METHODS = ("simclr", "byol")

# Dense (no sparsity) bfloat16 tensor-core peak in TFLOP/s, from NVIDIA's datasheets, matched
# against jax's device_kind (e.g. "NVIDIA H100 80GB HBM3") by substring, first match wins.
# None: a variant whose peak differs and is not in this table (NVL boards, Grace Hopper), so
# the suite says "unknown" rather than guess; --peak-tflops sets it.
PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("NVL", None),
    ("GH200", None),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),       # SXM5
    ("H200", 989.0),       # SXM
    ("A100", 312.0),       # SXM4 and PCIe
)

FULL = dict(model="resnet50", width=1.0, size=224, batch=256, steps=10, warmup=3, repeats=3,
            pipeline_dataset="shapes_textures/tiny", pipeline_batches=20, pipeline_warmup=3,
            pipeline_threads="1,all", cka_n=50_000, cka_batch=256, cka_reps=3,
            cka_gemm_size=4096, probe_n=1_200_000, probe_dim=2048, probe_classes=1000,
            probe_test=50_000, probe_max_iter=100)
TINY = dict(model="resnet18", width=0.125, size=32, batch=8, steps=2, warmup=1, repeats=2,
            pipeline_dataset="shapes_textures/tiny", pipeline_batches=3, pipeline_warmup=1,
            pipeline_threads="1", cka_n=512, cka_batch=128, cka_reps=2, cka_gemm_size=256,
            probe_n=2048, probe_dim=64, probe_classes=10, probe_test=512, probe_max_iter=50)


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak of `device_kind` from PEAK_BF16_TFLOPS, or None (unknown)."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def step_config(method: str, args):
    """configs/METHOD.py:imagenet at the suite's model, width, size, batch and dtype."""
    from configs import common

    _, config = common.config_from_spec(method, "imagenet")
    config.model.update(name=args.model, width=args.width, cifar_stem=False)
    config.dataset.image_size = args.size
    config.batch_size = args.batch
    config.compute_dtype = args.compute_dtype
    return config


def run_steps(args, peak: float | None, log) -> dict:
    import simclr_throughput as bench

    out = {}
    for method in args.methods:
        r = bench.time_step(step_config(method, args), args.batch, args.size, args.variant,
                            args.steps, args.warmup, args.repeats)
        if not math.isfinite(r["final_loss"]):
            raise errors.UserError(f"{method} step gave a non-finite loss {r['final_loss']}")
        flops, lowered = r["flops_per_step"], r["flops_per_step_lowered"]
        r["achieved_tflops"] = flops / r["step_s"] / 1e12 if flops else None
        r["peak_tflops"] = peak
        r["mfu"] = r["achieved_tflops"] / peak if (peak and flops) else None
        if r["mfu"] is not None and r["mfu"] > 1:
            log(f"warning: {method} MFU {r['mfu']:.2f} > 1: the peak "
                f"({peak} TFLOP/s) is too low for this device")
        if flops and lowered and not 0.8 < flops / lowered < 1.25:
            log(f"warning: {method}: XLA counts {flops:.3g} FLOP/step in the compiled step but "
                f"{lowered:.3g} before optimisation; MFU uses the compiled count")
        log(f"{method}: {r['img_s']:.1f} img/s, {fmt(r['achieved_tflops'], '.3g')} TFLOP/s, "
            f"MFU {fmt(r['mfu'], '.3g')} (compile {r['compile_s']:.1f} s)")
        out[method] = r
    return out


def run_pipeline(args, step_img_s: float | None, log) -> dict:
    import pipeline_throughput as pt

    from ssl_jax.data import pipeline

    builder = pipeline.load_builder(args.pipeline_dataset, args.data_dir)
    rows = pt.measure(builder, [args.size], args.pipeline_threads, args.batch,
                      "simclr_imagenet", args.pipeline_batches, args.pipeline_warmup,
                      args.repeats, step_img_s={args.size: step_img_s} if step_img_s else None,
                      log=log)
    return {"rows": rows, "markdown": pt.markdown(rows)}


def run_cka(args, log) -> dict:
    import jax
    import jax.numpy as jnp

    import cka_all_pairs as cka

    widths = cka.layer_widths(1)
    pool = [[[jnp.asarray(a) for a in model] for model in cka.make_pool(widths, args.cka_batch,
                                                                         8, seed)]
            for seed in (0, 1)]
    sizes = cka.batch_sizes(args.cka_n, args.cka_batch)
    go = cka.run_ssl_jax(pool[0], pool[1], sizes)
    t0 = time.perf_counter()
    result = go()  # compiles every batch shape
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.cka_reps):
        t0 = time.perf_counter()
        go()
        times.append(time.perf_counter() - t0)
    ceiling = cka.gemm_ceiling_fn(args.cka_gemm_size)
    gemm = max(ceiling() for _ in range(3))
    seconds = statistics.median(times)
    gflops = cka.useful_flops(widths, sizes) / seconds / 1e9
    out = {"n": args.cka_n, "batch": args.cka_batch, "layers": len(widths),
           "pairs": len(widths) ** 2, "first_run_s": first_s, "run_s": times, "seconds": seconds,
           "examples_per_s": args.cka_n / seconds, "gflops": gflops,
           "gemm_size": args.cka_gemm_size, "gemm_ceiling_gflops": gemm,
           "fraction_of_gemm": gflops / gemm, "device": jax.devices()[0].device_kind,
           "cka_range": [float(result.min()), float(result.max())]}
    log(f"cka: N={args.cka_n}, {out['pairs']} pairs in {seconds:.3f} s "
        f"({gflops:.1f} GFLOP/s, {out['fraction_of_gemm']:.2f} of the {gemm:.0f} GFLOP/s GEMM)")
    return out


def planted_features(n: int, n_test: int, dim: int, classes: int, seed: int = 0):
    """(train_x, train_y, test_x, test_y) on the default device: x ~ N(0, 1), y = argmax of
    x @ W (W ~ N(0, 4 / dim)) plus Gumbel noise, i.e. a softmax with a planted linear map."""
    import jax
    import jax.numpy as jnp

    def draw(key, m):
        kx, kg = jax.random.split(key)
        x = jax.random.normal(kx, (m, dim), jnp.float32)
        w = jax.random.normal(jax.random.key(seed), (dim, classes), jnp.float32) * (2 / dim**0.5)
        y = jnp.argmax(x @ w + jax.random.gumbel(kg, (m, classes)), axis=1).astype(jnp.int32)
        return x, y

    k_train, k_test = jax.random.split(jax.random.key(seed + 1))
    return (*jax.jit(draw, static_argnums=1)(k_train, n),
            *jax.jit(draw, static_argnums=1)(k_test, n_test))


def run_probe(args, log) -> dict:
    import jax

    from ssl_jax.evaluation.linear_probe import linear_probe

    data = planted_features(args.probe_n, args.probe_test, args.probe_dim, args.probe_classes)
    jax.block_until_ready(data)
    kwargs = dict(C=args.probe_c, num_classes=args.probe_classes, max_iter=args.probe_max_iter,
                  calibrate=False)
    t0 = time.perf_counter()
    linear_probe(*data, tol=float("inf"), **kwargs)  # compiles the solver, stops at once
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = linear_probe(*data, tol=args.probe_tol, **kwargs)
    seconds = time.perf_counter() - t0
    iters = result["final_iterations"]
    out = {"n": args.probe_n, "dim": args.probe_dim, "classes": args.probe_classes,
           "n_test": args.probe_test, "C": args.probe_c, "max_iter": args.probe_max_iter,
           "tol": args.probe_tol, "compile_and_setup_s": compile_s, "seconds": seconds,
           "iterations": iters, "s_per_iteration": seconds / iters if iters else None,
           "examples_per_s": args.probe_n / seconds, "top1": result["top1"],
           "chance_top1": 100.0 / args.probe_classes, "device": jax.devices()[0].device_kind}
    log(f"probe: {args.probe_n} x {args.probe_dim}, {args.probe_classes} classes: "
        f"{seconds:.2f} s, {iters:.0f} L-BFGS iterations, test top-1 {result['top1']:.1f}% "
        f"(chance {out['chance_top1']:.1f}%)")
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    return "unknown" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [f"GPU suite on **{report['device']}** ({report['platform']}, jax {report['jax']}, "
             f"load average {report['loadavg_start'][0]:.1f} -> {report['loadavg_end'][0]:.1f})",
             "", "| measurement | rate | detail |", "|---|---|---|"]
    for method, r in report.get("steps", {}).items():
        lines.append(
            f"| {method} train step, {a['model']} width {a['width']}, {a['compute_dtype']}, "
            f"batch {a['batch']}, {a['size']} px | {r['img_s']:.1f} img/s | "
            f"MFU {fmt(r['mfu'], '.3g')} ({fmt(r['achieved_tflops'], '.3g')} of peak "
            f"{fmt(r['peak_tflops'], 'g')} TFLOP/s; {r['flops_per_step'] or 0:.3g} FLOP/step) |")
    for r in report.get("pipeline", {}).get("rows", []):
        vs = (f"; SimCLR step {r['step_img_s']:.1f} img/s, pipeline/step "
              f"{r['pipeline_over_step']:.2f}" if r.get("step_img_s") else "")
        lines.append(f"| tf.data host pipeline, {r['dataset']}, {r['size']} px, "
                     f"{r['threads']} thread(s) | {r['img_s']:.1f} img/s | "
                     f"{r['img_s_per_thread']:.1f} img/s per thread{vs} |")
    if "cka" in report:
        c = report["cka"]
        lines.append(f"| all-pairs CKA, {c['pairs']} pairs, N = {c['n']} | {c['seconds']:.3f} s "
                     f"({c['examples_per_s']:.0f} examples/s) | {c['gflops']:.1f} GFLOP/s, "
                     f"{c['fraction_of_gemm']:.2f} of a {c['gemm_size']}^3 f32 GEMM |")
    if "probe" in report:
        p = report["probe"]
        lines.append(f"| linear probe (L-BFGS, C = {p['C']:g}), {p['n']} x {p['dim']}, "
                     f"{p['classes']} classes | {p['seconds']:.2f} s | {p['iterations']:.0f} "
                     f"iterations, test top-1 {p['top1']:.1f}% (chance {p['chance_top1']:.1f}%) |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("out", "runs/gpu_suite", "output folder", flag_values=FLAGS)
flags.DEFINE_bool("tiny", False, "tiny sizes: the whole suite on CPU in seconds",
                  flag_values=FLAGS)
flags.DEFINE_bool("cpu", False, "allow a run without a GPU at the sizes given",
                  flag_values=FLAGS)
flags.DEFINE_string("sections", ",".join(SECTIONS), f"subset of {SECTIONS}", flag_values=FLAGS)
flags.DEFINE_string("methods", ",".join(METHODS), "train steps to time", flag_values=FLAGS)
flags.DEFINE_float("peak-tflops", None,
                   "the device's peak FLOP/s for MFU, in TFLOP/s (default: PEAK_BF16_TFLOPS by "
                   "device kind)", flag_values=FLAGS)
flags.DEFINE_enum("compute-dtype", "bfloat16", ["bfloat16", "float32"], None, flag_values=FLAGS)
flags.DEFINE_enum("variant", "aug", ["aug", "noaug"],
                  "aug: the configs' device augmentation in the step, as in training",
                  flag_values=FLAGS)
flags.DEFINE_string("data-dir", None, "TFDS data_dir of --pipeline-dataset", flag_values=FLAGS)
flags.DEFINE_float("probe-c", 1.0, "the probe's C (one fit)", flag_values=FLAGS)
flags.DEFINE_float("probe-tol", 1e-5, None, flag_values=FLAGS)
# Sizes: default None, then FULL's or (--tiny) TINY's value.
SIZED = {"model": str, "width": float, "size": int, "batch": int, "steps": int,
         "warmup": int, "repeats": int, "pipeline_dataset": str, "pipeline_batches": int,
         "pipeline_warmup": int, "pipeline_threads": str, "cka_n": int, "cka_batch": int,
         "cka_reps": int, "cka_gemm_size": int, "probe_n": int, "probe_dim": int,
         "probe_classes": int, "probe_test": int, "probe_max_iter": int}
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float}
for _name, _kind in SIZED.items():
    _DEFINE[_kind](_name.replace("_", "-"), None,
                   f"default {FULL[_name]} ({TINY[_name]} with --tiny)", flag_values=FLAGS)


def parse_args(argv: list[str] | None):
    args = errors.parse_script_flags(FLAGS, argv, doc=__doc__)
    for name in SIZED:
        if getattr(args, name) is None:
            setattr(args, name, (TINY if args.tiny else FULL)[name])
    args.sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        raise errors.UserError(f"--sections: unknown {bad or 'empty'}; valid: {', '.join(SECTIONS)}")
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise errors.UserError(f"--methods: unknown {bad or 'empty'}; valid: {', '.join(METHODS)}")
    for name, kind in SIZED.items():
        if kind in (int, float) and not getattr(args, name) > 0:
            raise errors.UserError(f"--{name.replace('_', '-')}={getattr(args, name)} must be > 0")
    if args.cka_batch < 4 or args.cka_n < args.cka_batch:
        raise errors.UserError(f"--cka-batch={args.cka_batch} must be >= 4 and <= --cka-n="
                               f"{args.cka_n}")
    if args.probe_classes < 2:
        raise errors.UserError(f"--probe-classes={args.probe_classes} must be >= 2")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise errors.UserError(f"--peak-tflops={args.peak_tflops} must be > 0")
    import pipeline_throughput as pt
    args.pipeline_threads = pt.parse_threads(args.pipeline_threads, "--pipeline-threads")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import jax

    backend = jax.default_backend()
    if backend != "gpu" and not (args.tiny or args.cpu):
        raise errors.UserError(f"no GPU: jax.default_backend() is {backend!r}; the full sizes "
                               "need a GPU. On CPU run --tiny, or --cpu with explicit sizes")
    device = jax.devices()[0]
    peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops(device.device_kind)
    os.makedirs(args.out, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    report = {"device": device.device_kind, "platform": device.platform,
              "devices": len(jax.devices()), "jax": jax.__version__,
              "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "loadavg_start": os.getloadavg(), "time_utc": time.strftime(
                  "%Y-%m-%d %H:%M:%S", time.gmtime()),
              "peak_tflops_source": ("--peak-tflops" if args.peak_tflops is not None
                                     else "PEAK_BF16_TFLOPS" if peak else "unknown"),
              "args": {k: v for k, v in vars(args).items()}}
    log(f"device: {device.device_kind} ({device.platform}); peak bf16 "
        f"{fmt(peak, 'g')} TFLOP/s ({report['peak_tflops_source']})")
    sections = {
        "steps": lambda: run_steps(args, peak, log),
        "pipeline": lambda: run_pipeline(
            args, report.get("steps", {}).get("simclr", {}).get("img_s"), log),
        "cka": lambda: run_cka(args, log),
        "probe": lambda: run_probe(args, log)}
    report["section_wall_s"] = {}
    for name in SECTIONS:  # in this order: the pipeline is shown beside the SimCLR step
        if name in args.sections:
            t0 = time.perf_counter()
            report[name] = sections[name]()
            report["section_wall_s"][name] = time.perf_counter() - t0
    report["loadavg_end"] = os.getloadavg()
    text = markdown(report)
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return report


if __name__ == "__main__":
    errors.run(main)
