"""How well a task-bank network does its own task on held-out data, against the task's trivial
baseline (numpy; ssl_jax/methods/task_bank.py defines the tasks).

A bank network is only worth comparing with if it learned its task, so every task has one
held-out score and a baseline that knows the training targets but not the image:
- the training set's per-pixel mean map (regression; for normals, renormalised), its per-pixel
  majority class (segmentation), its per-pixel frequency as the score (edges and the keypoint
  heatmap), its majority class (classification);
- for denoising and colorization also the corrupted input itself, whichever of the two
  baselines scores better.
"""
from __future__ import annotations

import numpy as np

# task -> (metric, unit, higher is better)
METRICS = {
    "class": ("top-1", "%", True),
    "segment_fg": ("foreground IoU", "%", True),
    "segment_class": ("mean IoU", "%", True),
    "occlusion_edges": ("average precision", "%", True),
    "texture_edges": ("average precision", "%", True),
    "keypoints": ("average precision", "%", True),
    "distance": ("mean abs. error", "1/1000 image side", False),
    "z_depth": ("mean abs. error", "1/1000 image side", False),
    "normals": ("mean angular error", "degrees", False),
    "curvature": ("RMS error", "1/image side", False),
    "reshading": ("mean abs. error", "1/1000 of white", False),
    "autoencoding": ("PSNR", "dB", True),
    "denoising": ("PSNR", "dB", True),
    "inpainting": ("PSNR in the hole", "dB", True),
    "colorization": ("PSNR", "dB", True),
}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(logits, -1) == labels))


def binary_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU (%) of two boolean masks pooled over every pixel of every image."""
    inter = np.logical_and(pred, target).sum()
    union = np.logical_or(pred, target).sum()
    return 100.0 * float(inter / union) if union else float("nan")


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean over classes present in the target or the prediction of each class's pooled IoU (%)."""
    ious = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        union = np.logical_or(p, t).sum()
        if union:
            ious.append(np.logical_and(p, t).sum() / union)
    return 100.0 * float(np.mean(ious))


def average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    """Average precision (%) of `scores` for the boolean `target`, pooled over all elements:
    sum over distinct score thresholds of (recall step) x precision, ties counted together
    (sklearn.metrics.average_precision_score's definition)."""
    scores, target = np.ravel(scores), np.ravel(target).astype(bool)
    positives = target.sum()
    if not positives:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], target[order]
    tp, fp = np.cumsum(t), np.cumsum(~t)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each tie group
    tp, fp = tp[last], fp[last]
    recall_step = np.diff(np.r_[0, tp]) / positives
    return 100.0 * float(np.sum(recall_step * tp / (tp + fp)))


def angular_error(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean angle (degrees) between predicted and target normals [..., 3] (pred renormalised)."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12)
    t = target / np.maximum(np.linalg.norm(target, axis=-1, keepdims=True), 1e-12)
    return float(np.degrees(np.arccos(np.clip(np.sum(p * t, -1), -1.0, 1.0))).mean())


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of images in [0, 1] (pred clipped), from the MSE pooled over all pixels (or
    the pixels where `mask`, broadcast against the images, is 1)."""
    err = (np.clip(pred, 0.0, 1.0) - target) ** 2
    if mask is not None:
        mask = np.broadcast_to(mask, err.shape)
        mse = float(np.sum(err * mask) / np.sum(mask))
    else:
        mse = float(np.mean(err))
    return 10.0 * np.log10(1.0 / max(mse, 1e-12))


def score(task: str, pred: np.ndarray, y: np.ndarray, hole: np.ndarray | None = None) -> float:
    """The held-out score of METRICS[task] for predictions `pred` (logits for classes and
    masks, values otherwise) and targets `y` (ssl_jax.methods.task_bank.task_targets);
    `hole`: inpainting's [S, S] hole mask. Keypoints are scored as a detection map: the
    heatmap's pixels above 0.5 (within ~1.2 px of a keypoint) are the positives."""
    if task == "class":
        return accuracy(pred, y)
    if task == "segment_fg":
        return binary_iou(pred[..., 0] > 0, y[..., 0] > 0.5)
    if task == "segment_class":
        return mean_iou(np.argmax(pred, -1), y, pred.shape[-1])
    if task in ("occlusion_edges", "texture_edges", "keypoints"):
        return average_precision(pred, y > 0.5)
    if task in ("distance", "z_depth", "reshading"):
        return 1000.0 * float(np.mean(np.abs(pred - y)))
    if task == "normals":
        return angular_error(pred, y)
    if task == "curvature":
        return float(np.sqrt(np.mean((pred - y) ** 2)))
    if task == "inpainting":
        return psnr(pred, y, hole[None, :, :, None])
    return psnr(pred, y)


class TargetStats:
    """Running statistics of a task's training targets, all a trivial baseline needs: the
    mean target per position (one-hot for classes)."""

    def __init__(self, task: str, num_outputs: int):
        self.task, self.num_outputs = task, num_outputs
        self.total, self.count = None, 0

    def update(self, y: np.ndarray) -> None:
        if self.task in ("class", "segment_class"):
            y = np.eye(self.num_outputs, dtype=np.float64)[y]
        total = np.sum(y, axis=0, dtype=np.float64)
        self.total = total if self.total is None else self.total + total
        self.count += len(y)

    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)


def baseline_prediction(task: str, stats: TargetStats, n: int) -> np.ndarray:
    """[n, ...] predictions of the trivial baseline, in the form `score` reads (logits where it
    takes an argmax or a sign, scores for edges, values otherwise)."""
    m = stats.mean()
    if task == "segment_fg":
        m = np.where(m > 0.5, 1.0, -1.0)  # a logit whose sign is the per-pixel majority
    elif task == "normals":
        m = m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
    return np.broadcast_to(m, (n,) + m.shape)
