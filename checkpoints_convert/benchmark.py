"""Time a full ResNet-50 conversion (torch.load + sha256 + key mapping + Orbax write) and the
``ssl_jax.models.load`` of the result. Not a test: ``python -m checkpoints_convert.benchmark``.

The torch file is a torchvision-layout ResNet-50 with 1000 classes and random weights, built
here from shapes alone (torchvision is not needed).
"""
import os
import tempfile
import time

import numpy as np

from ssl_jax import host_memory, xla_flags

host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)


def _resnet50_state_dict(seed: int = 0) -> dict:
    """torchvision resnet50 keys and shapes with random float32 values (torch tensors)."""
    import torch

    from checkpoints_convert import torchvision as tv

    import jax

    abstract = tv.abstract_variables("resnet50", num_classes=1000)
    rng = np.random.default_rng(seed)
    sd = tv.variables_to_state_dict(
        jax.tree.map(lambda a: rng.standard_normal(a.shape, np.float32), abstract))
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def main() -> None:
    import torch

    from checkpoints_convert.convert import convert_file
    from ssl_jax.models import load

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "resnet50.pth")
        torch.save(_resnet50_state_dict(), src)
        print(f"source: {os.path.getsize(src) / 2**20:.0f} MiB")
        for i in range(3):
            start = time.perf_counter()
            convert_file(src, "torchvision_resnet", os.path.join(tmp, f"out{i}"))
            convert_s = time.perf_counter() - start
            start = time.perf_counter()
            load(os.path.join(tmp, f"out{i}"))
            print(f"run {i}: convert {convert_s:.2f} s, load {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
