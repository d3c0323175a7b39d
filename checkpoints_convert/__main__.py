"""python -m checkpoints_convert: PyTorch zoo checkpoints <-> ssl_jax converted directories.

  python -m checkpoints_convert --list
  python -m checkpoints_convert --family moco --src moco_v2_800ep.pth.tar --out out/moco_v2 --verify
  python -m checkpoints_convert --to-torch --src out/moco_v2 --out moco_v2_torchvision.pth

Nothing is written on any error (the output is built under a temporary name and renamed at the
end). Errors are one line with exit code 2 (ssl_jax/errors.py; --debug shows the traceback);
`--verify` beyond its tolerance is one too, and then writes nothing.
"""
import os
import time

from absl import flags

from ssl_jax import host_memory, xla_flags

host_memory.restart_with_huge_pages(__name__)  # first: huge pages (ssl_jax/host_memory.py)
xla_flags.configure_cpu()  # before JAX starts: Eigen convolutions on CPU (ssl_jax/xla_flags.py)

from checkpoints_convert.families import FAMILIES  # noqa: E402
from ssl_jax import errors  # noqa: E402


PROG = "python -m checkpoints_convert"
# This command's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_bool("list", False, "list the families and exit", flag_values=FLAGS)
flags.DEFINE_enum("family", None, sorted(FAMILIES), "source checkpoint family",
                  flag_values=FLAGS)
flags.DEFINE_string("src", None, "source .pth file (or, with --to-torch, a converted dir)",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "output directory (or, with --to-torch, a .pth file)",
                    flag_values=FLAGS)
flags.DEFINE_enum("padding", None, ["torch", "same", "simclr"],
                  "override the family's ResNet padding mode", flag_values=FLAGS)
flags.DEFINE_bool("verify", False,
                  "run torch and Flax on random and natural images at 224 px and 197 px, "
                  "print max |diff| per stage and output, and fail (writing nothing) "
                  "beyond --tolerance", flag_values=FLAGS)
flags.DEFINE_float("tolerance", None,
                   "--verify's limit on max|diff| / max(1, max|torch|) (default 1e-3)",
                   flag_values=FLAGS)
flags.DEFINE_bool("to-torch", False,
                  "export a converted directory to a torchvision-named state_dict",
                  flag_values=FLAGS)
flags.DEFINE_bool("unsafe-unpickle", False,
                  "load legacy files with torch.load(weights_only=False): this EXECUTES "
                  "code stored in the file; only for files you trust", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
    args = errors.parse_script_flags(FLAGS, argv, __doc__, prog=PROG)

    if args.list:
        for name, fam in FAMILIES.items():
            print(f"{name:22s} {fam.description}")
        return 0
    if not args.src or not args.out:
        raise errors.UserError(f"--src and --out are required (or --list) (see {PROG} --help)")
    # Checked before the (slow) read and conversion: the output must be new, the source there.
    if os.path.lexists(args.out):
        raise errors.UserError(f"--out {args.out!r} already exists; choose a new path (nothing "
                               "is ever overwritten)")
    if args.to_torch:
        if not os.path.isdir(args.src):
            raise errors.UserError(f"--to-torch --src {args.src!r} is not a directory; it takes "
                                   "a converted directory (the --out of a conversion)")
        from ssl_jax.models.load import read_metadata

        read_metadata(args.src)  # one line if it is not a converted directory
        from checkpoints_convert.export import converted_to_state_dict, save_state_dict

        sd = converted_to_state_dict(args.src)
        print(f"wrote {save_state_dict(sd, args.out)} ({len(sd)} keys)")
        return 0
    if not args.family:
        raise errors.UserError("--family is required to convert; --list shows the families "
                               f"(see {PROG} --help)")
    if not os.path.isfile(args.src):
        raise errors.UserError(f"--src {args.src!r} does not exist (a .pth / .pth.tar file)")
    if args.verify:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise errors.UserError("--verify needs torch (pip install torch); rerun without "
                                   "--verify to convert only") from None

    from checkpoints_convert.convert import convert, read_checkpoint, sha256, write_converted

    start = time.perf_counter()
    raw = read_checkpoint(args.src, args.unsafe_unpickle)
    converted = convert(raw, args.family, args.padding,
                        source={"file": os.path.basename(args.src), "sha256": sha256(args.src)})
    check = None
    if args.verify:
        from checkpoints_convert.verify import TOLERANCE, beyond_tolerance, verify

        tolerance = TOLERANCE if args.tolerance is None else args.tolerance

        def check(tmp_dir):
            scales = {}
            errs = verify(raw, tmp_dir, scales=scales)
            print(f"worst max |diff|: {max(errs.values()):.3g}")
            bad = beyond_tolerance(errs, scales, tolerance)
            if bad:
                worst = max(bad, key=lambda k: bad[k] / max(1.0, scales.get(k, 1.0)))
                raise errors.UserError(
                    f"--verify: {len(bad)} of {len(errs)} entries beyond tolerance {tolerance:g} "
                    f"(worst {worst}: max|diff| {bad[worst]:.3g}, max|torch| "
                    f"{scales.get(worst, float('nan')):.3g}); nothing written to {args.out}. "
                    "Check --family and --padding")

    out = write_converted(converted, args.out, check=check)
    meta = converted.metadata
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s: {meta['model']['name']} "
          f"{meta['model']['kwargs']}, heads {sorted(meta['heads'])}, dropped "
          f"{meta['dropped_keys']}")
    for note in meta["notes"]:
        print(f"note: {note}")
    return 0


def cli():
    """Console entry point (`ssl-jax-convert`): main() under the one-line error policy."""
    errors.run(main)


if __name__ == "__main__":
    cli()
