"""Zoo checkpoint -> Flax variables + metadata, and the atomic converted-directory writer.

    raw = read_checkpoint("moco_v2_800ep_pretrain.pth.tar")
    converted = convert(raw, "moco")                  # ValueError naming every bad key
    write_converted(converted, "out/moco_v2")         # Orbax variables/ + metadata.json

The heavy lifting (name/shape mapping, exact accounting) is ``checkpoints_convert.torchvision``;
this module unwraps each family's container, routes every key to the backbone, a head or an
explicit drop list (``families.py``), infers the architecture from the shapes, and collects all
problems of all parts into one error before anything is written.
"""
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from checkpoints_convert import torchvision as tv
from checkpoints_convert.families import Family, get_family
from ssl_jax.models import resnet
from ssl_jax.models.load import FORMAT, METADATA_FILE, VARIABLES_DIR, build_head


@dataclasses.dataclass
class Converted:
    """Result of ``convert``: variables {"params", "batch_stats"} with a "backbone" subtree and
    one subtree per head, plus the metadata written next to them (see ssl_jax.models.load)."""
    variables: dict[str, Any]
    metadata: dict[str, Any]


# torch.save's legacy (non-zip) format starts with a pickled magic number: this LONG1 opcode
# with its 10 bytes, right after the PROTO opcode (and FRAME, from pickle protocol 4 on).
_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def check_torch_file(path: str) -> None:
    """Raise ValueError unless `path` is in one of torch.save's formats: a zip archive with a
    `data.pkl` (torch >= 1.6) or a legacy pickle that starts with torch's magic number.

    Run before any unpickling: a file that is not a torch checkpoint at all (random bytes, an
    HTML error page saved as .pth) must be reported as such, never as a legacy file that
    `--unsafe-unpickle` would load, since that would execute whatever it holds."""
    import zipfile

    if not os.path.isfile(path):
        raise FileNotFoundError(f"source checkpoint {path!r} does not exist (--src)")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path} is a damaged zip archive ({e}): a truncated download? "
                             "Fetch the checkpoint again") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise ValueError(f"{path} is a zip archive but not a PyTorch checkpoint (no "
                             f"data.pkl among {names[:5]})")
        return
    if not (head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC in head[:32]):
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip nor its "
                         f"legacy format; it starts with {head[:24]!r}); check --src, e.g. "
                         "that the download saved the file and not an error page")


def read_checkpoint(path: str, unsafe_unpickle: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``, after `check_torch_file`.

    Legacy files that pickle other objects (argparse Namespaces, numpy scalars) need
    ``unsafe_unpickle=True``, which runs ``torch.load(weights_only=False)`` and so EXECUTES
    code embedded in the file: only for files you trust.
    """
    check_torch_file(path)
    import torch  # optional dependency: only reading .pth files needs it

    if unsafe_unpickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle.UnpicklingError with a long explanation
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" not in str(e):  # a torch file that torch cannot read
            raise ValueError(f"{path} is a damaged PyTorch checkpoint; torch said: {first}") \
                from None
        raise ValueError(f"{path} needs full unpickling (it stores non-tensor objects); rerun "
                         f"with --unsafe-unpickle, which EXECUTES code from the file, only if "
                         f"you trust it. torch said: {first}") from None


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _containers(raw: Any, family: Family) -> tuple[dict[str, Mapping[str, Any]], list[str]]:
    """{container name: state_dict} and the ignored top-level entries (epoch, optimizer...)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"family {family.name}: expected a dict checkpoint, got "
                         f"{type(raw).__name__}")
    if family.containers == ("",):
        return {"": raw}, []
    missing = [c for c in family.containers if c not in raw or not isinstance(raw[c], Mapping)]
    if missing:
        raise ValueError(f"family {family.name}: checkpoint has no state_dict entries "
                         f"{missing}; its top-level keys are {sorted(map(str, raw))[:20]}")
    return ({c: raw[c] for c in family.containers},
            sorted(str(k) for k in raw if k not in family.containers))


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for pattern, repl in renames:
        if re.fullmatch(pattern, key):
            return re.sub(f"^(?:{pattern})$", repl, key)
    return key


def split(raw: Any, family: Family
          ) -> tuple[dict[str, dict[str, Any]], dict[str, int], list[str]]:
    """Route every key of a checkpoint to its part.

    Returns ({"backbone" | head name: renamed state_dict}, {drop prefix: number of keys
    dropped}, ignored top-level entries). Keys claimed by no part raise one ValueError naming
    them all.
    """
    containers, ignored = _containers(raw, family)
    parts: dict[str, dict[str, Any]] = {}
    dropped, unclaimed = [], []
    for cname, sd in containers.items():
        cparts = sorted((p for p in family.parts if p.container == cname),
                        key=lambda p: -len(p.prefix))  # longest (most specific) prefix first
        for key, value in sd.items():
            part = next((p for p in cparts if str(key).startswith(p.prefix)), None)
            where = f"{cname}:{key}" if cname else str(key)
            if part is None:
                unclaimed.append(where)
            elif part.target == "drop":
                dropped.append(f"{cname}:{part.prefix}" if cname else part.prefix)
            else:
                parts.setdefault(part.target, {})[
                    _rename(key[len(part.prefix):], part.renames)] = value
    if unclaimed:
        prefixes = sorted({p.prefix for p in family.parts})
        raise ValueError(f"family {family.name}: unexpected keys {sorted(unclaimed)} (known "
                         f"prefixes: {prefixes})")
    return parts, {p: dropped.count(p) for p in sorted(set(dropped))}, ignored


def infer_resnet_name(state_dict: Mapping[str, Any]) -> str:
    """resnet18..152 from the block counts and block type of a torchvision-named state_dict."""
    counts = [0, 0, 0, 0]
    for key in state_dict:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            counts[int(m[1]) - 1] = max(counts[int(m[1]) - 1], int(m[2]) + 1)
    bottleneck = "layer1.0.conv3.weight" in state_dict
    for name, sizes in resnet.STAGE_SIZES.items():
        if tuple(counts) == sizes and resnet.BOTTLENECK[name] == bottleneck:
            return name
    raise ValueError(f"cannot infer a ResNet from the keys: blocks per stage {counts}, "
                     f"bottleneck={bottleneck}; valid: "
                     f"{ {n: s for n, s in resnet.STAGE_SIZES.items()} }; first keys: "
                     f"{sorted(state_dict)[:8]}")


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(tv._to_numpy(sd[key]).shape)


def infer_head(sd: dict[str, Any]) -> tuple[str, dict[str, Any], int, dict[str, Any]]:
    """(kind, build_head kwargs, input width, state_dict in head names) from renamed head keys.

    The kind is read from which keys exist (prototypes.*, dense.*, bn.*, biases); the exact
    accounting afterwards still checks every key and shape against the built head.
    """
    keys = set(sd)
    if keys and all(k.startswith("dense.0.") for k in keys):  # a one-Linear Sequential
        sd = {"dense." + k[len("dense.0."):]: v for k, v in sd.items()}
        keys = set(sd)
    if any(k.startswith("prototypes.") for k in keys):
        idx = sorted({int(k.split(".")[1]) for k in keys if k.startswith("prototypes.")})
        shapes = [_shape(sd, f"prototypes.{i}.weight") for i in idx
                  if f"prototypes.{i}.weight" in sd]
        return "prototypes", {"sizes": [s[0] for s in shapes]}, shapes[0][1], sd
    if "dense.weight" in keys:
        out, d = _shape(sd, "dense.weight")
        return "linear", {"num_classes": out}, d, sd
    layers = sorted({int(k.split(".")[1]) for k in keys if re.match(r"dense\.\d+\.", k)})
    if not layers or "dense.0.weight" not in keys:
        raise ValueError(f"cannot recognise a head from keys {sorted(keys)}")
    hidden, d = _shape(sd, "dense.0.weight")
    out = _shape(sd, f"dense.{layers[-1]}.weight")[0] if f"dense.{layers[-1]}.weight" in sd \
        else hidden
    if not any(k.startswith("bn.") for k in keys):
        return "mlp", {"hidden_dim": hidden, "out_dim": out}, d, sd
    if "dense.0.bias" in keys:
        return "mlp_bn", {"hidden_dim": hidden, "out_dim": out}, d, sd
    return "mlp_v2", {"hidden_dim": hidden, "out_dim": out, "num_layers": len(layers)}, d, sd


def _head_abstract(kind: str, kwargs: dict[str, Any], in_dim: int) -> dict[str, Any]:
    head = build_head(kind, **kwargs)
    x = jax.ShapeDtypeStruct((1, in_dim), jnp.float32)
    return jax.eval_shape(lambda x: head.init(jax.random.key(0), x, train=False), x)


def convert(raw: Any, family: str | Family, padding: str | None = None,
            source: Mapping[str, Any] | None = None) -> Converted:
    """A loaded zoo checkpoint (``read_checkpoint``) -> Converted variables and metadata.

    ``padding`` overrides the family's ResNet padding mode. ``source`` (file name, sha256) is
    recorded in the metadata. Raises one ValueError naming every unexpected, missing or
    mis-shaped key of every part (backbone and heads).
    """
    fam = get_family(family) if isinstance(family, str) else family
    parts, dropped, ignored = split(raw, fam)
    backbone = parts.pop("backbone", {})
    if not backbone:
        raise ValueError(f"family {fam.name}: no backbone keys (prefixes "
                         f"{sorted({p.prefix for p in fam.parts if p.target == 'backbone'})})")
    model_name = infer_resnet_name(backbone) if fam.arch == "resnet" else fam.arch
    kwargs = tv.infer_model_kwargs(backbone, model_name)
    if model_name.startswith("resnet"):
        kwargs["padding"] = padding or fam.padding
    elif padding not in (None, "torch"):
        raise ValueError(f"padding={padding!r} is only for ResNets; {model_name} uses 'torch'")
    errors: list[str] = []
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    try:
        abstract = tv.abstract_variables(model_name, tv._in_channels(backbone, model_name),
                                         **kwargs)
        v = tv.state_dict_to_variables(backbone, abstract, what=f"{model_name}({kwargs})")
        params["backbone"], stats["backbone"] = v["params"], v.get("batch_stats", {})
    except ValueError as e:
        errors.append(f"backbone: {e}")
    heads_meta: dict[str, Any] = {}
    for name, sd in sorted(parts.items()):
        try:
            for key in fam.zero_keys:
                if key in sd:
                    if np.any(tv._to_numpy(sd[key]) != 0):
                        raise ValueError(f"{key} must be all zeros (the Flax head has no such "
                                         f"parameter)")
                    sd = {k: v for k, v in sd.items() if k != key}
            kind, hkw, in_dim, sd = infer_head(sd)
            v = tv.state_dict_to_variables(sd, _head_abstract(kind, hkw, in_dim),
                                           what=f"{name} head {kind}({hkw})")
        except ValueError as e:
            errors.append(f"{name} head: {e}")
            continue
        params[name] = v["params"]
        if v.get("batch_stats"):
            stats[name] = v["batch_stats"]
        heads_meta[name] = {"kind": kind, "kwargs": hkw, "in_features": in_dim}
    if errors:
        raise ValueError(f"family {fam.name}: " + " | ".join(errors))

    variables = {"params": params, "batch_stats": {k: s for k, s in stats.items() if s}}
    metadata = {
        "format": FORMAT,
        "family": fam.name,
        "description": fam.description,
        "source": dict(source or {}),
        "model": {"name": model_name, "kwargs": kwargs},
        "has_classifier": kwargs.get("num_classes") is not None,
        "heads": heads_meta,
        "input_convention": {**fam.convention.to_json(), "padding": kwargs.get("padding",
                                                                               "torch")},
        "dropped_keys": dropped,
        "ignored_entries": ignored,
        "notes": list(fam.notes),
    }
    return Converted(variables, metadata)


def write_converted(converted: Converted, out_dir: str,
                    check: Callable[[str], None] | None = None) -> str:
    """Write ``variables/`` (Orbax) and ``metadata.json`` into ``out_dir`` atomically.

    Everything is built in a temporary sibling directory renamed into place at the end, so a
    failure leaves no ``out_dir``; ``check(tmp_dir)`` (e.g. ``--verify``) runs on it before the
    rename, so a failed check leaves nothing either. Refuses to overwrite an existing path.
    Returns the absolute path.
    """
    import orbax.checkpoint as ocp  # heavy import, only needed to write

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise ValueError(f"output {out_dir} already exists; choose a new directory")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, VARIABLES_DIR), converted.variables)
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(converted.metadata, f, indent=1, sort_keys=True)
        if check is not None:
            check(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def convert_file(src: str, family: str, out_dir: str, padding: str | None = None,
                 unsafe_unpickle: bool = False) -> Converted:
    """read_checkpoint + convert + write_converted; nothing is written on any error."""
    out = os.path.abspath(out_dir)
    if os.path.exists(out):  # fail before the (slow) read and conversion
        raise ValueError(f"output {out} already exists; choose a new directory")
    raw = read_checkpoint(src, unsafe_unpickle)
    converted = convert(raw, family, padding,
                        source={"file": os.path.basename(src), "sha256": sha256(src)})
    write_converted(converted, out)
    return converted
