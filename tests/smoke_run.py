"""The SimCLR smoke training command shared by the trainer tests and run_eval's end-to-end test
(conftest.py's session fixture `smoke_simclr_run` runs it once)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_cmd(workdir, data_dir, *extra) -> list[str]:
    """argv of a 6-step run_train.py SimCLR smoke run on the tiny dataset, no periodic eval."""
    return [sys.executable, os.path.join(ROOT, "run_train.py"), "--config",
            os.path.join(ROOT, "configs/simclr.py:smoke"), "--workdir", str(workdir),
            f"--config.dataset.data_dir={data_dir}", "--config.evals.knn.every_steps=0", *extra]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def tree_checksums(root) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (to show nothing was changed)."""
    import hashlib

    out = {}
    for folder, _, files in os.walk(str(root)):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, str(root))] = hashlib.sha256(f.read()).hexdigest()
    return out
