"""Train a model: python run_train.py --config configs/simclr.py:smoke --workdir DIR [--config.KEY=VALUE]

Resumes automatically from the newest checkpoint in DIR. With --distributed, calls
jax.distributed.initialize() (coordinator/process flags, or the cluster's environment).
"""
from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ssl_jax  # noqa: E402,F401  (sets XLA:CPU flags before JAX starts)
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/simclr.py:smoke.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    if FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX
    from ssl_jax import train
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        train.train(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


def run():
    # Unknown config keys and malformed flags raise inside flag parsing: report them as one line.
    try:
        FLAGS(sys.argv)
    except (flags.Error, KeyError, AttributeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: {msg}")
    app.run(main, argv=[sys.argv[0]])


if __name__ == "__main__":
    run()
