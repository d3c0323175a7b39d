"""Linear probe: multinomial logistic regression on frozen features (paper 004 protocol).

The objective is exactly scikit-learn's ``LogisticRegression(penalty="l2")``::

    C * sum_i CE(x_i W + b, y_i) + 0.5 * ||W||^2        (bias unpenalised)

which we minimise in its mean-scaled form ``mean_i CE_i + ||W||^2 / (2 C N)`` (same minimiser,
better float32 conditioning) with optax's L-BFGS + zoom line search inside one jitted
``lax.while_loop``. Features are centred internally: ``x W + b = (x - mu) W + (b + mu W)`` and
the bias is unpenalised, so the objective is unchanged while the Hessian loses the large
"mean feature" direction that non-negative (ReLU / GAP) features have.

004 protocol (``linear_probe``): C = 1 / wd for wd in logspace(-6, 5, 45); pick C on a
validation split (20% of train, ``np.random.seed(0)``-style shuffle) by validation accuracy,
ties -> larger C; refit on train+val; report test top-1 and mean per-class accuracy (percent).

Sharding: the functions are plain ``jit`` on whatever arrays they get, so features passed as
global arrays sharded on the batch axis give the same result as unsharded ones (XLA inserts
the cross-device sums).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluation import calibration

ArrayLike = Any  # numpy or jax array

METRICS = ("top1", "mean_per_class")


class LogRegParams(NamedTuple):
    """Linear classifier ``logits = x @ w + b``; w: [D, K], b: [K]."""

    w: jax.Array
    b: jax.Array


def c_grid(num: int = 45) -> np.ndarray:
    """004's grid: C = 1 / wd for wd in logspace(-6, 5, num), returned in ascending C order."""
    if num < 1:
        raise ValueError(f"num_grid must be >= 1, got {num}")
    return np.sort(1.0 / np.logspace(-6, 5, num))


# ----------------------------------------------------------------------------------------------
# Solver
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lbfgs_fit(x, y, weights, C, w0, b0, tol, *, max_iter: int):
    """Minimise sum_i s_i CE_i / S + ||w||^2 / (2 C S), S = sum_i s_i, from (w0, b0).

    Returns (params, iterations, max |grad|)."""
    x = x.astype(jnp.float32)
    total = jnp.sum(weights)
    inv_cn = 1.0 / (C * total)
    mu = weights @ x / total
    xc = x - mu
    # Exact diagonal preconditioner: optimise v = w / s. The curvature along w is about
    # feature variance (CE part) + inv_cn (penalty), along b about 1 (CE only); without the
    # rescaling a strongly regularised fit is so ill-conditioned that the float32 line search
    # stalls before the (unpenalised) bias has converged.
    s = jax.lax.rsqrt(jnp.sum(weights @ (xc * xc)) / (total * x.shape[1]) + inv_cn)

    def objective(p: LogRegParams) -> jax.Array:
        w = s * p.w
        logits = xc @ w + p.b
        true_logit = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
        ce = weights @ (jax.nn.logsumexp(logits, axis=1) - true_logit) / total
        return ce + 0.5 * inv_cn * jnp.sum(w * w)

    opt = optax.lbfgs(
        memory_size=10, linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=25)
    )
    value_and_grad = optax.value_and_grad_from_state(objective)
    p0 = LogRegParams(w0 / s, b0 + mu @ w0)  # original -> centred, rescaled coordinates
    g0 = jax.grad(objective)(p0)

    def grad_max(g: LogRegParams) -> jax.Array:
        # Gradient w.r.t. the original (w, b), so tol means what sklearn's tol means.
        return jnp.maximum(jnp.max(jnp.abs(g.w)) / s, jnp.max(jnp.abs(g.b)))

    def cond(carry):
        _, _, it, gmax, progressed = carry
        return (it < max_iter) & (gmax > tol) & progressed

    def body(carry):
        p, state, it, _, _ = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        p = optax.apply_updates(p, updates)
        new_value = optax.tree_utils.tree_get(state, "value")
        new_grad = optax.tree_utils.tree_get(state, "grad")
        # A failed line search shows up as no decrease; in float32 that is the end of progress.
        return p, state, it + 1, grad_max(new_grad), new_value < value

    carry = (p0, opt.init(p0), jnp.asarray(0), grad_max(g0), jnp.asarray(True))
    p, _, iters, gmax, _ = jax.lax.while_loop(cond, body, carry)
    w = s * p.w
    return LogRegParams(w, p.b - mu @ w), iters, gmax


def fit_logistic_regression(
    x: ArrayLike,
    y: ArrayLike,
    C: float,
    *,
    num_classes: int | None = None,
    sample_weight: ArrayLike | None = None,
    init: LogRegParams | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> tuple[LogRegParams, dict[str, float]]:
    """Multinomial L2 logistic regression, same objective as sklearn's ``LogisticRegression(C=C)``.

    Args:
      x: [N, D] features (any float dtype; computed in float32). y: [N] int labels in [0, K).
      C: inverse regularisation strength (sklearn convention).
      num_classes: K; defaults to ``max(y) + 1``.
      sample_weight: [N] non-negative weights (sklearn semantics); a 0/1 mask selects a subset
        without changing array shapes, so all fits on one array share a single compilation.
      init: warm start (w [D, K], b [K]); zeros by default.
      max_iter: L-BFGS iteration cap. tol: stop when max |grad| of the mean-scaled objective
        ``mean CE + ||w||^2 / (2 C N)`` is <= tol (sklearn's ``tol`` has the same meaning).
    Returns:
      (params, info) with info = {"iterations", "grad_max"} as Python floats.
    """
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    y = jnp.asarray(y).astype(jnp.int32)
    if num_classes is None:
        num_classes = int(jnp.max(y)) + 1
    n, d = x.shape
    if sample_weight is None:
        sample_weight = np.ones((n,), np.float32)
    if np.shape(sample_weight) != (n,):
        raise ValueError(f"sample_weight must be [N]={n}, got shape {np.shape(sample_weight)}")
    if init is None:
        init = LogRegParams(jnp.zeros((d, num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))
    params, iters, gmax = _lbfgs_fit(
        x, y, jnp.asarray(sample_weight, jnp.float32), jnp.float32(C), init.w, init.b,
        jnp.float32(tol), max_iter=max_iter)
    return params, {"iterations": float(iters), "grad_max": float(gmax)}


# ----------------------------------------------------------------------------------------------
# Metrics and C selection
# ----------------------------------------------------------------------------------------------
@jax.jit
def _logits(params: LogRegParams, x) -> jax.Array:
    return x.astype(jnp.float32) @ params.w + params.b


def accuracy_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and mean per-class accuracy in percent (classes = those present in ``labels``)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    correct = pred == labels
    classes = np.unique(labels)
    per_class = [correct[labels == c].mean() for c in classes]
    return {"top1": 100.0 * float(correct.mean()), "mean_per_class": 100.0 * float(np.mean(per_class))}


def select_best_C(cs: Sequence[float], scores: Sequence[float]) -> float:
    """Best validation score; ties go to the larger C (as 004's strict '>' over descending C)."""
    cs, scores = np.asarray(cs, np.float64), np.asarray(scores, np.float64)
    if cs.shape != scores.shape or cs.size == 0:
        raise ValueError(f"cs and scores must be non-empty and equal length, got {cs.shape}, {scores.shape}")
    tied = scores == scores.max()
    return float(cs[tied].max())


def validation_split(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """004's split: shuffle range(n) with the legacy seeded RNG; first floor(f*n) are validation.

    Returns (train_idx, val_idx).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.RandomState(seed).permutation(n)  # == np.random.seed(seed); shuffle(list)
    split = int(np.floor(val_fraction * n))
    if split == 0 or split == n:
        raise ValueError(f"val_fraction={val_fraction} leaves an empty split for n={n}")
    return perm[split:], perm[:split]


# ----------------------------------------------------------------------------------------------
# The probe
# ----------------------------------------------------------------------------------------------
def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    val_x: ArrayLike | None = None,
    val_y: ArrayLike | None = None,
    C: float | None = None,
    num_grid: int = 45,
    c_values: Sequence[float] | None = None,
    metric: str = "top1",
    val_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
    calibrate: bool = True,
    return_logits: bool = False,
) -> dict[str, Any]:
    """004 many-shot linear evaluation on frozen features.

    Args:
      train_x [N, D], train_y [N], test_x [M, D], test_y [M]: features (not standardised) and
        int labels; numpy or jax arrays (possibly sharded on the batch axis).
      val_x, val_y: an official validation split; if absent, ``val_fraction`` of train
        (shuffled with ``seed``) is held out as in 004.
      C: if given, skip the grid search and fit train(+val) with this C (quick / sklearn parity).
      num_grid: number of points of the logspace(-6, 5) weight-decay grid (45 in 004; use e.g. 5
        for a cheap probe).
      c_values: an explicit C grid instead (overrides num_grid).
      metric: "top1" or "mean_per_class"; the validation metric used to pick C.
      max_iter, tol: L-BFGS settings per fit (see ``fit_logistic_regression``).
      calibrate: also report test ECE (15 bins) and 5-fold temperature-scaled ECE as in 004.
      return_logits: add "test_logits" (numpy [M, K]) to the result.
    Returns:
      {"top1", "mean_per_class" (percent), "best_C", "C_grid" (list), "val_scores" (list, same
       order as C_grid; percent), "ece", "ece_temperature_scaled" (fractions, if calibrate)}.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y or neither")
    train_x, test_x = jnp.asarray(train_x), jnp.asarray(test_x)
    train_y_np, test_y_np = np.asarray(train_y).astype(np.int64), np.asarray(test_y).astype(np.int64)
    if train_x.ndim != 2 or train_x.shape[0] != train_y_np.shape[0]:
        raise ValueError(f"train_x must be [N, D] matching train_y [N]; got {train_x.shape}, {train_y_np.shape}")
    if num_classes is None:
        extra = [] if val_y is None else [int(np.max(val_y))]
        num_classes = int(max([train_y_np.max(), test_y_np.max(), *extra])) + 1
    for name, labels in (("train_y", train_y_np), ("test_y", test_y_np)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{name} must be ints in [0, num_classes={num_classes}), "
                             f"got range [{labels.min()}, {labels.max()}]")

    # One array for every fit; the train/val split is a 0/1 weight mask, so the grid and the
    # refit share one compiled solver and sharded inputs are never gathered or re-laid out.
    if val_x is None:
        all_x, all_y = train_x, train_y_np
        _, va_idx = validation_split(train_x.shape[0], val_fraction, seed)
    else:
        val_y_np = np.asarray(val_y).astype(np.int64)
        all_x = jnp.concatenate([train_x, jnp.asarray(val_x)])
        all_y = np.concatenate([train_y_np, val_y_np])
        va_idx = np.arange(train_x.shape[0], all_x.shape[0])
    fit_mask = np.ones(all_x.shape[0], np.float32)
    fit_mask[va_idx] = 0.0
    v_y = all_y[va_idx]

    fit = lambda mask, c, init: fit_logistic_regression(  # noqa: E731
        all_x, all_y, c, num_classes=num_classes, sample_weight=mask, init=init,
        max_iter=max_iter, tol=tol)

    result: dict[str, Any] = {}
    init = None
    if C is None:
        # Ascending C: each solution warm-starts the next, less regularised one (continuation).
        cs = c_grid(num_grid) if c_values is None else np.sort(np.asarray(c_values, np.float64))
        if cs.size == 0 or not np.all(cs > 0):
            raise ValueError(f"c_values must be non-empty and > 0, got {c_values}")
        scores, solutions = [], []
        for c in cs:
            init, _ = fit(fit_mask, float(c), init)
            pred = np.asarray(jnp.argmax(_logits(init, all_x), axis=1))[va_idx]
            scores.append(accuracy_metrics(pred, v_y)[metric])
            solutions.append(init)
        best_C = select_best_C(cs, scores)
        init = solutions[int(np.flatnonzero(cs == best_C)[0])]
        result.update(C_grid=[float(c) for c in cs], val_scores=[float(s) for s in scores])
    else:
        best_C = float(C)

    params, info = fit(np.ones_like(fit_mask), best_C, init)
    logits = _logits(params, test_x)
    pred = np.asarray(jnp.argmax(logits, axis=1))
    result.update(accuracy_metrics(pred, test_y_np))
    result.update(best_C=best_C, final_iterations=info["iterations"])
    if calibrate:
        logits_np = np.asarray(logits)
        result["ece"] = calibration.expected_calibration_error(
            np.asarray(jax.nn.softmax(logits, axis=1)), test_y_np)
        result["ece_temperature_scaled"] = calibration.temperature_scaled_ece(logits_np, test_y_np)["scaled_ece"]
    if return_logits:
        result["test_logits"] = np.asarray(logits)
    return result


# ----------------------------------------------------------------------------------------------
# SGD linear evaluation (ImageNet-scale features, where full-batch L-BFGS over a grid is too slow)
# ----------------------------------------------------------------------------------------------
def _sgd_optimizer(learning_rate: float, total_steps: int, momentum: float, weight_decay: float):
    # Coupled L2 (added to the gradient before momentum), i.e. torch.optim.SGD(weight_decay=...),
    # applied to w only: the bias is unpenalised, as in the L-BFGS probe.
    decay_mask = LogRegParams(w=True, b=False)
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), decay_mask),
        optax.sgd(optax.cosine_decay_schedule(learning_rate, total_steps), momentum=momentum),
    )


def linear_probe_sgd(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    epochs: int = 100,
    batch_size: int = 1024,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Minibatch SGD linear evaluation (momentum, cosine-decayed learning rate, no grid search).

    train_x [N, D] / test_x [M, D] features (numpy: batches are gathered on the host; jax:
    on device), int labels [N] / [M]. Each epoch visits a fresh permutation from
    ``np.random.default_rng(seed)``, dropping the last partial batch (static shapes, one compile).
    Loss: mean softmax cross-entropy; ``weight_decay`` is coupled L2 on w only.
    Returns {"top1", "mean_per_class"} in percent and "train_loss" (mean over the last epoch).
    """
    n = train_x.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, N={n}], got {batch_size}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    train_y_np, test_y_np = np.asarray(train_y).astype(np.int32), np.asarray(test_y).astype(np.int64)
    if num_classes is None:
        num_classes = int(max(train_y_np.max(), test_y_np.max())) + 1
    steps_per_epoch = n // batch_size
    opt = _sgd_optimizer(learning_rate, epochs * steps_per_epoch, momentum, weight_decay)
    params = LogRegParams(jnp.zeros((train_x.shape[1], num_classes), jnp.float32),
                          jnp.zeros((num_classes,), jnp.float32))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = xb.astype(jnp.float32) @ p.w + p.b
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            params, opt_state, loss = step(params, opt_state, train_x[idx], train_y_np[idx])
            losses.append(loss)
    pred = np.asarray(jnp.argmax(_logits(params, jnp.asarray(test_x)), axis=1))
    result = accuracy_metrics(pred, test_y_np)
    result["train_loss"] = float(np.mean(np.asarray(jnp.stack(losses))))
    return result
