"""``--verify``: run the source weights in torch and the converted directory in Flax, compare.

The torch side is a functional re-implementation (``F.conv2d``, ``F.batch_norm``...) driven by
the torchvision-named state_dict that ``convert.split`` produces, so it needs no zoo code and
no torchvision; it follows the checkpoint's padding mode (torch, TF SAME, SimCLR's SAME stem
pool) and input convention. Both sides see the same [0, 1] RGB images: uniform noise and
scikit-image's natural sample photos, at 224 px and an odd size. Prints max |diff| per stage
and on every output (backbone and each head).
"""
import functools
from typing import Any, Mapping

import jax
import numpy as np

from checkpoints_convert.convert import infer_head, split
from checkpoints_convert.families import get_family
from ssl_jax.models import layer_names, load
from ssl_jax.models.load import read_metadata


def _tf_same(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _conv(F, x, w, b, stride, pad, same):
    if same:  # TF SAME: extra pixel at the bottom/right
        (pt, pb), (pl, pr) = _tf_same(x.shape[2], w.shape[2], stride), _tf_same(
            x.shape[3], w.shape[3], stride)
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride)
    return F.conv2d(x, w, b, stride, pad)


def _maxpool(F, x, k, s, pad, same):
    if same:
        (pt, pb), (pl, pr) = _tf_same(x.shape[2], k, s), _tf_same(x.shape[3], k, s)
        return F.max_pool2d(F.pad(x, (pl, pr, pt, pb), value=-float("inf")), k, s)
    return F.max_pool2d(x, k, s, pad)


def torch_backbone(sd: Mapping[str, Any], model_name: str, kwargs: Mapping[str, Any],
                   x: Any) -> tuple[Any, dict[str, Any]]:
    """Functional torch forward of a torchvision-named state_dict: x NCHW -> (output, acts).

    acts uses ssl_jax's sown names (``ssl_jax.models.layer_names``), NCHW for maps.
    """
    import torch
    import torch.nn.functional as F

    t = {k: torch.as_tensor(np.asarray(v)).float() for k, v in sd.items()
         if not k.endswith("num_batches_tracked")}

    def bn(x, name):
        return F.batch_norm(x, t[f"{name}.running_mean"], t[f"{name}.running_var"],
                            t.get(f"{name}.weight"), t.get(f"{name}.bias"), False, 0.0, 1e-5)

    acts = {}
    if model_name.startswith("resnet"):
        padding = kwargs.get("padding", "torch")
        same_conv, same_pool = padding == "same", padding != "torch"
        if kwargs.get("cifar_stem"):
            x = F.relu(bn(F.conv2d(x, t["conv1.weight"], None, 1, 1), "bn1"))
        else:
            x = F.relu(bn(_conv(F, x, t["conv1.weight"], None, 2, 3, same_conv), "bn1"))
            x = _maxpool(F, x, 3, 2, 1, same_pool)
        acts["stem"] = x
        for stage in range(1, 5):
            b = 0
            while f"layer{stage}.{b}.conv1.weight" in t:
                p = f"layer{stage}.{b}"
                stride = 2 if stage > 1 and b == 0 else 1
                bottleneck = f"{p}.conv3.weight" in t
                y = F.relu(bn(_conv(F, x, t[f"{p}.conv1.weight"], None,
                                    1 if bottleneck else stride, 0 if bottleneck else 1,
                                    same_conv), f"{p}.bn1"))
                y = bn(_conv(F, y, t[f"{p}.conv2.weight"], None, stride if bottleneck else 1,
                             1, same_conv), f"{p}.bn2")
                if bottleneck:
                    y = bn(F.conv2d(F.relu(y), t[f"{p}.conv3.weight"]), f"{p}.bn3")
                short = x
                if f"{p}.downsample.0.weight" in t:
                    short = bn(_conv(F, x, t[f"{p}.downsample.0.weight"], None, stride, 0,
                                     same_conv), f"{p}.downsample.1")
                x = F.relu(y + short)
                acts[p] = acts[f"layer{stage}"] = x
                b += 1
        x = x.mean((2, 3))
        acts["pool"] = x
        if "fc.weight" in t:
            x = F.linear(x, t["fc.weight"], t["fc.bias"])
        return x, acts

    # AlexNet / VGG: walk torchvision's Sequential indices in the order ssl_jax builds them.
    from ssl_jax.models import alexnet as ax
    from ssl_jax.models.pooling import _adaptive_matrix

    batch_norm = model_name.endswith("_bn")
    idx = 0
    if model_name.startswith("alexnet"):
        specs = [(k, s, p, pool, f"conv{i + 1}") for i, (_, k, s, p, pool) in
                 enumerate(ax._CONVS)]
        pool_k, pool_s, out_hw = 3, 2, 6
    else:
        cfg = [2, 2, 3, 3, 3]
        specs = [(3, 1, 1, j == n - 1, f"conv{i + 1}_{j + 1}") for i, n in enumerate(cfg)
                 for j in range(n)]
        pool_k, pool_s, out_hw = 2, 2, 7
    for k, s, p, pool, name in specs:
        x = F.conv2d(x, t[f"features.{idx}.weight"], t[f"features.{idx}.bias"], s, p)
        idx += 1
        if batch_norm:
            x = bn(x, f"features.{idx}")
            idx += 1
        x = F.relu(x)
        idx += 1
        acts[name] = x
        if pool:
            if not model_name.startswith("alexnet"):
                acts[name.split("_")[0]] = x
            x = F.max_pool2d(x, pool_k, pool_s)
            idx += 1
    ph = torch.as_tensor(_adaptive_matrix(x.shape[2], out_hw))
    pw = torch.as_tensor(_adaptive_matrix(x.shape[3], out_hw))
    x = torch.einsum("nchw,oh,pw->ncop", x, ph, pw)
    acts["pool5"] = x
    x = x.flatten(1)
    if model_name.startswith("alexnet") and batch_norm:
        fcs = [(0, None, 1, "fc6"), (3, None, 4, "fc7")]
    elif model_name.startswith("alexnet"):
        fcs = [(1, 1, None, "fc6"), (4, 4, None, "fc7")]
    else:
        fcs = [(0, 0, None, "fc6"), (3, 3, None, "fc7")]
    for w, b, bnk, name in fcs:
        x = F.linear(x, t[f"classifier.{w}.weight"],
                     None if b is None else t[f"classifier.{b}.bias"])
        if bnk is not None:
            x = bn(x, f"classifier.{bnk}")
        x = F.relu(x)
        acts[name] = x
    if "classifier.6.weight" in t:
        x = F.linear(x, t["classifier.6.weight"], t["classifier.6.bias"])
    return x, acts


def torch_head(sd: Mapping[str, Any], kind: str, x: Any) -> Any:
    """Functional torch forward of a head in ssl_jax head names (dense.i, bn.i, prototypes.i)."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.as_tensor(np.asarray(v)).float() for k, v in sd.items()}
    if kind == "prototypes":
        x = F.normalize(x, dim=1)
        outs = [F.linear(x, t[f"prototypes.{i}.weight"])
                for i in range(len([k for k in t if k.startswith("prototypes.")]))]
        return outs[0] if len(outs) == 1 else outs
    if kind == "linear":
        return F.linear(x, t["dense.weight"], t["dense.bias"])
    n = len({k.split(".")[1] for k in t if k.startswith("dense.")})
    for i in range(n):
        x = F.linear(x, t[f"dense.{i}.weight"], t.get(f"dense.{i}.bias"))
        if f"bn.{i}.running_mean" in t:
            x = F.batch_norm(x, t[f"bn.{i}.running_mean"], t[f"bn.{i}.running_var"],
                             t.get(f"bn.{i}.weight"), t.get(f"bn.{i}.bias"), False, 0.0, 1e-5)
        if i < n - 1:
            x = F.relu(x)
    return x


def sample_images(size: int, n_noise: int = 2, seed: int = 0) -> np.ndarray:
    """[3 + n_noise, size, size, 3] in [0, 1]: astronaut, chelsea, coffee, then noise."""
    import skimage.data
    import skimage.transform

    photos = [skimage.transform.resize(f(), (size, size), anti_aliasing=True)
              for f in (skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee)]
    noise = np.random.default_rng(seed).uniform(size=(n_noise, size, size, 3))
    return np.concatenate([np.stack(photos), noise]).astype(np.float32)


def _preprocess(x: np.ndarray, conv: Mapping[str, Any]) -> np.ndarray:
    """[0, 1] RGB NHWC -> the network's NCHW input, in numpy (independent of the Flax side)."""
    if conv["channel_order"] == "BGR":
        x = x[..., ::-1]
    x = x * conv["value_range"]
    if conv["mean"] is not None:
        x = (x - np.asarray(conv["mean"])) / np.asarray(conv["std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


# --verify fails beyond this max|diff| / max(1, max|torch|) on any stage or output. float32
# conversions of full-size ResNet-50s measure <= 2.4e-4 absolute at max|torch| ~4.5
# (docs/CHECKPOINTS.md), i.e. ~5e-5 relative: 1e-3 leaves room for other machines and sizes
# while a wrong padding, layout or BN convention is off by O(max|torch|).
TOLERANCE = 1e-3


def beyond_tolerance(errs: dict[str, float], scales: dict[str, float],
                     tolerance: float = TOLERANCE) -> dict[str, float]:
    """{entry: max|diff|} of the entries of `verify` whose difference exceeds the tolerance."""
    return {k: v for k, v in errs.items()
            if not v <= tolerance * max(1.0, scales.get(k, 1.0))}  # NaN counts as beyond


def verify(raw: Any, converted_dir: str, sizes: tuple[int, ...] = (224, 197),
           log: Any = print, scales: dict[str, float] | None = None) -> dict[str, float]:
    """Compare the torch forward of ``raw`` (the loaded source checkpoint) with the converted
    directory; returns {"<size>px/<stage or output>": max |diff|} and logs a table. ``scales``,
    when given, receives max |torch| of each entry (for `beyond_tolerance`)."""
    import torch

    meta = read_metadata(converted_dir)
    parts, _, _ = split(raw, get_family(meta["family"]))
    model_name, kwargs = meta["model"]["name"], meta["model"]["kwargs"]
    for sd in parts.values():  # keys the converter checked to be zero and dropped
        for key in get_family(meta["family"]).zero_keys:
            sd.pop(key, None)
    outputs = ["auto"] + list(meta["heads"]) + (["prototypes"] if "prototypes" in meta["heads"]
                                                else [])
    outputs = list(dict.fromkeys(outputs))
    names = layer_names(model_name)
    errs: dict[str, float] = {}
    scale = {} if scales is None else scales  # max |reference| per entry, to judge diffs
    for size in sizes:
        if model_name == "alexnet_bn" and size != 224 and meta["family"] == "rotnet_alexnet":
            log(f"{size}px: skipped (RotNet's torch model only runs at 224 px)")
            continue
        x = sample_images(size)
        xt = torch.from_numpy(_preprocess(x, meta["input_convention"]))
        with torch.no_grad():
            ref, ref_acts = torch_backbone(parts["backbone"], model_name, kwargs, xt)
            feats = ref_acts["pool"] if "pool" in ref_acts else ref_acts["fc7"]
            ref_heads = {}
            for name, h in meta["heads"].items():  # sorted: projection before prototypes
                sd = infer_head(dict(parts[name]))[3]
                src = ref_heads["projection"] if name == "prototypes" else feats
                ref_heads[name] = torch_head(sd, h["kind"], src)
        for output in outputs:
            module, variables = load(converted_dir, output=output)
            apply = jax.jit(functools.partial(module.apply, train=False,
                                              mutable=["intermediates"]))
            out, state = apply(variables, x)
            want = ref if output == "auto" else ref_heads[output]
            if isinstance(out, tuple):
                out, want = np.concatenate(out, 1), torch.cat(want, 1)
            errs[f"{size}px/{output} output"] = float(np.abs(np.asarray(out) -
                                                             want.numpy()).max())
            scale[f"{size}px/{output} output"] = float(want.abs().max())
            if output == "auto":
                acts = state["intermediates"]["backbone"]
                for n in names:
                    got = np.asarray(acts[n][0])
                    got = got.transpose(0, 3, 1, 2) if got.ndim == 4 else got
                    errs[f"{size}px/{n}"] = float(np.abs(got - ref_acts[n].numpy()).max())
                    scale[f"{size}px/{n}"] = float(ref_acts[n].abs().max())
    width = max(len(k) for k in errs)
    for k, v in errs.items():
        log(f"  {k:<{width}}  max|diff| {v:.3g}   (max|torch| {scale[k]:.3g})")
    return errs
