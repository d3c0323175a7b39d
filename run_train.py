"""Train a model: python run_train.py --config configs/simclr.py:smoke --workdir DIR [--config.KEY=VALUE]

Resumes automatically from the newest checkpoint in DIR; re-running a finished run says so and
changes nothing. With --distributed, calls jax.distributed.initialize() (coordinator/process
flags, or the cluster's environment). Errors: one line, exit code 2 (ssl_jax/errors.py;
--debug shows the traceback).
"""
from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssl_jax import host_memory, xla_flags  # noqa: E402
host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax import errors  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/simclr.py:smoke.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main():
    # Flags and the config file are checked before JAX and TensorFlow are imported (seconds).
    errors.parse_flags(FLAGS, sys.argv, module=__name__)
    import jax
    if FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX
    from ssl_jax import train
    logging.getLogger("absl").setLevel(logging.WARNING)
    train.train(FLAGS.config, FLAGS.workdir)


def cli():
    """Console entry point (`ssl-jax-train`): main() under the one-line error policy."""
    errors.run(main)


if __name__ == "__main__":
    cli()
