"""Input pipeline throughput: images/s of the tf.data host pipeline alone, beside the step's demand.

    .venv/bin/python benchmarks/pipeline_throughput.py                   # 32 and 224 px, 1 and all threads
    .venv/bin/python benchmarks/pipeline_throughput.py --dataset imagenet2012 --data-dir DIR \\
        --sizes 224 --step-method simclr --step-variant imagenet --step-batch 64
    .venv/bin/python benchmarks/pipeline_throughput.py --step-method ""  # the pipeline only
    .venv/bin/python benchmarks/pipeline_throughput.py --tiny            # seconds: a check that it runs

What is timed: `ssl_jax.data.pipeline.train_iterator`, the trainer's own host pipeline (read
records, cache, shuffle, decode, one random-resized crop + flip per view, batch), iterated to
numpy batches; nothing goes to a device. The views are the augmentation preset's (2 for SimCLR
and BYOL), so one image = its V views, as in the step benchmarks. `--threads N` runs the whole
pipeline on a private pool of N threads with single-threaded ops, so images/s / N is the rate
per core. Warm-up batches (cache fill, shuffle buffer, prefetch) are not timed; then
`--batches` batches are timed, `--repeats` times, and the median run is reported.

The step's demand: the train step's images/s for `--step-method` (a configs/ name) at
`--step-variant` with `--step-override`s, built and timed at each size by
benchmarks/simclr_throughput.py's `time_step` (the suite's step timing too). The default is
the main job's SimCLR (configs/simclr.py:quickstart). `pipeline / step` >= 1 means the data
keeps up with the step. On a CPU the pipeline and the step share the cores, so both rates are
upper bounds of what a training run gets; on a GPU the step runs on the device and the pipeline
on the host's cores.

The source images matter: the built-in dataset's are 32 px PNGs (64 px for some configs),
which decode far faster than ImageNet's ~400 x 350 JPEGs; at 224 px the crop resizes them up.
Pass `--dataset imagenet2012 --data-dir DIR` (any prepared TFDS dataset) for a real decode cost.
"""
from __future__ import annotations

import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)


def parse_threads(text: str, flag: str = "--threads") -> list[int]:
    """'1,all' -> [1, os.cpu_count()]; every entry a positive int or 'all'."""
    cores = str(os.cpu_count() or 1)
    return parse_ints(",".join(cores if i == "all" else i for i in text.split(",")), flag)


def pipeline_rate(builder, image_size: int, batch_size: int, threads: int, preset: str = "simclr_imagenet",
                  batches: int = 20, warmup: int = 3, repeats: int = 3, split: str = "train",
                  cache: bool = True, seed: int = 0) -> dict:
    """Images/s of `pipeline.train_iterator` on `threads` threads at `image_size`, with the
    views of augmentation `preset`: median of `repeats` runs of `batches` batches each, after
    `warmup` untimed batches."""
    from ssl_jax.data import augment, pipeline

    if min(batches, warmup, repeats, batch_size, image_size, threads) < 1:
        raise ValueError(f"batches={batches}, warmup={warmup}, repeats={repeats}, "
                         f"batch={batch_size}, size={image_size}, threads={threads} must all "
                         "be >= 1")
    views = augment.get_preset(preset).views
    it = pipeline.train_iterator(builder, split, batch_size, views, image_size, seed=seed,
                                 cache=cache, threads=threads)
    t0 = time.perf_counter()
    for _ in range(warmup):
        batch = next(it)
    warmup_s = time.perf_counter() - t0
    shape = batch["image"].shape
    if shape != (batch_size, len(views), image_size, image_size, 3):
        raise RuntimeError(f"pipeline gave images of shape {shape}, expected "
                           f"{(batch_size, len(views), image_size, image_size, 3)}")
    run_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        run_s.append(time.perf_counter() - t0)
    img_s = batches * batch_size / statistics.median(run_s)
    return {"dataset": builder.info.full_name, "split": split, "size": image_size,
            "batch": batch_size, "views": len(views), "threads": threads, "cache": cache,
            "warmup_batches": warmup, "warmup_s": warmup_s, "batches_per_run": batches,
            "run_s": run_s, "img_s": img_s, "img_s_per_thread": img_s / threads}


def step_config(method: str, variant: str, overrides: list[str], size: int, batch: int):
    """The config `configs/METHOD.py:VARIANT` with `--step-override`s, at `size` and `batch`."""
    from configs import common

    _, config = common.config_from_spec(method, variant)
    for item in overrides:
        common.apply_override(config, item)
    config.dataset.image_size = size
    config.batch_size = batch
    return config


def measure(builder, sizes: list[int], threads: list[int], batch: int, preset: str,
            batches: int, warmup: int, repeats: int, split: str = "train", cache: bool = True,
            step: dict | None = None, step_img_s: dict | None = None, log=print) -> list[dict]:
    """One row per (size, threads): the pipeline's images/s and, when `step` (keyword args of
    `step_config` minus size and batch, plus steps/warmup/repeats of `time_step`) or a known
    `step_img_s` {size: img/s} is given, the train step's images/s at that size and the ratio."""
    import simclr_throughput as bench

    rows = []
    for size in sizes:
        demand = dict(step_img_s or {}).get(size)
        step_result = None
        if demand is None and step:
            config = step_config(step["method"], step["variant"], step.get("overrides", []),
                                 size, step["batch"])
            step_result = bench.time_step(config, step["batch"], size, "aug", step["steps"],
                                          step["warmup"], step["repeats"])
            demand = step_result["img_s"]
            log(f"step {step['method']}:{step['variant']} at {size} px: {demand:.1f} img/s")
        for n in threads:
            row = pipeline_rate(builder, size, batch, n, preset, batches, warmup, repeats,
                                split, cache)
            row["step_img_s"] = demand
            row["pipeline_over_step"] = row["img_s"] / demand if demand else None
            if step_result is not None:
                row["step"] = step_result
            log(f"pipeline {size} px, {n} thread(s): {row['img_s']:.1f} img/s "
                f"({row['img_s_per_thread']:.1f} per thread)"
                + (f"; step {demand:.1f} img/s -> pipeline/step {row['pipeline_over_step']:.2f}"
                   if demand else ""))
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| size | threads | pipeline img/s | per thread | step img/s | pipeline / step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        step = f"{r['step_img_s']:.1f}" if r.get("step_img_s") else "-"
        ratio = f"{r['pipeline_over_step']:.2f}" if r.get("pipeline_over_step") else "-"
        lines.append(f"| {r['size']} px | {r['threads']} | {r['img_s']:.1f} | "
                     f"{r['img_s_per_thread']:.1f} | {step} | {ratio} |")
    return "\n".join(lines)


TINY = dict(sizes="32,64", threads="1", batch=8, batches=3, warmup=1, repeats=2,
            dataset="shapes_textures/tiny", step_override=["model.width=0.125"], step_batch=8,
            step_steps=2, step_warmup=1, step_repeats=2)


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_string("dataset", None, "TFDS name (default shapes_textures/small32)",
                    flag_values=FLAGS)
flags.DEFINE_string("data-dir", None, "TFDS data_dir (default: TFDS's)", flag_values=FLAGS)
flags.DEFINE_string("split", "train", None, flag_values=FLAGS)
flags.DEFINE_bool("no-cache", False, "do not cache the encoded records "
                  "in memory (the trainer caches when config.dataset.cache is on)",
                  flag_values=FLAGS)
flags.DEFINE_string("sizes", None, "image sizes in px (default 32,224)", flag_values=FLAGS)
flags.DEFINE_string("threads", None, "thread counts, e.g. 1,2 or 1,all (default 1,all)",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch", None, "images per batch (default 256)", flag_values=FLAGS)
flags.DEFINE_string("preset", "simclr_imagenet", "augmentation preset (its views)",
                    flag_values=FLAGS)
flags.DEFINE_integer("batches", None, "timed batches per run (20)", flag_values=FLAGS)
flags.DEFINE_integer("warmup", None, "untimed batches first (3)", flag_values=FLAGS)
flags.DEFINE_integer("repeats", None, "timed runs, median reported (3)", flag_values=FLAGS)
flags.DEFINE_string("step-method", "simclr", "configs/ name of the step whose "
                    "demand is shown ('' = none)", flag_values=FLAGS)
flags.DEFINE_string("step-variant", "quickstart", None, flag_values=FLAGS)
flags.DEFINE_multi_string("step-override", None,
                          "config override for the step, repeatable (model.width=0.5)",
                          flag_values=FLAGS)
flags.DEFINE_integer("step-batch", None, "step batch (default 256)", flag_values=FLAGS)
flags.DEFINE_integer("step-steps", None, "timed steps per run (4)", flag_values=FLAGS)
flags.DEFINE_integer("step-warmup", None, "untimed steps (1)", flag_values=FLAGS)
flags.DEFINE_integer("step-repeats", None, "timed runs (3)", flag_values=FLAGS)
flags.DEFINE_bool("tiny", False, "tiny sizes: a check that it runs", flag_values=FLAGS)
flags.DEFINE_string("out", "", "also write the rows as JSON here", flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    defaults = dict(sizes="32,224", threads="1,all", batch=256, batches=20, warmup=3, repeats=3,
                    dataset="shapes_textures/small32", step_override=[], step_batch=256,
                    step_steps=4, step_warmup=1, step_repeats=3)
    for key, value in (TINY if args.tiny else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = parse_ints(args.sizes, "--sizes")
    threads = parse_threads(args.threads)

    import json

    from ssl_jax.data import pipeline

    builder = pipeline.load_builder(args.dataset, args.data_dir)
    step = None
    if args.step_method:
        step = dict(method=args.step_method, variant=args.step_variant,
                    overrides=args.step_override, batch=args.step_batch, steps=args.step_steps,
                    warmup=args.step_warmup, repeats=args.step_repeats)
        step_config(args.step_method, args.step_variant, args.step_override, sizes[0], 8)
    rows = measure(builder, sizes, threads, args.batch, args.preset, args.batches, args.warmup,
                   args.repeats, args.split, not args.no_cache, step)
    print(markdown(rows))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"loadavg": os.getloadavg(), "cpu_count": os.cpu_count(), "rows": rows},
                      f, indent=1)


def parse_ints(text: str, flag: str) -> list[int]:
    """'32,224' -> [32, 224]; a bad or non-positive item is a one-line error naming `flag`."""
    out = []
    for item in filter(None, text.split(",")):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{flag} item {item!r} is not a positive int")
        out.append(value)
    if not out:
        raise ValueError(f"{flag}={text!r} is empty")
    return out


if __name__ == "__main__":
    errors.run(main)
