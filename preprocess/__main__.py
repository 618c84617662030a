"""`python -m preprocess` (what `make data` runs): colour photos -> sharded Lab-ready TFRecords.

    python -m preprocess --source=folder:~/photos --size=256 --mode=random --out=data/photos
    python -m preprocess --source=folder:~/old-scans --size=256 --mode=random --domain=gray --out=data/old-scans
"""

from __future__ import annotations

import argparse
import sys

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

from preprocess.images import DEFAULT_MAX_PIXELS  # noqa: E402
from preprocess.sources import SOURCE_SEPARATOR  # noqa: E402
from preprocess.tiles import MODES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = {"source": "samples", "size": 64, "mode": "center"}
    parser = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--source", action="append",
        help="samples | folder:PATH | imagefolder:PATH | cifar10:PATH | tfds:NAME[:SPLIT] (default: samples); "
             "given several times, or joined by ' + ', the sources' photos make one data set")
    add("--out", required=True, help="folder for the shards and manifest.json")
    add("--size", type=int, default=defaults["size"], help="tile side in pixels (default: 64)")
    add("--mode", choices=MODES, default=defaults["mode"], help="how photos become tiles (default: center)")
    add("--crops", type=int, default=4, help="random crops per photo with --mode=random (default: 4)")
    add("--overlap", type=float, default=0.25, help="tile overlap as a fraction of SIZE with --mode=tile")
    add("--domain", choices=("color", "gray"), default="color",
        help="color: colour photos, the training data of every model (default); gray: gray-only tiles for "
             "cyclegan's GRAY_DATA (old scans: gray photos kept, colour ones stored as their lightness)")
    add("--val-fraction", type=float, default=None,
        help="share of photos hashed into val (default: 0.25; 0 with --domain=gray, whose tiles only train)")
    add("--min-colorfulness", type=float, default=5.0,
        help="skip photos less colourful than this (Hasler-Suesstrunk; 0 is gray; default: 5); with "
             "--domain=gray none are skipped, and those this colourful are listed as converted to gray")
    add("--min-tile-std", type=float, default=3.0, help="skip tiles whose luma std (0..255) is below this")
    add("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb guard")
    add("--images-per-shard", type=int, default=0, help="photos per shard (default: about 32 MiB shards)")
    add("--compression", choices=("none", "gzip"), default="none", help="shard compression (default: none)")
    add("--seed", type=int, default=0, help="seed of the random crops")
    add("--workers", type=int, default=0, help="parallel processes (default: one per core)")
    add("--runner", choices=("local", "beam"), default="local",
        help="local: processes on this machine; beam: an Apache Beam pipeline (pip install -e '.[beam]')")
    add("--beam-runner", default="DirectRunner",
        help="with --runner=beam: DirectRunner (this machine), DataflowRunner, FlinkRunner, SparkRunner")
    add("--beam-option", action="append", default=[], metavar="--KEY=VALUE",
        help="with --runner=beam: a Beam pipeline option passed through (repeat it), e.g. --beam-option=--project=P")
    add("--overwrite", action="store_true", help="replace shards already in OUT")
    add("--tfds-dir", default=None, help="TFDS data folder (default: TFDS's own, ~/tensorflow_datasets)")
    add("--contact-sheet", default=None, metavar="PNG", help="also write a PNG of some tiles (gray | colour)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    args.source = SOURCE_SEPARATOR.join(args.source or [defaults["source"]])
    return args


def _beam_module():
    """preprocess.beam, or a WriteError saying how to install Apache Beam (an optional extra)."""
    from preprocess import shards

    try:
        from preprocess import beam
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "apache_beam":
            raise shards.WriteError("--runner=beam needs Apache Beam: pip install -e '.[beam]'") from None
        raise
    return beam


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from preprocess import shards, sources
    from preprocess.preview import contact_sheet

    try:
        options = shards.Options(
            source=args.source, size=args.size, mode=args.mode, crops=args.crops, overlap=args.overlap,
            val_fraction=(0.0 if args.domain == "gray" else 0.25) if args.val_fraction is None else args.val_fraction,
            min_colorfulness=args.min_colorfulness, domain=args.domain,
            min_tile_std=args.min_tile_std, max_pixels=args.max_pixels,
            images_per_shard=args.images_per_shard,
            compression=None if args.compression == "none" else "GZIP", seed=args.seed,
        )  # fmt: skip
    except ValueError as error:
        print(f"make data: {error}", file=sys.stderr)
        return 2
    try:
        if args.runner == "beam":
            _beam_module().write(options, args.out, args.beam_runner, args.beam_option, workers=args.workers,
                                 overwrite=args.overwrite, tfds_dir=args.tfds_dir, verbose=args.verbose)  # fmt: skip
        else:
            shards.write(options, args.out, workers=args.workers, overwrite=args.overwrite, tfds_dir=args.tfds_dir)
    except (sources.SourceError, shards.WriteError) as error:
        print(f"make data: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.runner == "beam":  # a Beam run is not resumed chunk by chunk (preprocess/beam.py)
            print(f"make data: interrupted; re-run the same command to write {args.out} again", file=sys.stderr)
        else:
            print(f"make data: interrupted; finished chunks are kept, re-run the same command to complete {args.out}",
                  file=sys.stderr)  # fmt: skip
        return 130
    if args.contact_sheet:
        contact_sheet(args.out, args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
