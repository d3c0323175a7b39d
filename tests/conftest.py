"""Test-wide setup: 8 fake CPU devices so every test exercises sharding."""
import os

# Must be set before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Scripts the tests run as subprocesses (`python experiments/quickstart.py`, ...) import this
# checkout's ssl_jax, configs and run_eval, installed (`pip install -r requirements.txt` installs
# it editable) or not; pytest.ini's `pythonpath` does the same for this process.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

from ssl_jax import xla_flags  # noqa: E402

xla_flags.configure_cpu()  # what the entry points run with: Eigen convolutions on CPU

import jax  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 fake CPU devices (XLA_FLAGS set too late?)"

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# One persistent XLA compilation cache for the whole run (and the subprocesses tests start):
# the trainer compiles the same programs in several tests.
_CACHE = tempfile.mkdtemp(prefix="ssl_jax_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A TFDS data_dir holding the built-in dataset's `tiny` config, built once per run."""
    import tensorflow_datasets as tfds

    import ssl_jax.data.builtin  # noqa: F401

    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("shapes_textures/tiny", data_dir=path).download_and_prepare()
    return path


@pytest.fixture(scope="session")
def smoke_simclr_run(tiny_data_dir, tmp_path_factory, worker_id):
    """Workdir of one uninterrupted 6-step SimCLR smoke run (tests/smoke_run.py), shared by the
    trainer and run_eval tests. Treat as read-only: copy it before changing anything.

    Under pytest-xdist (pytest.ini runs 2 workers) all workers share one run: the first to need
    it trains under a file lock in the session's common temp dir, the others wait and reuse it.
    """
    from filelock import FileLock

    if worker_id == "master":  # no xdist: this process is the whole session
        return _train_smoke_run(tmp_path_factory.mktemp("smoke_simclr"), tiny_data_dir)
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, common to this run's workers
    workdir, trained = shared / "smoke_simclr", shared / "smoke_simclr.trained"
    with FileLock(str(shared / "smoke_simclr.lock")):
        if not trained.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a failed attempt's leftovers
            _train_smoke_run(workdir, tiny_data_dir)
            trained.touch()
    return workdir


def _train_smoke_run(workdir, data_dir):
    import smoke_run

    out = smoke_run.run(smoke_run.smoke_cmd(workdir, data_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir
