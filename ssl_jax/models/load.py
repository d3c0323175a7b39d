"""Load a converted checkpoint directory (``python -m checkpoints_convert``) as a Flax model.

    module, variables = load("converted/moco_v2")               # final output (see below)
    y = module.apply(variables, images, train=False)  # images: [N, H, W, 3] in [0, 1], RGB
    module, variables = load("converted/moco_v2", output="features")  # pooled backbone features

A converted directory holds ``variables/`` (an Orbax StandardCheckpointer tree
``{"params", "batch_stats"}`` with a ``backbone`` subtree and one subtree per head) and
``metadata.json`` (family, source sha256, backbone name and kwargs, heads, input convention).
The returned module applies the checkpoint's own input convention (value range, mean/std,
RGB/BGR) inside, so callers always feed [0, 1] RGB NHWC images.
"""
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.heads import LinearClassifier, MLPHead, ProjectionMLP, ProjectionMLPv2

METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
FORMAT = "ssl_jax.converted/1"
HEAD_KINDS = ("linear", "mlp", "mlp_bn", "mlp_v2", "prototypes")


class Prototypes(nn.Module):
    """SwAV / DeepCluster-v2 prototypes: L2-normalise, then one bias-free Dense per set.

    ``sizes``: prototypes per set (SwAV: (3000,); DeepCluster-v2: (3000, 3000, 3000)).
    Returns [N, sizes[0]] scores, or a tuple of them when there are several sets.
    """
    sizes: Sequence[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> Any:
        del train  # no BN; kept for a uniform head signature
        # torch F.normalize: x / max(||x||, 1e-12)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        out = tuple(nn.Dense(n, use_bias=False, dtype=self.dtype, name=f"prototypes_{i}")(x)
                    .astype(jnp.float32) for i, n in enumerate(self.sizes))
        return out[0] if len(out) == 1 else out


def build_head(kind: str, **kwargs: Any) -> nn.Module:
    """Head module of a converted checkpoint by kind (one of HEAD_KINDS).

    linear: LinearClassifier (``num_classes``); mlp: ProjectionMLP; mlp_bn: MLPHead
    (Dense-BN-ReLU-Dense); mlp_v2: ProjectionMLPv2; prototypes: Prototypes (``sizes``).
    """
    classes = {"linear": LinearClassifier, "mlp": ProjectionMLP, "mlp_bn": MLPHead,
               "mlp_v2": ProjectionMLPv2, "prototypes": Prototypes}
    if kind not in classes:
        raise ValueError(f"unknown head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")
    return classes[kind](**kwargs)


class ConvertedModel(nn.Module):
    """Input convention -> backbone -> optional head, for converted zoo checkpoints.

    Attributes:
      model_name: backbone ``get_model`` name; ``model_kwargs`` its kwargs as (key, value)
        pairs. The backbone's variables live under "backbone", each head's under its name.
      heads: (name, kind, kwargs pairs) per head present in the variables.
      output: "backbone" (logits if the backbone has a classifier, else pooled features), a
        head name (its output on the pooled features), or "prototypes" (SwAV: prototype scores
        of the L2-normalised projection).
      value_range: images are scaled from [0, 1] to [0, value_range] (255 for Caffe2 models).
      mean, std: per-channel statistics in the scaled units, in the network's channel order;
        None = no normalisation (SimCLR).
      bgr: reverse the channel order before normalising (Caffe2 models).
    """
    model_name: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    heads: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...] = ()
    output: str = "backbone"
    value_range: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False

    def preprocess(self, x: jnp.ndarray) -> jnp.ndarray:
        """[N, H, W, 3] in [0, 1] RGB -> what the original network was fed."""
        x = x.astype(jnp.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = x * self.value_range
        if self.mean is not None:
            x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        return x

    def setup(self) -> None:
        from ssl_jax.models import get_model  # the package imports this module

        # setup (not compact) so the submodules get stable names: get_model cannot take one.
        self.backbone = get_model(self.model_name, **dict(self.model_kwargs))
        for name, kind, kw in self.heads:  # attribute name = variable subtree name
            setattr(self, name, build_head(kind, **dict(kw)))

    def __call__(self, x: jnp.ndarray, train: bool = False) -> Any:
        """x: [N, H, W, 3] float in [0, 1], RGB -> the selected output (float32)."""
        y = self.backbone(self.preprocess(x), train)
        if self.output == "backbone":
            return y
        if self.output == "prototypes":
            y = getattr(self, "projection")(y, train)
        return getattr(self, self.output)(y, train)


def output_choices(metadata: Mapping[str, Any]) -> list[str]:
    """Valid ``output`` values of ``load`` for a checkpoint's metadata."""
    heads = list(metadata.get("heads", {}))
    return ["auto", "features", "backbone"] + heads


def module_from_metadata(metadata: Mapping[str, Any], output: str = "auto") -> ConvertedModel:
    """The ConvertedModel a metadata dict describes, computing ``output`` (see ``load``)."""
    choices = output_choices(metadata)
    if output not in choices:
        raise ValueError(f"output={output!r}; valid for this checkpoint: {choices}")
    kwargs = dict(metadata["model"]["kwargs"])
    if output in ("auto", "backbone"):
        out = "backbone"
    else:  # pooled features, or a head on them: drop the classifier
        kwargs["num_classes"] = None
        out = "backbone" if output == "features" else output
    needed = {out, "projection"} if out == "prototypes" else {out}
    # JSON gives lists; module fields want hashable tuples.
    heads = tuple((name, h["kind"], tuple(sorted(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in h["kwargs"].items())))
        for name, h in metadata.get("heads", {}).items() if name in needed)
    conv = metadata["input_convention"]
    return ConvertedModel(
        model_name=metadata["model"]["name"], model_kwargs=tuple(sorted(kwargs.items())),
        heads=heads, output=out, value_range=float(conv["value_range"]),
        mean=None if conv["mean"] is None else tuple(conv["mean"]),
        std=None if conv["std"] is None else tuple(conv["std"]),
        bgr=conv["channel_order"] == "BGR")


def prune_variables(variables: Mapping[str, Any], module: ConvertedModel) -> dict[str, Any]:
    """The subset of a converted checkpoint's variables that ``module`` uses.

    Drops the backbone classifier when the module computes features and the heads it does not
    apply, so ``module.apply`` sees exactly the tree ``module.init`` would build.
    """
    abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                              jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))

    def pick(tree: Any, shape_tree: Any) -> Any:
        if isinstance(shape_tree, Mapping):
            return {k: pick(tree[k], v) for k, v in shape_tree.items()}
        return tree

    return {c: pick(variables[c], abstract[c]) for c in abstract}


def read_metadata(path: str) -> dict[str, Any]:
    """metadata.json of a converted directory (ValueError if ``path`` is not one)."""
    meta_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{path!r} is not a converted checkpoint directory: no {METADATA_FILE}")
    with open(meta_path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


def restore_variables(path: str) -> dict[str, Any]:
    """All variables of a converted directory (backbone and every head), as numpy arrays."""
    import orbax.checkpoint as ocp  # imported lazily: heavy, and only this path needs it

    ckptr = ocp.StandardCheckpointer()
    target = os.path.abspath(os.path.join(path, VARIABLES_DIR))
    metadata = ckptr.metadata(target)
    tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(tree))
    restored = ckptr.restore(target, abstract)
    return jax.tree.map(lambda a: jax.device_get(a), restored)


def load(path: str, output: str = "auto") -> tuple[ConvertedModel, dict[str, Any]]:
    """(module, variables) of a converted checkpoint directory.

    ``module.apply(variables, images, train=False)`` with images [N, H, W, 3] in [0, 1] RGB
    returns, by ``output``:
      "auto": logits when the checkpoint has a classifier (torchvision, SimCLR, BYOL, RotNet),
        else the pooled backbone features;
      "features": pooled backbone features [N, num_features] (fc7 for AlexNet/VGG);
      "backbone": the backbone's own output (same as "auto");
      a head name from the metadata ("projection", "predictor", "prototypes"): that head's
        output on the pooled features (prototypes on the L2-normalised projection).
    Stage activations: ``module.apply(..., mutable=["intermediates"])`` ->
    ``state["intermediates"]["backbone"][name][0]`` (``ssl_jax.models.layer_names``).
    """
    metadata = read_metadata(path)
    module = module_from_metadata(metadata, output)
    return module, prune_variables(restore_variables(path), module)
