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

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)
from ssl_jax import xla_flags  # noqa: E402
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


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="train+val examples")
    parser.add_argument("--n_test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--sep", type=float, default=0.12, help="class-mean scale (overlap)")
    parser.add_argument("--num_grid", type=int, default=45)
    parser.add_argument("--sklearn_max_iter", type=int, default=100)
    parser.add_argument("--skip_sklearn", action="store_true")
    args = parser.parse_args()

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
