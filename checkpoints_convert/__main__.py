"""python -m checkpoints_convert: PyTorch zoo checkpoints <-> ssl_jax converted directories.

  python -m checkpoints_convert --list
  python -m checkpoints_convert --family moco --src moco_v2_800ep.pth.tar --out out/moco_v2 --verify
  python -m checkpoints_convert --to-torch --src out/moco_v2 --out moco_v2_torchvision.pth
"""
import argparse
import sys
import time

from checkpoints_convert.families import FAMILIES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m checkpoints_convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the families and exit")
    p.add_argument("--family", choices=sorted(FAMILIES), help="source checkpoint family")
    p.add_argument("--src", help="source .pth file (or, with --to-torch, a converted dir)")
    p.add_argument("--out", help="output directory (or, with --to-torch, a .pth file)")
    p.add_argument("--padding", choices=("torch", "same", "simclr"),
                   help="override the family's ResNet padding mode")
    p.add_argument("--verify", action="store_true",
                   help="run torch and Flax on random and natural images at 224 px and 197 px "
                        "and print max |diff| per stage and output")
    p.add_argument("--to-torch", action="store_true",
                   help="export a converted directory to a torchvision-named state_dict")
    p.add_argument("--unsafe-unpickle", action="store_true",
                   help="load legacy files with torch.load(weights_only=False): this EXECUTES "
                        "code stored in the file; only for files you trust")
    args = p.parse_args(argv)

    if args.list:
        for name, fam in FAMILIES.items():
            print(f"{name:22s} {fam.description}")
        return 0
    if not args.src or not args.out:
        p.error("--src and --out are required (or --list)")
    if args.to_torch:
        from checkpoints_convert.export import converted_to_state_dict, save_state_dict

        sd = converted_to_state_dict(args.src)
        print(f"wrote {save_state_dict(sd, args.out)} ({len(sd)} keys)")
        return 0
    if not args.family:
        p.error("--family is required to convert (see --list)")

    from checkpoints_convert.convert import convert, read_checkpoint, sha256, write_converted

    start = time.perf_counter()
    raw = read_checkpoint(args.src, args.unsafe_unpickle)
    converted = convert(raw, args.family, args.padding,
                        source={"file": args.src.rsplit("/", 1)[-1], "sha256": sha256(args.src)})
    out = write_converted(converted, args.out)
    meta = converted.metadata
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s: {meta['model']['name']} "
          f"{meta['model']['kwargs']}, heads {sorted(meta['heads'])}, dropped "
          f"{meta['dropped_keys']}")
    for note in meta["notes"]:
        print(f"note: {note}")
    if args.verify:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("--verify needs torch; skipped")
            return 0
        from checkpoints_convert.verify import verify

        errs = verify(raw, out)
        print(f"worst max |diff|: {max(errs.values()):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
