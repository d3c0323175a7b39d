"""Benchmark: exact streaming linear CKA over N = 200,000 examples of width p = 2,048 in bounded
memory (target: peak RSS < 2 GB; the data alone would be 2 x 1.6 GB in float32).

    .venv/bin/python benchmarks/streaming_cka_memory.py [--n 200000] [--p 2048] [--chunk 4096]
        [--check_n 20000] [--out outputs/streaming_cka_memory.json]

Chunks are generated on the fly (x Gaussian with per-feature offsets; y = a permuted, rescaled
copy of x plus noise, so CKA is far from 0), folded into `streaming_cka_update`, and both the
biased and debiased CKA are read from the same sums. Peak RSS is the process high-water mark
(getrusage), JAX/XLA runtime included. As an exactness check, the first `--check_n` examples are
also streamed separately and compared with `linear_cka` on those examples held in memory.
"""
from __future__ import annotations

import json
import os
import resource
import time

import numpy as np

from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

import jax  # noqa: E402

from ssl_jax import similarity as sim  # noqa: E402


def chunks(n, p, chunk, seed=0):
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(p).astype(np.float32) * 5
    perm = rng.permutation(p)
    scale = rng.uniform(0.5, 2.0, p).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, p), dtype=np.float32) + offset
        y = x[:, perm] * scale + 1.5 * rng.standard_normal((m, p), dtype=np.float32)
        yield x, y


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_integer("n", 200_000, None, flag_values=FLAGS)
flags.DEFINE_integer("p", 2048, None, flag_values=FLAGS)
flags.DEFINE_integer("chunk", 4096, None, flag_values=FLAGS)
flags.DEFINE_integer("check_n", 20_000, None, flag_values=FLAGS)
flags.DEFINE_string("out", "", None, flag_values=FLAGS)


def main():
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    state = None
    for x, y in chunks(args.n, args.p, args.chunk):
        state = sim.streaming_cka_init(x, y) if state is None else state
        state = sim.streaming_cka_update(state, x, y)
    biased = sim.streaming_cka_result(state, debiased=False)
    debiased = sim.streaming_cka_result(state, debiased=True)
    elapsed = time.perf_counter() - t0
    rss_stream = peak_rss_mb()

    # Exactness on a prefix that fits in memory (same generator, so same examples).
    parts = list(chunks(args.check_n, args.p, args.chunk))
    streamed = [sim.streaming_linear_cka(parts, d) for d in (False, True)]
    x = np.concatenate([a for a, _ in parts])
    y = np.concatenate([b for _, b in parts])
    full = [float(sim.linear_cka(x, y, debiased=d)) for d in (False, True)]

    result = {
        "machine": f"{os.cpu_count()}-core CPU, jax {jax.__version__} ({jax.devices()[0].platform})",
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "n": args.n, "p": args.p, "chunk": args.chunk,
        "cka_biased": biased, "cka_debiased": debiased, "seconds": elapsed,
        "peak_rss_mb_streaming": rss_stream,
        "check_n": args.check_n, "check_streamed_biased_debiased": streamed,
        "check_in_memory_biased_debiased": full,
        "check_max_abs_diff": max(abs(a - b) for a, b in zip(streamed, full)),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    errors.run(main)
