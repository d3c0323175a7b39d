"""Benchmark: all-layer-pairs minibatch CKA between two ResNet-18-shaped models.

    .venv/bin/python benchmarks/cka_all_pairs.py [--n 10000] [--batch 256] [--spatial 1]
        [--baseline_batches 4] [--out outputs/cka_all_pairs.json]

Activations are random (this measures the similarity code, not the models): 20 layers per model
with ResNet-18 channel widths (stem conv 64, maxpool 64, the 2 ReLU outputs of each of the 8
basic blocks: 4 x 64, 4 x 128, 4 x 256, 4 x 512, avgpool 512, fc 1000). Conv layers keep
`--spatial` x `--spatial` positions flattened (1 = global-average-pooled widths 64..512).
All 400 pairs of unbiased minibatch CKA (ratio of summed HSIC_1) over N examples at `--batch`:

  ssl_jax   `minibatch_cka_update`: one U-centred Gram per layer, one GEMM for all pairs.
  (a) torch per pair, torch_cka style: per batch and pair, rebuild both Grams, HSIC via
      trace(K @ L) (O(b^3)), `.item()` per term.
  (b) numpy per pair, Kornblith Demo style: gram_linear, center_gram(unbiased=True) with its
      symmetry check, HSIC as a dot of flattened centred Grams.

Baselines run `--baseline_batches` batches and are extrapolated linearly to N (their per-batch
cost is constant); on those batches their CKA matrices are checked against ssl_jax's.
GFLOP/s counts the useful work of the ssl_jax algorithm (Grams 2 b^2 p per layer, the pair GEMM
2 L1 L2 b^2) against the best of a 4096^3 float32 jnp.matmul on the same machine.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssl_jax import similarity as sim  # noqa: E402

CHANNELS = [64, 64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
DENSE = [512, 1000]


def layer_widths(spatial: int) -> list[int]:
    return [c * spatial * spatial for c in CHANNELS] + DENSE


def make_pool(widths, batch, n_pool, seed):
    """n_pool distinct batches per model (cycled over N; generating 10k x 2 x 20 layers costs
    more memory than it tells). Both models see the same latent per batch (the same images),
    through model-specific random projections, so cross-model CKA is not ~0."""
    rng = np.random.default_rng(seed)
    latents = np.random.default_rng(1234)
    pool = []
    for _ in range(n_pool):
        z = latents.standard_normal((batch, 32)).astype(np.float32)
        model = []
        for w in widths:
            proj = rng.standard_normal((32, w)).astype(np.float32) / np.sqrt(32)
            model.append(np.maximum(z @ proj + rng.standard_normal((batch, w), dtype=np.float32), 0))
        pool.append(model)
    return pool


def gemm_ceiling_fn(size=4096):
    """Returns a function measuring GFLOP/s of one size^3 float32 jnp.matmul (compiled)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda u, v: jnp.matmul(u, v, precision=jax.lax.Precision.HIGHEST))
    f(a, a).block_until_ready()
    return lambda: 2 * size**3 / _timed(lambda: f(a, a).block_until_ready()) / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def batch_sizes(n, batch):
    return [batch] * (n // batch) + ([n % batch] if n % batch else [])


def run_ssl_jax(pool_x, pool_y, sizes):
    def go():
        state = sim.minibatch_cka_init(len(pool_x[0]), len(pool_y[0]))
        for i, b in enumerate(sizes):
            xs = [a[:b] for a in pool_x[i % len(pool_x)]]
            ys = [a[:b] for a in pool_y[i % len(pool_y)]]
            state = sim.minibatch_cka_update(state, xs, ys)
        return sim.minibatch_cka_result(state)  # host sync
    return go


# ---------------------------------------------------------------- (a) torch_cka-style baseline
def _torch_hsic(k, l):
    import torch

    n = k.shape[0]
    ones = torch.ones(n, 1, dtype=k.dtype)
    total = torch.trace(k @ l)
    total += ((ones.T @ k @ ones @ ones.T @ l @ ones) / ((n - 1) * (n - 2))).item()
    total -= ((ones.T @ k @ l @ ones) * 2 / (n - 2)).item()
    return (total / (n * (n - 3))).item()


def torch_per_pair(pool_x, pool_y, n_batches):
    import torch  # here, so the ssl_jax parts import without torch (benchmarks/gpu_suite.py)

    l1, l2 = len(pool_x[0]), len(pool_y[0])
    h = np.zeros((l1, l2, 3))
    for i in range(n_batches):
        xs = [torch.from_numpy(a) for a in pool_x[i % len(pool_x)]]
        ys = [torch.from_numpy(a) for a in pool_y[i % len(pool_y)]]
        for p, x in enumerate(xs):
            k = x @ x.T
            k.fill_diagonal_(0.0)
            hkk = _torch_hsic(k, k)
            for q, y in enumerate(ys):
                l = y @ y.T
                l.fill_diagonal_(0.0)
                h[p, q, 0] += hkk
                h[p, q, 1] += _torch_hsic(k, l)
                h[p, q, 2] += _torch_hsic(l, l)
    return h[:, :, 1] / np.sqrt(h[:, :, 0] * h[:, :, 2])


# ---------------------------------------------------------------- (b) numpy Demo-style baseline
def np_gram_linear(x):
    return x.dot(x.T)


def np_center_gram(gram):
    if not np.allclose(gram, gram.T):
        raise ValueError("gram must be symmetric")
    gram = gram.copy()
    n = gram.shape[0]
    np.fill_diagonal(gram, 0)
    means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
    means -= np.sum(means) / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0)
    return gram


def np_hsic_terms(x, y):
    k = np_center_gram(np_gram_linear(x))
    l = np_center_gram(np_gram_linear(y))
    return k.ravel().dot(l.ravel()), k.ravel().dot(k.ravel()), l.ravel().dot(l.ravel())


def numpy_per_pair(pool_x, pool_y, n_batches):
    l1, l2 = len(pool_x[0]), len(pool_y[0])
    h = np.zeros((l1, l2, 3))
    for i in range(n_batches):
        for p, x in enumerate(pool_x[i % len(pool_x)]):
            for q, y in enumerate(pool_y[i % len(pool_y)]):
                xy, xx, yy = np_hsic_terms(x, y)
                h[p, q] += (xx, xy, yy)
    return h[:, :, 1] / np.sqrt(h[:, :, 0] * h[:, :, 2])


def useful_flops(widths, sizes):
    l = len(widths)
    return sum(2 * b * b * 2 * sum(widths) + 2 * l * l * b * b for b in sizes)


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_integer("n", 10_000, None, flag_values=FLAGS)
flags.DEFINE_integer("batch", 256, None, flag_values=FLAGS)
flags.DEFINE_integer("spatial", 1, None, flag_values=FLAGS)
flags.DEFINE_integer("baseline_batches", 4, None, flag_values=FLAGS)
flags.DEFINE_integer("pool", 8, None, flag_values=FLAGS)
flags.DEFINE_integer("reps", 5, None, flag_values=FLAGS)
flags.DEFINE_string("out", "", None, flag_values=FLAGS)


def main():
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    import torch

    widths = layer_widths(args.spatial)
    pool_x = make_pool(widths, args.batch, args.pool, 0)
    pool_y = make_pool(widths, args.batch, args.pool, 1)
    sizes = batch_sizes(args.n, args.batch)
    load_before = os.getloadavg()

    ceiling_fn = gemm_ceiling_fn()
    go = run_ssl_jax([[jnp.asarray(a) for a in m] for m in pool_x],
                     [[jnp.asarray(a) for a in m] for m in pool_y], sizes)
    go()  # compile both batch shapes
    # The machine is shared: interleave ceiling and ssl_jax runs so both see the same load.
    times, ceilings = [], []
    for _ in range(args.reps):
        ceilings.append(max(ceiling_fn() for _ in range(2)))
        times.append(_timed(go))
    flops = useful_flops(widths, sizes)
    fractions = [flops / t / 1e9 / c for t, c in zip(times, ceilings)]
    t_ours, ceiling = min(times), max(ceilings)
    gflops = flops / t_ours / 1e9

    nb = args.baseline_batches
    ours_sub = run_ssl_jax([[jnp.asarray(a) for a in m] for m in pool_x],
                           [[jnp.asarray(a) for a in m] for m in pool_y], [args.batch] * nb)()
    t0 = time.perf_counter()
    torch_cka = torch_per_pair(pool_x, pool_y, nb)
    t_torch = (time.perf_counter() - t0) * len(sizes) / nb
    t0 = time.perf_counter()
    numpy_cka = numpy_per_pair(pool_x, pool_y, nb)
    t_numpy = (time.perf_counter() - t0) * len(sizes) / nb

    result = {
        "machine": f"{os.cpu_count()}-core CPU, jax {jax.__version__} ({jax.devices()[0].platform}),"
                   f" torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "n": args.n, "batch": args.batch, "n_layers": len(widths), "widths": widths,
        "gemm_ceiling_gflops_best": ceiling, "ssl_jax_s_best": t_ours, "ssl_jax_gflops_best": gflops,
        "fraction_best_over_best": gflops / ceiling,
        "fraction_per_rep_interleaved": fractions, "ssl_jax_s_per_rep": times,
        "gemm_ceiling_gflops_per_rep": ceilings,
        "torch_per_pair_s_extrapolated": t_torch, "numpy_per_pair_s_extrapolated": t_numpy,
        "speedup_vs_torch_per_pair": t_torch / t_ours, "speedup_vs_numpy_per_pair": t_numpy / t_ours,
        "baseline_batches": nb,
        "cka_range_on_baseline_batches": [float(ours_sub.min()), float(ours_sub.max())],
        "max_abs_diff_vs_torch": float(np.max(np.abs(torch_cka - ours_sub))),
        "max_abs_diff_vs_numpy": float(np.max(np.abs(numpy_cka - ours_sub))),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    errors.run(main)
