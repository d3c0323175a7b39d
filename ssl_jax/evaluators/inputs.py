"""What an evaluator evaluates: a network, a dataset, and the network's features on it.

`Network` is one network under evaluation, whether a run_train workdir, a converted PyTorch zoo
checkpoint (`load_network`) or the state of a run in progress (`network_of_run`, what the
trainer evaluates). `EvalData` is the dataset with its train and eval splits. `EvalInputs`
joins them and gives evaluators what they need, each computed once: the final features of a
split (`train()`, `test()`, `features(split)`), the pooled activations of named layers
(`layer_features`), the eval batches and images themselves. With a `cache_dir`, features are
also kept on disk (ssl_jax.evaluation.feature_cache), keyed by the network's content, so a
second run_eval on the same weights skips the forward passes.

Evaluators that only read features also run on plain arrays (`EvalInputs.from_arrays`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Iterator

import numpy as np

Split = tuple[np.ndarray, np.ndarray]  # (features [N, D] float32, labels [N])

# Default per-layer probe points: stage outputs, by the last component of the sown name.
DEFAULT_LAYER = re.compile(r"(stem|layer\d+|conv\d+|pool)")
# One example per image (ssl_jax.similarity.activations modes; "positions" makes one per pixel).
POOLINGS = ("gap", "flatten")


@dataclasses.dataclass(frozen=True)
class Network:
    """One network under evaluation and the evaluation defaults that go with it."""
    features_fn: Callable      # features_fn(*variables, images in [0, 1]) -> [B, D]
    variables: tuple           # features_fn's variables
    module: Any                # the Linen module (guided backprop clones it)
    apply_variables: dict      # {"params": ..., **collections}: module.apply's variables
    features_index: int | None  # which output of module.apply is the features; None: the output
    name: str                  # the method, or "converted <family>"
    label: str                 # short, for plot titles: the directory's name or the step
    describe: str              # one line for reports
    image_size: int
    crop_fraction: float       # eval centre crop
    batch_size: int
    dataset: str | None = None     # the run's own dataset and splits (None: converted)
    data_dir: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    augment: tuple | None = None   # (preset, overrides) of its training; None: converted
    identity: str | None = None    # the feature cache's key (content hash); None: no disk cache

    @property
    def apply_fn(self) -> Callable:
        return self.module.apply


def network_of_run(config, method, state, label: str, identity: str | None = None) -> Network:
    """A training run's network at `state`: its method's features and its config's data."""
    ds = config.dataset
    return Network(
        features_fn=method.features, variables=(state.params, state.model_state),
        module=method.net, apply_variables={"params": state.params, **state.model_state},
        features_index=0,  # every method's net returns (backbone features, ...)
        name=config.method, label=label,
        describe=f"{config.method}, {config.model.name} width {config.model.width}, "
                 f"step {int(state.step)}",
        image_size=ds.image_size, crop_fraction=ds.get("eval_crop_fraction", 1.0),
        batch_size=config.eval.batch_size, dataset=ds.name, data_dir=ds.get("data_dir"),
        train_split=ds.train_split, eval_split=ds.eval_split,
        augment=(config.augment.preset, dict(config.augment.get("overrides", {}))),
        identity=identity)


def load_network(path: str, image_size: int, mesh) -> Network:
    """A run_train workdir or a converted zoo checkpoint directory (`image_size` 0: the run's
    own, 224 for a converted one). Its identity is a hash of the restored variables: the
    checkpoint's content, not its path or step."""
    from ssl_jax import models, train
    from ssl_jax.evaluation.feature_cache import content_hash
    from ssl_jax.models.load import METADATA_FILE

    if not path:
        raise ValueError("--config.checkpoint is required (a run_train workdir or a converted "
                         "checkpoint directory)")
    label = os.path.basename(os.path.normpath(path))
    meta_path = os.path.join(path, METADATA_FILE)
    if os.path.exists(meta_path):  # converted zoo checkpoint
        module, variables = models.load(path, output="features")
        with open(meta_path) as f:
            family = json.load(f).get("family")

        def features_fn(variables, images):
            return module.apply(variables, images, train=False)

        return Network(features_fn=features_fn, variables=(variables,), module=module,
                       apply_variables=variables, features_index=None,
                       name=f"converted {family}", label=label,
                       describe=f"converted {family} checkpoint",
                       image_size=image_size or 224, crop_fraction=0.875, batch_size=256,
                       identity=f"converted, variables sha256 {content_hash(variables)}")
    config, method, state = train.load_trained(path, mesh)
    network = network_of_run(config, method, state, label,
                             identity=f"step {int(state.step)}, variables sha256 "
                                      f"{content_hash((state.params, state.model_state))}")
    if image_size:
        network = dataclasses.replace(network, image_size=image_size)
    return network


@dataclasses.dataclass(frozen=True)
class EvalData:
    """A dataset's train and eval splits (a TFDS builder), classes and class names."""
    name: str
    data_dir: str | None
    builder: Any
    train_split: str
    eval_split: str
    num_classes: int
    class_names: list[str]

    @property
    def splits(self) -> tuple[str, str]:
        return self.train_split, self.eval_split


def open_data(settings, network: Network) -> EvalData:
    """The dataset of run_eval's `settings` (dataset, data_dir, train/eval split,
    num_classes), each defaulting to the network's own run."""
    from ssl_jax.data import pipeline

    name = settings.dataset or network.dataset
    if not name:
        raise ValueError("--config.dataset is required for a converted checkpoint (e.g. "
                         "imagenette, cifar10, shapes_textures/small32)")
    data_dir = settings.data_dir or network.data_dir
    builder = pipeline.load_builder(name, data_dir)
    splits = (settings.train_split or network.train_split or "train",
              settings.eval_split or network.eval_split or "test")
    for split in splits:
        if split not in builder.info.splits:
            raise ValueError(f"dataset {name!r} has no split {split!r}; valid: "
                             f"{', '.join(builder.info.splits)}")
    label = builder.info.features["label"]
    return EvalData(name, data_dir, builder, *splits,
                    num_classes=settings.num_classes or label.num_classes,
                    class_names=list(label.names))


def data_of_run(config, builder) -> EvalData:
    """A training config's dataset (its train and eval splits) read through `builder`."""
    ds = config.dataset
    return EvalData(ds.name, ds.get("data_dir"), builder, ds.train_split, ds.eval_split,
                    ds.num_classes, list(builder.info.features["label"].names))


def sown_layers(network: Network, image_size: int | None = None) -> list[str]:
    """Every "/"-joined name the network sows, in forward order (shapes only, no compute)."""
    import jax
    import jax.numpy as jnp

    from ssl_jax.similarity.activations import flatten_intermediates

    size = image_size or network.image_size
    names: list[str] = []

    def trace(variables, x):  # names read inside the trace: eval_shape's output dict is sorted
        _, state = network.apply_fn(variables, x, train=False, mutable=["intermediates"])
        names[:] = list(flatten_intermediates(state.get("intermediates", {})))
        return 0

    jax.eval_shape(trace, network.apply_variables,
                   jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return names


def resolve_layers(spec: str, available: list[str]) -> list[str]:
    """'+'-separated names (full or last components) -> full sown names; "" -> the stages."""
    last = {n: n.split("/")[-1] for n in available}
    if not spec:
        picked = [n for n in available if DEFAULT_LAYER.fullmatch(last[n])]
        if not picked:
            raise ValueError(f"no default layers among {available}; set --config.layers")
        return picked
    out = []
    for want in filter(None, spec.split("+")):
        match = [n for n in available if want in (n, last[n])]
        if len(match) != 1:
            raise ValueError(f"layer {want!r} matches {len(match)} sown layers; valid: "
                             f"{', '.join(available)}")
        out.append(match[0])
    return out


@dataclasses.dataclass
class EvalInputs:
    """An evaluator's inputs: the final features of the train and eval splits, and (from
    `from_network`) the network and dataset behind them. Each split's features are computed
    at most once, so evaluators run together share one forward pass per split."""
    extract: Callable[[str], Split] | None  # None: the network's, through the cache
    train_split: str
    eval_split: str
    num_classes: int
    network: Network | None = None
    data: EvalData | None = None
    mesh: Any = None
    cache_dir: str | None = None   # on-disk feature cache (needs network.identity)
    progress: bool = False
    cache_hits: list[str] = dataclasses.field(default_factory=list)
    _done: dict[str, Split] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_arrays(cls, train: Split, test: Split, num_classes: int) -> "EvalInputs":
        splits = {"train": train, "test": test}
        return cls(splits.__getitem__, "train", "test", num_classes)

    @classmethod
    def from_network(cls, network: Network, data: EvalData, mesh, cache_dir: str | None = None,
                     progress: bool = False, cache_hits: list[str] | None = None
                     ) -> "EvalInputs":
        return cls(None, data.train_split, data.eval_split, data.num_classes, network=network,
                   data=data, mesh=mesh, cache_dir=cache_dir, progress=progress,
                   cache_hits=[] if cache_hits is None else cache_hits)

    def with_network(self, network: Network) -> "EvalInputs":
        """The same dataset, cache and settings for another network (e.g. the second network of
        a comparison), sharing this one's record of cache hits."""
        return EvalInputs.from_network(network, self.data, self.mesh, self.cache_dir,
                                       self.progress, self.cache_hits)

    # --- final features ---
    def features(self, split: str) -> Split:
        if split not in self._done:
            extract = self.extract or self._extract_final
            self._done[split] = extract(split)
        return self._done[split]

    def train(self) -> Split:
        return self.features(self.train_split)

    def test(self) -> Split:
        return self.features(self.eval_split)

    def needs_network(self, who: str) -> tuple[Network, EvalData]:
        """(network, data), or a ValueError naming `who` when these inputs are features only."""
        if self.network is None or self.data is None:
            raise ValueError(f"{who} needs the network and its data, not only features (run "
                             "it through run_eval or the trainer)")
        return self.network, self.data

    def _extract_final(self, split: str) -> Split:
        from ssl_jax import train

        key = self._cache_key(split, "features", "backbone")
        hit = self._cached(key)
        if hit is not None:
            return hit
        x, y = train.extract_features(self.network.features_fn, self.network.variables,
                                      self.batches(split, "features"), self.mesh)
        self._store(key, x, y)
        return x, y

    # --- layers ---
    def layers(self, spec: str) -> list[str]:
        """`spec` ('+'-separated layer names; "" for the stage outputs) as full sown names."""
        return resolve_layers(spec, sown_layers(self.network))

    def layer_features(self, split: str, layers: list[str], pooling: str
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({layer: pooled activations [N, D_l]}, labels [N]); one forward pass for all layers
        not yet cached."""
        from ssl_jax.similarity.activations import capture

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        keys = {n: self._cache_key(split, n, pooling) for n in layers}
        feats, labels = {}, None
        for n, key in keys.items():
            hit = self._cached(key)
            if hit is not None:
                feats[n], labels = hit
        missing = [n for n in layers if n not in feats]
        if missing:
            ys = []

            def images():  # valid rows only, as floats in [0, 1] (what the model trained on)
                for b in self.batches(split, "layers"):
                    ys.append(b["label"][b["valid"]])
                    yield b["image"][b["valid"]].astype(np.float32) / 255.0

            acts = capture(self.network.apply_fn, self.network.apply_variables, images(),
                           layers=missing, mode=pooling, progress=False)
            labels = np.concatenate(ys)
            for n in missing:
                feats[n] = acts[n]
                self._store(keys[n], acts[n], labels)
        return {n: feats[n] for n in layers}, labels

    # --- batches and images ---
    def batches(self, split: str, what: str, limit: int | None = None,
                batch_size: int | None = None, extra_keys: tuple = ()) -> Iterator[dict]:
        """The eval iterator of `split` at the network's resolution and crop, with a progress
        bar (sized for the first `limit` examples when the caller stops there); `extra_keys`:
        dataset features to add to each batch (e.g. dense targets)."""
        from tqdm import tqdm

        from ssl_jax.data import pipeline

        network, data = self.needs_network(f"reading {what} batches")
        batch_size = batch_size or network.batch_size
        n = min(pipeline.num_examples(data.builder, split), limit or float("inf"))
        it = pipeline.eval_iterator(data.builder, split, batch_size, network.image_size,
                                    crop_fraction=network.crop_fraction,
                                    extra_keys=tuple(extra_keys))
        return tqdm(it, total=int(math.ceil(n / batch_size)), desc=f"{what} {split}",
                    disable=not self.progress)

    def gather_images(self, split: str, indices) -> np.ndarray:
        """uint8 [len(indices), S, S, 3] eval-preprocessed images at positions `indices`."""
        wanted, found, seen = set(int(i) for i in indices), {}, 0
        for b in self.batches(split, "images"):
            imgs = b["image"][b["valid"]]
            for i in wanted & set(range(seen, seen + len(imgs))):
                found[i] = imgs[i - seen]
            seen += len(imgs)
            if len(found) == len(wanted):
                break
        return np.stack([found[int(i)] for i in indices])

    # --- the on-disk cache ---
    def _cache_key(self, split: str, layer: str, pooling: str) -> dict | None:
        # Keyed by content (the network's identity), not by the checkpoint's path: the same
        # weights elsewhere hit, other weights at the same path and step miss.
        if not self.cache_dir or self.network.identity is None:
            return None
        return cache_key(self.network, self.data, split, layer, pooling)

    def _cached(self, key: dict | None) -> Split | None:
        from ssl_jax.evaluation import feature_cache

        if key is None:
            return None
        hit = feature_cache.load(self.cache_dir, key)
        if hit is not None:
            self.cache_hits.append(feature_cache.cache_path(self.cache_dir, key))
        return hit

    def _store(self, key: dict | None, x: np.ndarray, y: np.ndarray) -> None:
        from ssl_jax.evaluation import feature_cache

        if key is not None:
            feature_cache.save(self.cache_dir, key, x, y)


def cache_key(network: Network, data: EvalData, split: str, layer: str, pooling: str) -> dict:
    """The feature cache's key of one (network content, dataset, split, layer, pooling,
    resolution) combination."""
    return {"identity": network.identity, "dataset": data.name, "data_dir": data.data_dir,
            "split": split, "layer": layer, "pooling": pooling,
            "image_size": network.image_size, "crop_fraction": network.crop_fraction}
