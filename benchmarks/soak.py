"""Checkpoint soak (not a test): kill -9 a training run at random moments, damage its newest
checkpoint, fill its disk mid-save; after each, the same command must finish with parameters
bitwise equal to an uninterrupted run's, or stop with a clear last line and keep every
checkpoint it had already saved.

    python benchmarks/soak.py --kills 20 --corruptions 5 --disk-full 1 --outdir runs/soak

The disk-full case mounts a small tmpfs (needs root; skipped with a note otherwise). One run
is a 1-device SimCLR smoke run of --steps steps, checkpointing every 2 steps (keep 3).
Exit code 0 when every case passed; each failure is printed as one line.
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import flags

from ssl_jax import errors  # one-line errors, exit code 2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = ".orbax-checkpoint-tmp"


def command(workdir: str, data_dir: str, steps: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "run_train.py"), "--config",
            os.path.join(ROOT, "configs/simclr.py:smoke"), "--workdir", workdir,
            f"--config.dataset.data_dir={data_dir}", "--config.evals.knn.every_steps=0",
            f"--config.num_steps={steps}", "--config.checkpoint_every=2",
            "--config.keep_checkpoints=3"]


def environment(cache_dir: str) -> dict:
    env = dict(os.environ)
    # One CPU device (no forced fake devices), and one compilation cache for every restart so
    # a restart costs imports and data loading, not compiles.
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def run(cmd, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def params_of(workdir: str, step: int):
    """The parameters of checkpoint `step`, as numpy arrays, read on one device."""
    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          meta)
    return jax.tree.leaves(jax.device_get(checkpointer.restore(path, target)["params"]))


def bitwise_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape
                                    and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def saved_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


class Soak:
    def __init__(self, args):
        self.args = args
        self.env = environment(os.path.join(args.outdir, "xla_cache"))
        self.failures: list[str] = []
        self.counts = dict(kills=0, kills_mid_save=0, kill_runs_finished=0, corruptions=0,
                           disk_full=0)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"FAIL {what}", flush=True)

    def finish_and_compare(self, workdir: str, what: str) -> bool:
        """Re-run the same command to the end; its parameters must equal the reference's."""
        out = run(command(workdir, self.args.data_dir, self.args.steps), self.env)
        if out.returncode != 0:
            self.fail(f"{what}: the re-run exited {out.returncode}: {last_line(out.stderr)}")
            return False
        if not bitwise_equal(params_of(workdir, self.args.steps), self.reference):
            self.fail(f"{what}: the re-run's parameters differ from the uninterrupted run's")
            return False
        return True

    def reference_run(self) -> str:
        workdir = os.path.join(self.args.outdir, "reference")
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = command(workdir, self.args.data_dir, self.args.steps)
        cmd[-1] = "--config.keep_checkpoints=1000"  # every step, for the corruption cases
        t0 = time.perf_counter()
        out = run(cmd, self.env)
        if out.returncode != 0:
            sys.exit(f"error: the uninterrupted reference run failed: {last_line(out.stderr)}")
        duration = time.perf_counter() - t0
        self.reference = params_of(workdir, self.args.steps)
        # Kill times are drawn over a run whose programs are already in the compile cache.
        warm = os.path.join(self.args.outdir, "warm")
        shutil.rmtree(warm, ignore_errors=True)
        t0 = time.perf_counter()
        run(command(warm, self.args.data_dir, self.args.steps), self.env)
        self.warm_duration = time.perf_counter() - t0
        print(f"reference run: {duration:.1f} s ({self.warm_duration:.1f} s warm), checkpoints "
              f"{saved_steps(workdir)}", flush=True)
        return workdir

    def kill_moment(self, proc, workdir: str, rng: random.Random) -> tuple[bool, bool]:
        """Wait for a random moment of `proc`, then SIGKILL it. Half the kills wait for a
        save in flight (a `*.orbax-checkpoint-tmp` directory) and strike 0-200 ms into it;
        the others strike at a time drawn uniformly over a warm run's duration (startup,
        compile, steps and saves alike). Returns (killed, a save was in flight)."""
        ckpt = os.path.join(workdir, "checkpoints")
        in_flight = lambda: bool(glob.glob(os.path.join(ckpt, f"*{TMP}")))  # noqa: E731
        if rng.random() < 0.5:
            while proc.poll() is None and not in_flight():
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.0) * self.warm_duration)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:
            return False, False
        mid_save = in_flight()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True, mid_save or in_flight()

    def kills(self, rng: random.Random) -> None:
        """Kill the same command at random moments and re-run it after each kill (a re-run
        that fails on its own is a failure); every `--kills-per-run` kills, run it to the end
        and compare with the reference."""
        chain = 0
        while self.counts["kills"] < self.args.kills:
            workdir = os.path.join(self.args.outdir, f"kill_{chain}")
            shutil.rmtree(workdir, ignore_errors=True)
            for _ in range(self.args.kills_per_run):
                if self.counts["kills"] >= self.args.kills:
                    break
                log_path = f"{workdir}.stderr"
                with open(log_path, "w") as log:  # a file, not a pipe nobody drains
                    proc = subprocess.Popen(command(workdir, self.args.data_dir,
                                                    self.args.steps),
                                            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                            stderr=log)
                killed, mid_save = self.kill_moment(proc, workdir, rng)
                if killed:
                    self.counts["kills"] += 1
                    self.counts["kills_mid_save"] += mid_save
                    print(f"kill {self.counts['kills']}: checkpoints {saved_steps(workdir)}"
                          f"{', a save in flight' if mid_save else ''}", flush=True)
                    continue
                if proc.returncode != 0:
                    with open(log_path) as log:
                        self.fail(f"kill chain {chain}: a re-run exited {proc.returncode} on "
                                  f"its own: {last_line(log.read())}")
                    break
                self.counts["kill_runs_finished"] += 1
                break  # finished before the kill: compared below
            if self.finish_and_compare(workdir, f"kill chain {chain}"):
                print(f"kill chain {chain}: finished bitwise equal", flush=True)
            chain += 1

    def corruptions(self, rng: random.Random, reference_dir: str) -> None:
        """A run stopped after checkpoint k whose newest checkpoint is then damaged (all state
        files garbage, data files truncated, metadata garbage, or files removed): the re-run
        falls back to k-2, moves k aside and finishes bitwise equal."""
        damages = ["garbage", "truncate", "metadata", "remove"]
        for i in range(self.args.corruptions):
            damage = damages[i % len(damages)]
            workdir = os.path.join(self.args.outdir, f"corrupt_{i}")
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.copytree(reference_dir, workdir)
            k = rng.randrange(4, self.args.steps, 2)
            for step in saved_steps(workdir):
                if step > k:
                    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
            files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(k), "**",
                                                       "*"), recursive=True)
                     if os.path.isfile(p) and f"{os.sep}state{os.sep}" in p]
            for path in files:
                name = os.path.basename(path)
                if damage == "garbage":
                    with open(path, "wb") as f:
                        f.write(os.urandom(64))
                elif damage == "truncate" and os.path.getsize(path) > 1:
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
                elif damage == "metadata" and name in ("_METADATA", "manifest.ocdbt"):
                    with open(path, "wb") as f:
                        f.write(b"\x00garbage")
                elif damage == "remove" and rng.random() < 0.5:
                    os.remove(path)
            self.counts["corruptions"] += 1
            what = f"corruption {i} ({damage} of step {k}'s state)"
            if self.finish_and_compare(workdir, what):
                aside = os.path.isdir(os.path.join(workdir, "checkpoints", f"{k}.corrupt"))
                if not aside:
                    self.fail(f"{what}: the damaged checkpoint was not moved aside")
                else:
                    print(f"{what}: finished bitwise equal, damaged step moved aside",
                          flush=True)

    def disk_full(self) -> None:
        """The workdir on a tmpfs that fills up mid-run: the run must stop with a clear line
        (the trainer's CheckpointError naming the disk and the intact steps), the checkpoints it committed must equal the reference's, and after the disk is
        enlarged the same command must finish bitwise equal."""
        if os.geteuid() != 0:
            print("disk-full case skipped: mounting a tmpfs needs root", flush=True)
            return
        mount = os.path.join(self.args.outdir, "small_disk")
        os.makedirs(mount, exist_ok=True)
        subprocess.run(["umount", mount], capture_output=True)
        size = self.args.disk_kib
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", mount],
                       check=True)
        try:
            workdir = os.path.join(mount, "run")
            out = run(command(workdir, self.args.data_dir, self.args.steps), self.env)
            self.counts["disk_full"] += 1
            with open(os.path.join(self.args.outdir, "disk_full.stderr"), "w") as f:
                f.write(out.stderr)
            # The trainer's one-line error; orbax's writer threads and coroutines, abandoned
            # at exit, may print their own ValueError noise after it.
            line = next((ln for ln in reversed(out.stderr.splitlines())
                         if "No space left on device" in ln and "intact" in ln), "")
            if line != last_line(out.stderr):
                print("  (orbax's abandoned writes printed more after that line)", flush=True)
            kept = saved_steps(workdir)
            print(f"disk full ({size} KiB): exit {out.returncode}, checkpoints {kept}, last "
                  f"line: {line}", flush=True)
            if out.returncode == 0:
                self.fail(f"disk full: the run did not fill a {size} KiB disk; lower "
                          "--disk-kib")
                return
            if not line:
                self.fail(f"disk full: no line says so; last line: {last_line(out.stderr)}")
            if "Traceback" in out.stderr:
                print("  (the entry point also printed a traceback above that line)",
                      flush=True)
            for step in kept:
                if not bitwise_equal(params_of(workdir, step),
                                     params_of(os.path.join(self.args.outdir, "reference"),
                                               step)):
                    self.fail(f"disk full: checkpoint {step} differs from the reference's")
            subprocess.run(["mount", "-o", "remount,size=512m", mount], check=True)
            if self.finish_and_compare(workdir, "disk full, then enlarged"):
                print("disk full: after enlarging the disk the same command finished bitwise "
                      "equal", flush=True)
        finally:
            subprocess.run(["umount", mount], capture_output=True)


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_integer("kills", 20, None, flag_values=FLAGS)
flags.DEFINE_integer("kills-per-run", 4, "kills of one workdir before it is finished and compared",
                     flag_values=FLAGS)
flags.DEFINE_integer("corruptions", 5, None, flag_values=FLAGS)
flags.DEFINE_integer("disk-full", 1, None, lower_bound=0, upper_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("disk-kib", 0, "tmpfs size; 0: sized from the reference run to fill mid-run",
                     flag_values=FLAGS)
flags.DEFINE_integer("steps", 24, None, flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, None, flag_values=FLAGS)
flags.DEFINE_string("data-dir", "", "TFDS data_dir with shapes_textures/tiny "
                    "(built there when missing; default OUTDIR/tfds)", flag_values=FLAGS)
flags.DEFINE_string("outdir", "runs/soak", None, flag_values=FLAGS)
flags.DEFINE_string("cases", "disk-full,corruptions,kills", "comma-separated subset to run",
                    flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    args.outdir = os.path.abspath(args.outdir)
    args.data_dir = os.path.abspath(args.data_dir or os.path.join(args.outdir, "tfds"))
    os.makedirs(args.outdir, exist_ok=True)
    import tensorflow_datasets as tfds
    import ssl_jax.data.builtin  # noqa: F401
    tfds.builder("shapes_textures/tiny", data_dir=args.data_dir).download_and_prepare()

    soak = Soak(args)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    reference_dir = soak.reference_run()
    cases = set(args.cases.split(","))
    if args.disk_full and not args.disk_kib:
        # Room for the run's logs and about 2.5 checkpoints: it fills up at the 3rd-4th save,
        # while keep-3 would need 4 (3 kept + the one being written).
        per_step = sum(os.path.getsize(p) for p in glob.glob(
            os.path.join(reference_dir, "checkpoints", "2", "**", "*"), recursive=True)
            if os.path.isfile(p))
        args.disk_kib = int((2.5 * per_step + 256 * 1024) / 1024)
    if args.disk_full and "disk-full" in cases:
        soak.disk_full()
    if "corruptions" in cases:
        soak.corruptions(rng, reference_dir)
    if "kills" in cases:
        soak.kills(rng)
    c = soak.counts
    print(f"soak: {c['kills']} kills ({c['kills_mid_save']} with a save in flight, "
          f"{c['kill_runs_finished']} re-runs finished before their kill), "
          f"{c['corruptions']} corruptions, {c['disk_full']} disk-full; "
          f"{len(soak.failures)} failures; {time.perf_counter() - t0:.0f} s", flush=True)
    sys.exit(1 if soak.failures else 0)


if __name__ == "__main__":
    from ssl_jax import host_memory
    host_memory.restart_with_huge_pages(__name__)  # huge pages (ssl_jax/host_memory.py)
    errors.run(main)
