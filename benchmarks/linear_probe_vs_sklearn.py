"""Benchmark: ssl_jax linear probe (JAX L-BFGS) vs sklearn LogisticRegression, 004 protocol.

    .venv/bin/python benchmarks/linear_probe_vs_sklearn.py            # 50,000 x 512, 10 classes
    .venv/bin/python benchmarks/linear_probe_vs_sklearn.py --n 5000   # quick look

Synthetic features: Gaussian class clusters (overlapping, so accuracy is well below 100%),
passed through a ReLU and shifted like pooled CNN features (non-negative, not standardised).
Both sides run the full 004 protocol: 45-point C grid, 20% validation split (seed 0),
ties -> larger C, refit on train+val, test top-1. sklearn runs exactly as 004's linear.py
(lbfgs, multinomial, warm_start=True, max_iter=100, grid in 004's order). Prints both wall
times, the ratio and the accuracy difference.
"""
from __future__ import annotations

import time

import numpy as np

from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)


def make_features(n: int, n_test: int, dim: int, classes: int, sep: float, seed: int = 0):
    """Overlapping Gaussian clusters -> ReLU; returns float32 train/test features + labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * sep

    def draw(m):
        y = rng.integers(0, classes, m)
        x = np.maximum(means[y] + rng.normal(size=(m, dim)) + 0.5, 0.0)
        return x.astype(np.float32), y

    return (*draw(n), *draw(n_test))


def sklearn_004(train_x, train_y, test_x, test_y, num_grid: int, max_iter: int) -> dict:
    """004's linear.py: validate over wd = logspace(-6, 5) (C descending), strict '>', refit."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from ssl_jax.evaluation.linear_probe import validation_split

    tr, va = validation_split(train_x.shape[0], 0.2, 0)
    clf = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter)
    best, best_c = 0.0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for wd in np.logspace(-6, 5, num_grid):
            clf.set_params(C=1.0 / wd)
            clf.fit(train_x[tr], train_y[tr])
            score = 100.0 * clf.score(train_x[va], train_y[va])
            if score > best:
                best, best_c = score, 1.0 / wd
        clf.set_params(C=best_c)
        clf.fit(train_x, train_y)
    return {"top1": 100.0 * clf.score(test_x, test_y), "best_C": best_c}


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_integer("n", 50_000, "train+val examples", flag_values=FLAGS)
flags.DEFINE_integer("n_test", 10_000, None, flag_values=FLAGS)
flags.DEFINE_integer("dim", 512, None, flag_values=FLAGS)
flags.DEFINE_integer("classes", 10, None, flag_values=FLAGS)
flags.DEFINE_float("sep", 0.12, "class-mean scale (overlap)", flag_values=FLAGS)
flags.DEFINE_integer("num_grid", 45, None, flag_values=FLAGS)
flags.DEFINE_integer("sklearn_max_iter", 100, None, flag_values=FLAGS)
flags.DEFINE_bool("skip_sklearn", False, None, flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)

    import jax

    from ssl_jax.evaluation.linear_probe import linear_probe

    data = make_features(args.n, args.n_test, args.dim, args.classes, args.sep)
    print(f"features: train {data[0].shape}, test {data[2].shape}, {args.classes} classes; "
          f"jax devices: {jax.devices()}")

    # Timed from scratch, jit compilation included (one compile per distinct input shape).
    t0 = time.perf_counter()
    ours = linear_probe(*data, num_grid=args.num_grid, calibrate=False)
    t_ours = time.perf_counter() - t0
    print(f"ssl_jax  : {t_ours:8.1f} s  top1 {ours['top1']:.2f}  best_C {ours['best_C']:.4g}")

    if args.skip_sklearn:
        return
    t0 = time.perf_counter()
    ref = sklearn_004(*data, num_grid=args.num_grid, max_iter=args.sklearn_max_iter)
    t_ref = time.perf_counter() - t0
    print(f"sklearn  : {t_ref:8.1f} s  top1 {ref['top1']:.2f}  best_C {ref['best_C']:.4g}")
    print(f"speed-up : {t_ref / t_ours:.2f}x   top1 difference (ours - sklearn): "
          f"{ours['top1'] - ref['top1']:+.2f} points")


if __name__ == "__main__":
    errors.run(main)
