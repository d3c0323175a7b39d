"""Unsupervised saliency for copy-paste augmentation (003): RBD, a centre prior, metrics, a cache.

RBD, "robust background detection" (Zhu, Liang, Wei, Sun, CVPR 2014, "Saliency Optimization
from Robust Background Detection"), written from the paper:
  1. SLIC superpixels (scikit-image); mean CIE-Lab colour and centroid of each.
  2. Graph: superpixels sharing a pixel edge, plus every pair of image-border superpixels (the
     paper's trick: a background split by the object stays one connected boundary region).
     Edge weight = Lab distance d_app; geodesic distance d_geo = shortest-path length.
  3. Boundary connectivity: Area(p) = sum_i exp(-d_geo(p,i)^2 / 2 s_clr^2),
     Len_bnd(p) = the same sum over border superpixels, bdCon = Len_bnd / sqrt(Area);
     background probability w_bg = 1 - exp(-bdCon^2 / 2 s_bnd^2).
  4. Background-weighted contrast wCtr(p) = sum_i d_app(p,i) w_spa(p,i) w_bg(i),
     w_spa = exp(-d_spa^2 / 2 s_spa^2) on centroids in units of the image side.
  5. Saliency s minimises sum_i w_bg_i s_i^2 + sum_i w_fg_i (s_i - 1)^2
     + sum_{i~j} w_ij (s_i - s_j)^2 (w_fg = wCtr scaled to [0, 1]; w_ij = exp(-d_app^2 /
     2 s_clr^2) + mu over adjacent pairs, each unordered pair once), i.e. the linear system
     (diag(w_bg + w_fg) + L) s = w_fg with L the graph Laplacian of w_ij.
Constants are the paper's (s_clr = 10, s_bnd = 1, s_spa = 0.25, mu = 0.1). As in the authors'
MATLAB code (MCG-NKU/SalBenchmark), each geodesic edge weight is reduced by the image's colour
noise level (`edge_clip`; off with clip_edges=False): without it noisy backgrounds look
disconnected from the border (on the built-in dataset F-beta 0.62 -> 0.69 with it, see
docs/METHODS.md). Their per-image adaptive sigmas are left out (fixed s_clr = 10).

Training reads masks precomputed once per split (`compute_split_masks`: an .npy of uint8
[N, H, W] rows keyed by `indexing.example_index`), so SLIC never runs inside tf.data.
"""
from __future__ import annotations

import os

import numpy as np
from scipy.sparse import csgraph
from skimage import color, segmentation
from tqdm import tqdm

F_BETA_SQUARED = 0.3  # the salient-object-detection convention: precision weighted over recall


# ---------------------------------------------------------------------------------------------
# RBD building blocks (pure numpy; the tests call them one by one)
# ---------------------------------------------------------------------------------------------

def superpixels(image: np.ndarray, superpixel_size: int = 16,
                compactness: float = 10.0) -> np.ndarray:
    """SLIC labels [H, W] int, contiguous 0..n-1, about `superpixel_size` pixels each.
    image: [H, W, 3] uint8 or float in [0, 1]."""
    h, w = image.shape[:2]
    labels = segmentation.slic(image, n_segments=max(2, (h * w) // superpixel_size),
                               compactness=compactness, start_label=0, channel_axis=-1)
    # SLIC may skip label ids; the graph code indexes superpixels densely.
    return np.unique(labels, return_inverse=True)[1].reshape(h, w)


def region_features(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean Lab colour [n, 3], centroid [n, 2] as (y, x) in units of the image side)."""
    image = np.asarray(image)
    rgb = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    lab = color.rgb2lab(rgb).reshape(-1, 3)
    flat = labels.ravel()
    n = flat.max() + 1
    count = np.bincount(flat, minlength=n).astype(np.float64)
    mean_lab = np.stack([np.bincount(flat, lab[:, c], n) for c in range(3)], 1) / count[:, None]
    ys, xs = np.indices(labels.shape)
    side = float(max(labels.shape))
    centroid = np.stack([np.bincount(flat, ys.ravel(), n), np.bincount(flat, xs.ravel(), n)],
                        1) / count[:, None] / side
    return mean_lab, centroid


def adjacency(labels: np.ndarray) -> np.ndarray:
    """Bool [n, n]: superpixels that share a horizontal or vertical pixel edge (no self)."""
    n = labels.max() + 1
    adj = np.zeros((n, n), bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        adj[a[differ], b[differ]] = True
    adj |= adj.T
    return adj


def boundary_ids(labels: np.ndarray) -> np.ndarray:
    """Bool [n]: superpixels touching the image border."""
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    out = np.zeros(labels.max() + 1, bool)
    out[border] = True
    return out


def edge_clip(colour_dist: np.ndarray, adj: np.ndarray) -> float:
    """Colour noise level of an image: the mean over superpixels of the smallest colour
    distance to any superpixel within two hops. Subtracted from every geodesic edge weight
    (as in the authors' code), so a noisy but uniform background still counts as connected."""
    two_hops = adj | ((adj.astype(np.int32) @ adj.astype(np.int32)) > 0)
    np.fill_diagonal(two_hops, False)
    return float(np.where(two_hops, colour_dist, np.inf).min(1).mean())


def geodesic_distances(colour_dist: np.ndarray, adj: np.ndarray, on_boundary: np.ndarray,
                       clip: float = 0.0) -> np.ndarray:
    """All-pairs shortest-path lengths [n, n] over `adj` plus links between all border
    superpixels, with edge weight max(0, colour_dist - clip)."""
    links = adj | (on_boundary[:, None] & on_boundary[None, :])
    np.fill_diagonal(links, False)
    # inf marks "no edge", so zero-weight edges (identical colours) stay edges.
    weights = np.where(links, np.maximum(colour_dist - clip, 0.0), np.inf)
    graph = csgraph.csgraph_from_dense(weights, null_value=np.inf)
    return csgraph.shortest_path(graph, method="D", directed=False)


def boundary_connectivity(geodesic: np.ndarray, on_boundary: np.ndarray,
                          sigma_clr: float = 10.0) -> np.ndarray:
    """bdCon [n] = Len_bnd / sqrt(Area) from geodesic distances [n, n] (see module doc)."""
    affinity = np.exp(-geodesic ** 2 / (2 * sigma_clr ** 2))
    area = affinity.sum(1)
    length = affinity[:, on_boundary].sum(1)
    return length / np.sqrt(area)


def background_probability(bdcon: np.ndarray, sigma_bnd: float = 1.0) -> np.ndarray:
    return 1.0 - np.exp(-bdcon ** 2 / (2 * sigma_bnd ** 2))


def weighted_contrast(colour_dist: np.ndarray, centroid: np.ndarray, w_bg: np.ndarray,
                      sigma_spa: float = 0.25) -> np.ndarray:
    """wCtr [n] = sum_i d_app(p, i) w_spa(p, i) w_bg(i)."""
    d_spa2 = ((centroid[:, None] - centroid[None]) ** 2).sum(-1)
    return (colour_dist * np.exp(-d_spa2 / (2 * sigma_spa ** 2)) * w_bg[None]).sum(1)


def optimise_saliency(w_bg: np.ndarray, w_fg: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """argmin_s sum w_bg s^2 + sum w_fg (s - 1)^2 + sum_{i<j} smooth_ij (s_i - s_j)^2.
    smooth: symmetric [n, n] with zero diagonal (0 = not adjacent)."""
    laplacian = np.diag(smooth.sum(1)) - smooth
    return np.linalg.solve(np.diag(w_bg + w_fg) + laplacian, w_fg)


def rbd(image: np.ndarray, superpixel_size: int = 16, compactness: float = 10.0,
        sigma_clr: float = 10.0, sigma_geo: float = 10.0, sigma_bnd: float = 1.0,
        sigma_spa: float = 0.25, mu: float = 0.1, clip_edges: bool = True) -> np.ndarray:
    """RBD saliency of one image [H, W, 3] (uint8 or float in [0, 1]) -> float32 [H, W] in
    [0, 1] (1 = salient)."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    labels = superpixels(image, superpixel_size, compactness)
    n = labels.max() + 1
    if n < 2:  # a flat image: nothing stands out
        return np.zeros(labels.shape, np.float32)
    mean_lab, centroid = region_features(image, labels)
    colour_dist = np.sqrt(((mean_lab[:, None] - mean_lab[None]) ** 2).sum(-1))
    adj = adjacency(labels)
    on_boundary = boundary_ids(labels)
    clip = edge_clip(colour_dist, adj) if clip_edges else 0.0
    geodesic = geodesic_distances(colour_dist, adj, on_boundary, clip)
    w_bg = background_probability(boundary_connectivity(geodesic, on_boundary, sigma_geo),
                                  sigma_bnd)
    w_ctr = weighted_contrast(colour_dist, centroid, w_bg, sigma_spa)
    span = w_ctr.max() - w_ctr.min()
    w_fg = (w_ctr - w_ctr.min()) / span if span > 0 else np.zeros_like(w_ctr)
    smooth = np.where(adj, np.exp(-colour_dist ** 2 / (2 * sigma_clr ** 2)) + mu, 0.0)
    s = optimise_saliency(w_bg, w_fg, smooth)
    return np.clip(s[labels], 0.0, 1.0).astype(np.float32)


def centre_prior(height: int, width: int, sigma_fraction: float = 0.25) -> np.ndarray:
    """The baseline "the object is in the middle": a Gaussian bump [H, W] with peak 1 and
    sigma = sigma_fraction * side."""
    ys = (np.arange(height) + 0.5 - height / 2) / (sigma_fraction * height)
    xs = (np.arange(width) + 0.5 - width / 2) / (sigma_fraction * width)
    return np.exp(-(ys[:, None] ** 2 + xs[None] ** 2) / 2).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Metrics against ground-truth masks
# ---------------------------------------------------------------------------------------------

def f_beta(saliency: np.ndarray, truth: np.ndarray, beta_squared: float = F_BETA_SQUARED
           ) -> np.ndarray:
    """Per-image F-beta [N] at the adaptive threshold 2 x mean saliency (capped at 1).
    saliency: [N, H, W] in [0, 1]; truth: [N, H, W] bool (or {0, 1}). Predicted salient =
    saliency >= threshold (so an all-zero map predicts every pixel); an empty prediction
    scores 0."""
    s = np.asarray(saliency, np.float64)
    g = np.asarray(truth) > 0.5
    threshold = np.minimum(2 * s.mean(axis=(1, 2), keepdims=True), 1.0)
    pred = s >= threshold
    hit = (pred & g).sum((1, 2)).astype(np.float64)
    precision = hit / np.maximum(pred.sum((1, 2)), 1)
    recall = hit / np.maximum(g.sum((1, 2)), 1)
    denom = beta_squared * precision + recall
    return np.where(denom > 0, (1 + beta_squared) * precision * recall / np.where(
        denom > 0, denom, 1), 0.0)


def mae(saliency: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image mean absolute error [N] between saliency in [0, 1] and the {0, 1} truth."""
    return np.abs(np.asarray(saliency, np.float64) - (np.asarray(truth) > 0.5)).mean((1, 2))


# ---------------------------------------------------------------------------------------------
# Precomputation for training
# ---------------------------------------------------------------------------------------------

def mask_cache_path(cache_dir: str, dataset: str, split: str) -> str:
    """Where `compute_split_masks` stores RBD masks of `dataset` (e.g. shapes_textures/biased32)
    `split`: CACHE_DIR/rbd/<dataset with / as _>_<split>.npy."""
    return os.path.join(cache_dir, "rbd", f"{dataset.replace('/', '_')}_{split}.npy")


def compute_split_masks(builder, split: str, path: str, progress: bool = True,
                        **rbd_kwargs) -> np.ndarray:
    """RBD masks of every example of `split`, saved to `path` as uint8 [N, H, W] (saliency x
    255) with row = `indexing.example_index`; loaded instead when `path` exists."""
    if os.path.exists(path):
        return np.load(path)
    import tensorflow_datasets as tfds
    from ssl_jax.data import indexing  # imported here: the RBD functions need no TensorFlow

    offsets, n = indexing.split_offsets(builder, split)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(add_tfds_id=True))
    ds = ds.map(lambda ex: (indexing.example_index(ex["tfds_id"], offsets), ex["image"]))
    out = None
    for index, image in tqdm(ds.as_numpy_iterator(), total=n, desc=f"RBD {split}",
                             disable=not progress, dynamic_ncols=True):
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, -1)
        if out is None:
            out = np.zeros((n,) + image.shape[:2], np.uint8)
        out[index] = np.round(rbd(image, **rbd_kwargs) * 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npy"
    np.save(tmp, out)
    os.replace(tmp, path)  # atomic: a crashed run never leaves a half-written cache
    return out
