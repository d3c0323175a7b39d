"""Flax -> PyTorch: a converted directory (or ssl_jax variables) back to a torch state_dict.

The backbone is written in torchvision names (loads into torchvision with ``strict=True``);
heads are written under ``heads.<name>.`` in ssl_jax's head names (``dense.0.weight``,
``bn.0.running_mean``, ``prototypes.0.weight``), since most zoo repos' head classes differ.
"""
import os
import tempfile
from typing import Any, Mapping

import numpy as np

from checkpoints_convert import torchvision as tv
from ssl_jax.models.load import read_metadata, restore_variables


def _subtree(variables: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {c: variables[c][name] for c in ("params", "batch_stats")
            if name in variables.get(c, {})}


def converted_to_state_dict(path: str) -> dict[str, np.ndarray]:
    """Converted directory -> {torch key: numpy array} (backbone + ``heads.<name>.*``)."""
    meta = read_metadata(path)
    variables = restore_variables(path)
    sd = tv.flax_to_torch(_subtree(variables, "backbone"), meta["model"]["name"],
                          **meta["model"]["kwargs"])
    for name in meta["heads"]:
        sd.update({f"heads.{name}.{k}": v for k, v in
                   tv.variables_to_state_dict(_subtree(variables, name)).items()})
    return sd


def save_state_dict(state_dict: Mapping[str, Any], out_file: str) -> str:
    """``torch.save`` a {key: numpy array} dict as torch tensors, atomically (temp + rename)."""
    import torch

    out_file = os.path.abspath(out_file)
    if os.path.exists(out_file):
        raise ValueError(f"output {out_file} already exists; choose a new file")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out_file)}.tmp-",
                               dir=os.path.dirname(out_file))
    os.close(fd)
    try:
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, tmp)
        os.rename(tmp, out_file)
    except BaseException:
        os.unlink(tmp)
        raise
    return out_file
