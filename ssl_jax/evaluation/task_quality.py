"""How well a task-bank network does its own task on held-out data, against the task's trivial
baseline (numpy; ssl_jax/methods/task_bank.py defines the tasks).

A bank network is only worth comparing with if it learned its task, so every task has one
held-out score and a baseline that knows the training targets but not the image:
- maps: the better of the training set's per-pixel mean and per-pixel median (for normals,
  each renormalised). The mean is the best image-independent answer under squared error
  (RMS, PSNR), the median under absolute error (MAE) and close to it for angles: on the
  relief maps, which are flat over the background, the median (flat) beats the mean by
  10-20%, and a network that only learned "flat" beats the mean alone;
- segmentation: the per-pixel majority class; edges and the keypoint heatmap: the per-pixel
  frequency as the score; classification: the majority class;
- for denoising and colorization also the corrupted input itself.
Whichever baseline scores best on the held-out split counts.
"""
from __future__ import annotations

import numpy as np

# Tasks whose targets are class indices (per image or per pixel).
CATEGORICAL = ("class", "scene", "segment_class")
# task -> (metric, unit, higher is better)
METRICS = {
    "class": ("top-1", "%", True),
    "scene": ("top-1", "%", True),
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
    if task in ("class", "scene"):
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
    """A task's training targets, all a trivial baseline needs: their per-position mean
    (one-hot for classes) and, for maps, median. Keeps the targets it is given (the
    evaluator's `baseline_examples` bounds them: 2000 normal maps at 32 px are 25 MB)."""

    def __init__(self, task: str, num_outputs: int):
        self.task, self.num_outputs = task, num_outputs
        self.targets = []

    def update(self, y: np.ndarray) -> None:
        self.targets.append(np.asarray(y))

    def _all(self) -> np.ndarray:
        return np.concatenate(self.targets)

    def mean(self) -> np.ndarray:
        y = self._all()
        if self.task in CATEGORICAL:
            return np.stack([np.mean(y == k, axis=0) for k in range(self.num_outputs)], -1)
        return np.mean(y, axis=0, dtype=np.float64)

    def median(self) -> np.ndarray:
        return np.median(self._all(), axis=0)


def baseline_predictions(task: str, stats: TargetStats, n: int) -> dict[str, np.ndarray]:
    """name -> [n, ...] predictions of each trivial baseline, in the form `score` reads
    (logits where it takes an argmax or a sign, scores for edges, values otherwise)."""
    m = stats.mean()
    if task == "segment_fg":
        m = np.where(m > 0.5, 1.0, -1.0)  # a logit whose sign is the per-pixel majority
    candidates = {"mean": m}
    if task not in CATEGORICAL + ("segment_fg", "occlusion_edges", "texture_edges",
                                  "keypoints"):
        candidates["median"] = stats.median()
    if task == "normals":
        candidates = {k: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
                      for k, v in candidates.items()}
    return {k: np.broadcast_to(v, (n,) + v.shape) for k, v in candidates.items()}
