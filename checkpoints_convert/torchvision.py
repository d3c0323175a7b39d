"""torchvision-layout state_dicts <-> Flax variables for the ssl_jax model zoo.

The mapping is mechanical because the Flax modules mirror torchvision's names:

  torch key                         Flax (collection, path)                      transform
  layer1.0.conv1.weight  [O,I,h,w]  params/layer1_0/conv1/kernel     [h,w,I,O]   transpose(2,3,1,0)
  fc.weight / classifier.6.weight   params/fc/kernel  [I, O]                     .T
  *.bias                            params/.../bias                              -
  bnK.weight / bnK.bias             params/.../scale / bias                      -
  bnK.running_mean / running_var    batch_stats/.../mean / var                   -
  bnK.num_batches_tracked           (dropped; written as 0 on export)

A numeric torch path segment joins its parent with "_" (``layer1.0`` -> ``layer1_0``,
``downsample.1`` -> ``downsample_1``, ``features.10`` -> ``features_10``).

Key accounting is exact: the expected keys come from the Flax model's own (abstract) variable
tree, and any missing key, unexpected key or shape mismatch raises one ValueError listing all of
them. To support another zoo family (MoCo's ``module.encoder_q.``, SwAV's ``module.``), select
and strip its prefix with ``select_prefix``, drop its head keys explicitly, then call
``torch_to_flax`` (or ``state_dict_to_variables`` with another model's abstract tree).
"""
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models import MODEL_NAMES, get_model

_NBT = "num_batches_tracked"
# Flax leaf name -> torch leaf name, per collection.
_LEAF_TO_TORCH = {"params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
                  "batch_stats": {"mean": "running_mean", "var": "running_var"}}


def _to_numpy(value: Any) -> np.ndarray:
    """np.ndarray from a numpy array, jax array or torch tensor (torch is not imported here)."""
    if hasattr(value, "detach"):  # torch.Tensor; numpy has no bfloat16, so widen it first
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """Flax (collection, path) -> torch state_dict key, e.g. ('layer1_0','conv1','kernel')."""
    leaf = _LEAF_TO_TORCH.get(collection, {}).get(path[-1])
    if leaf is None:
        raise ValueError(f"no torch name for {collection}/{'/'.join(path)}; "
                         f"known leaves: {_LEAF_TO_TORCH}")
    modules = [re.sub(r"^(.+)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
    return ".".join(modules + [leaf])


def _torch_layout(flax_leaf: str, x: np.ndarray) -> np.ndarray:
    """Flax array -> torch layout (HWIO -> OIHW for convs, [I,O] -> [O,I] for Dense)."""
    if flax_leaf == "kernel" and x.ndim == 4:
        return np.transpose(x, (3, 2, 0, 1))
    if flax_leaf == "kernel" and x.ndim == 2:
        return x.T
    return x


def _flax_layout(flax_leaf: str, x: np.ndarray) -> np.ndarray:
    """torch array -> Flax layout (inverse of _torch_layout)."""
    if flax_leaf == "kernel" and x.ndim == 4:
        return np.transpose(x, (2, 3, 1, 0))
    if flax_leaf == "kernel" and x.ndim == 2:
        return x.T
    return x


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return out


def variables_to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax {"params", "batch_stats"} -> torch-layout state_dict (numpy arrays).

    Every BatchNorm also gets ``num_batches_tracked = 0`` (int64 scalar), as torch expects a
    complete BN state. Collections other than params/batch_stats are ignored.
    """
    sd: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        for path, value in _flat(variables.get(collection, {})).items():
            sd[torch_key(collection, path)] = np.ascontiguousarray(
                _torch_layout(path[-1], _to_numpy(value)))
            if collection == "batch_stats" and path[-1] == "mean":
                sd[torch_key(collection, path).rsplit(".", 1)[0] + "." + _NBT] = np.array(
                    0, np.int64)
    return sd


def state_dict_to_variables(state_dict: Mapping[str, Any], abstract_variables: Mapping[str, Any],
                            what: str = "model") -> dict[str, Any]:
    """torch-layout state_dict -> Flax variables shaped like ``abstract_variables``.

    ``abstract_variables`` is any tree of arrays/ShapeDtypeStructs (e.g. ``jax.eval_shape`` of
    ``model.init``). Raises one ValueError naming all missing keys, unexpected keys and shape
    mismatches (torch shapes); ``num_batches_tracked`` entries are ignored. Arrays are cast to
    the abstract dtype and returned as numpy, nested {"params": ..., "batch_stats": ...}.
    """
    expected = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in _flat(abstract_variables.get(collection, {})).items():
            expected[torch_key(collection, path)] = (collection, path, leaf)
    given = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] != _NBT}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    out: dict[tuple[str, ...], Any] = {}
    mismatched = []
    for key in sorted(set(expected) & set(given)):
        collection, path, leaf = expected[key]
        value = _to_numpy(given[key])
        want = _torch_layout(path[-1], np.empty(leaf.shape, np.bool_)).shape
        if value.shape != want:
            mismatched.append(f"{key}: got {tuple(value.shape)}, expected {tuple(want)}")
            continue
        out[(collection,) + path] = np.ascontiguousarray(
            _flax_layout(path[-1], value).astype(leaf.dtype))
    if missing or unexpected or mismatched:
        raise ValueError(f"state_dict does not match {what}: missing keys {missing}; "
                         f"unexpected keys {unexpected}; shape mismatches {mismatched}")
    return _nest(out)


def select_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys that start with ``prefix`` (e.g. "module.encoder_q."), with the prefix removed.

    Only a leading prefix is stripped; keys without it are left out (other sub-networks), and
    the exact accounting in ``torch_to_flax`` then catches a wrong prefix as missing keys.
    """
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def infer_model_kwargs(state_dict: Mapping[str, Any], model_name: str) -> dict[str, Any]:
    """Architecture kwargs readable from a torchvision-layout state_dict's shapes.

    ResNet: num_classes (``fc.weight``, else None), width (stem channels / 64), cifar_stem
    (3x3 stem conv), and for bottleneck ResNets width_per_group (``layer1.0.conv1`` channels
    relative to the stage width: 128 for torchvision's wide_resnet50_2/101_2). AlexNet/VGG:
    num_classes (``classifier.6.weight``), width
    (``features.0`` channels / 64) and fc_dim. Padding cannot be read from weights.
    """
    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(_to_numpy(state_dict[key]).shape) if key in state_dict else None

    kwargs: dict[str, Any] = {}
    head, stem = (("fc.weight", "conv1.weight") if model_name.startswith("resnet")
                  else ("classifier.6.weight", "features.0.weight"))
    kwargs["num_classes"] = shape(head)[0] if shape(head) else None
    if shape(stem):
        kwargs["width"] = shape(stem)[0] / 64
        if model_name.startswith("resnet"):
            kwargs["cifar_stem"] = shape(stem)[-1] == 3
            inner = shape("layer1.0.conv1.weight")
            if shape("layer1.0.conv3.weight") and inner:
                # layer1's stage width is the stem width; wide ResNets double the inner convs.
                kwargs["width_per_group"] = int(round(64 * inner[0] / shape(stem)[0]))
    if not model_name.startswith("resnet"):
        fc6 = "classifier.1.weight" if model_name == "alexnet" else "classifier.0.weight"
        if shape(fc6):
            kwargs["fc_dim"] = shape(fc6)[0]
    return kwargs


def abstract_variables(model_name: str, in_channels: int = 3,
                       **model_kwargs: Any) -> dict[str, Any]:
    """ShapeDtypeStruct tree of ``get_model(model_name, **model_kwargs).init`` (no allocation).

    ``in_channels``: image channels the stem expects (1 for colorization's L, 2 for CMC's ab).
    """
    model = get_model(model_name, **model_kwargs)
    x = jax.ShapeDtypeStruct((1, 224, 224, in_channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _check_model_name(model_name: str) -> None:
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; valid names: {', '.join(MODEL_NAMES)}")


def _in_channels(state_dict: Mapping[str, Any], model_name: str) -> int:
    """Input channels of the stem conv (3 when the state_dict lacks it)."""
    stem = "conv1.weight" if model_name.startswith("resnet") else "features.0.weight"
    return _to_numpy(state_dict[stem]).shape[1] if stem in state_dict else 3


def torch_to_flax(state_dict: Mapping[str, Any], model_name: str,
                  **model_kwargs: Any) -> dict[str, Any]:
    """torchvision state_dict (numpy arrays or torch tensors) -> {"params", "batch_stats"}.

    ``model_kwargs`` are ``get_model`` kwargs; those not given are inferred from the weights'
    shapes (``infer_model_kwargs``), as is the number of input channels. Load the result into
    ``get_model(model_name, **same_kwargs)``. Exact key accounting, see
    ``state_dict_to_variables``.
    """
    _check_model_name(model_name)
    kwargs = {**infer_model_kwargs(state_dict, model_name), **model_kwargs}
    abstract = abstract_variables(model_name, _in_channels(state_dict, model_name), **kwargs)
    return state_dict_to_variables(state_dict, abstract, what=f"{model_name}({kwargs})")


def flax_to_torch(variables: Mapping[str, Any], model_name: str,
                  **model_kwargs: Any) -> dict[str, np.ndarray]:
    """{"params", "batch_stats"} -> torchvision state_dict of numpy arrays.

    The variables are checked against ``get_model(model_name, **model_kwargs)`` (kwargs not
    given are inferred) with the same exact accounting as the import direction, so what is
    written loads into torchvision with ``strict=True``.
    """
    _check_model_name(model_name)
    sd = variables_to_state_dict(variables)
    kwargs = {**infer_model_kwargs(sd, model_name), **model_kwargs}
    abstract = abstract_variables(model_name, _in_channels(sd, model_name), **kwargs)
    state_dict_to_variables(sd, abstract, what=f"{model_name}({kwargs})")
    return sd


def read_torch_file(path: str) -> dict[str, Any]:
    """``torch.load`` a checkpoint on CPU with ``weights_only=True`` (no arbitrary pickles)."""
    import torch  # optional dependency, only needed to read .pth files

    return torch.load(path, map_location="cpu", weights_only=True)
