"""`make data RUNNER=beam`: the local writer's shards and manifest, made by an Apache Beam pipeline.

    python -m preprocess --runner=beam --source=folder:~/photos --size=64 --out=data/photos
    python -m preprocess --runner=beam --beam-runner=DataflowRunner --beam-option=--project=P ...

The local writer (`shards.write`) runs on the cores of one machine; this is the same job for
a runner that spreads it over many (Dataflow, Flink, Spark; the DirectRunner here). Every
decision about a photo is `shards.photo_tiles`, which the local writer calls too, so both
keep, skip and split the same photos and tiles; only the plumbing differs:

    launcher    sources.plan, as the local writer: the photo list, grouped into read units
    Create(units) | Reshuffle          spread the units over the workers
      | ParDo(TilePhotos)            sources.read + shards.photo_tiles, one element a photo
      | per split: FlatMap(examples) | WriteToTFRecord   {split}-SSSSS-of-NNNNN.tfrecord
      | train tiles | CombineGlobally(AbPrior)          the ab prior (a Beam combine)
      | CombineGlobally(Report)                        counts and skips, in plan order
      -> the result (counts, skips, prior, shard names) as OUT/.parts/beam-result.json
    launcher    waits, prints the skips, writes manifest.json (or stops: no usable photo)

The shards hold the same records as the local writer's (as a multiset: which shard a
record lands in, and its place there, are the runner's choice) under the same names, and
the manifests agree in everything but `created`. Beam writes each shard under a temporary
folder (`OUT/beam-temp-*`) and renames it when the pipeline has finished, and the manifest
comes last, so a failed run leaves no partial shard beside a manifest. A failed run is not
resumed chunk by chunk as the local writer's is: the runner retries failed work itself, and
running the same command again starts over.

OUT may be any path Beam's file systems know (a local folder, gs://, s3://, hdfs://). The
photos are listed by the launcher and read by the workers, so they must be at a path both
see: a local folder for the DirectRunner; on a cluster `folder:gs://...` (sources.py reads
URLs through tf.io.gfile) or a mount at the same path on every machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TextIO

import numpy as np



class _WithoutGcpNotice(logging.Filter):
    """Beam's import warns that the Google Cloud clients are missing when its [gcp] extra is
    not installed, which only Dataflow needs (and asks for by name when it does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


_quiet = _WithoutGcpNotice()
logging.getLogger().addFilter(_quiet)
try:
    import apache_beam as beam  # an optional extra: `python -m preprocess` says how to install it
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
finally:
    logging.getLogger().removeFilter(_quiet)

from preprocess import color, schema, shards, sources
from preprocess.console import holding_stderr
from preprocess.dataset import MANIFEST

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner", "PrismRunner")
# Photos per element of the first stage: small enough that a few thousand photos already
# spread over a cluster's workers, large enough that an element's overhead (a pickle, a
# CIFAR-10 batch file unpickled) is small against its photos.
READ_PHOTOS = 64
# Train tiles the prior converts to Lab in one TF call (as the local writer's _Histograms).
PRIOR_BATCH = 256
RESULT = "beam-result.json"  # in OUT/.parts/: what the pipeline hands back to the launcher
GROUP_ORDER = tuple(shards.GROUP_SPLITS)


def _single_threaded_tf() -> None:
    # Each worker process is one of the parallel streams: TF's own thread pools would
    # oversubscribe the cores (as in the local writer's workers). Too late once TF has run an
    # op in this process (the in-memory DirectRunner shares the launcher's), which is harmless.
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


# ---------------------------------------------------------------------------------------
# Planning (in the launcher)


def read_units(plan: sources.Plan, photos: int = 0) -> list[tuple[tuple[int, int, int], sources.Chunk]]:
    """The plan's chunks cut into units of at most `photos` (default READ_PHOTOS) photos, each
    with the sort key (group, chunk index, first photo) of its first photo: the local writer's
    report order."""
    photos = photos or READ_PHOTOS
    units = []
    for chunk in plan.chunks:
        order = GROUP_ORDER.index(chunk.group)
        if chunk.reader == "tfds":
            ((name, split, start, stop, data_dir),) = chunk.items
            for first in range(start, stop, photos):
                items = ((name, split, first, min(stop, first + photos), data_dir),)
                units.append(((order, chunk.index, first - start), dataclasses.replace(chunk, items=items)))
        else:
            for first in range(0, len(chunk.items), photos):
                items = chunk.items[first : first + photos]
                units.append(((order, chunk.index, first), dataclasses.replace(chunk, items=items)))
    return units


def shard_counts(plan: sources.Plan) -> dict[str, int]:
    """Shards per split, in report order: those the local writer names (shards.shard_names),
    so both name their shards alike."""
    return dict(Counter(split for names in shards.shard_names(plan.chunks).values() for split in names))


# ---------------------------------------------------------------------------------------
# The pipeline's steps (in the workers)


class TilePhotos(beam.DoFn):
    """One read unit -> (sort key, shards.PhotoTiles) for each of its photos."""

    def __init__(self, options: shards.Options) -> None:
        self.options = options

    def setup(self) -> None:
        _single_threaded_tf()

    def process(self, unit):
        yield from tile_unit(unit, self.options)


def tile_unit(unit: tuple[tuple[int, int, int], sources.Chunk], options: shards.Options) -> Iterator[tuple]:
    """A read unit -> (sort key, shards.PhotoTiles) per photo, in the unit's order."""
    (order, index, first), chunk = unit
    gray = options.domain == "gray"
    for position, record in enumerate(sources.read(chunk, options.max_pixels, gray=gray), start=first):
        yield (order, index, position), shards.photo_tiles(record, chunk.group, options)


def _summary(keyed: tuple) -> tuple:
    """(key, PhotoTiles) -> what the report needs of a photo, without its pixels."""
    key, photo = keyed
    return key, photo.split, len(photo.tiles), photo.skipped_file, photo.skipped_tiles, photo.converted_to_gray


class Report(beam.CombineFn):
    """Per-photo summaries -> {"images", "tiles" (per split), "skipped_files",
    "skipped_tiles", "converted_to_gray"} with the skips in the local writer's order."""

    def create_accumulator(self) -> dict:
        return {"images": {}, "tiles": {}, "skipped_files": [], "skipped_tiles": [], "converted_to_gray": []}

    def add_input(self, report: dict, summary: tuple) -> dict:
        key, split, tiles, skipped_file, skipped_tiles, converted = summary
        report["skipped_tiles"] += [(key, skip) for skip in skipped_tiles]
        if skipped_file is not None:
            report["skipped_files"].append((key, skipped_file))
            return report
        report["images"][split] = report["images"].get(split, 0) + 1
        report["tiles"][split] = report["tiles"].get(split, 0) + tiles
        if converted:
            report["converted_to_gray"].append((key, converted))
        return report

    def merge_accumulators(self, reports) -> dict:
        merged = self.create_accumulator()
        for report in reports:
            for count in ("images", "tiles"):
                for split, value in report[count].items():
                    merged[count][split] = merged[count].get(split, 0) + value
            for listed in ("skipped_files", "skipped_tiles", "converted_to_gray"):
                merged[listed] += report[listed]
        return merged

    def extract_output(self, report: dict) -> dict:
        # Keys are unique per photo and a photo's flat tiles come in tile order, so a
        # stable sort by key gives the local writer's order.
        return {
            **{count: report[count] for count in ("images", "tiles")},
            **{listed: [value for _, value in sorted(report[listed], key=lambda pair: pair[0])]
               for listed in ("skipped_files", "skipped_tiles", "converted_to_gray")},
        }  # fmt: skip


class AbPrior(beam.CombineFn):
    """Train tiles (a tuple of uint8 [S, S, 3] per photo) -> pixel counts [Q] over the
    in-gamut ab bins (`shards.ab_counts`), converted PRIOR_BATCH tiles per TF call.
    Counts are integers, so the order the runner combines in does not change them."""

    def setup(self) -> None:
        _single_threaded_tf()

    def create_accumulator(self) -> tuple[np.ndarray | None, list]:
        return None, []

    def _flush(self, counts: np.ndarray | None, pending: list) -> tuple[np.ndarray | None, list]:
        if pending:
            found = shards.ab_counts(pending)
            counts = found if counts is None else counts + found
        return counts, []

    def add_input(self, accumulator, tiles):
        counts, pending = accumulator
        pending = pending + list(tiles)
        return self._flush(counts, pending) if len(pending) >= PRIOR_BATCH else (counts, pending)

    def merge_accumulators(self, accumulators):
        counts, pending = None, []
        for other_counts, other_pending in accumulators:
            if other_counts is not None:
                counts = other_counts if counts is None else counts + other_counts
            pending += other_pending
        return self._flush(counts, pending) if len(pending) >= PRIOR_BATCH else (counts, pending)

    def compact(self, accumulator):
        return self._flush(*accumulator)  # before an accumulator is shuffled: no pixels

    def extract_output(self, accumulator) -> list[int]:
        counts, _ = self._flush(*accumulator)
        if counts is None:
            return [0] * len(color.ab_bins())
        return counts.tolist()


def _write_result(_, path: str, report: dict, prior: list[int], written: list[str]) -> None:
    """The pipeline's last step: hands the launcher its report, prior and shard names."""
    result = {**report, "ab_prior": prior, "shards": sorted({name.rsplit("/", 1)[-1] for name in written})}
    _write_text(path, json.dumps(result))


# ---------------------------------------------------------------------------------------
# OUT through Beam's file systems, so gs://, s3:// and hdfs:// work like local folders


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def _matching(pattern: str) -> list[str]:
    return [found.path for result in FileSystems.match([pattern]) for found in result.metadata_list]


def _read_text(path: str) -> str:
    with FileSystems.open(path) as file:
        return file.read().decode()


def _write_text(path: str, text: str) -> None:
    """Writes a whole file under a temporary name beside it, then renames it (preprocess/atomic.py)."""
    folder, name = FileSystems.split(path)
    temporary = FileSystems.join(folder, f".{name}.tmp-{os.getpid()}")
    with FileSystems.create(temporary) as file:
        file.write(text.encode())
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def _clear(out: str) -> None:
    """Removes what earlier runs wrote into OUT, and nothing else."""
    # beam-temp-*: the folders Beam's file sinks write in before their rename, left by a failed run
    stale = [path for pattern in ("*.tfrecord", ".*.tmp-*", MANIFEST, f"{shards.PARTS}/*", "beam-temp-*")
             for path in _matching(_join(out, pattern))]  # fmt: skip
    if stale:
        FileSystems.delete(stale)


def _prepare_out(out: str, options: shards.Options, overwrite: bool, log: TextIO) -> dict | None:
    """As the local writer's: the existing manifest when OUT is complete for these options,
    an error when it holds other shards; an unfinished run with these options starts over."""
    settings = dataclasses.asdict(options)
    plan_path = _join(out, shards.PARTS, "plan.json")
    if overwrite:
        _clear(out)
    elif FileSystems.exists(_join(out, MANIFEST)):
        manifest = json.loads(_read_text(_join(out, MANIFEST)))
        if shards._with_defaults(manifest.get("options")) == settings:
            return manifest
        raise shards.WriteError(f"{out} already holds shards made with other options; add --overwrite to replace them")
    elif FileSystems.exists(plan_path):
        if shards._with_defaults(json.loads(_read_text(plan_path))) != settings:
            raise shards.WriteError(
                f"{out} holds an unfinished run with other options; re-run with those options to "
                "finish it, or add --overwrite to start again"
            )
        print(f"{out} holds an unfinished run with these options: a Beam run starts it over", file=log)
        _clear(out)
    elif _matching(_join(out, "*.tfrecord")):
        raise shards.WriteError(f"{out} holds .tfrecord files without a manifest; add --overwrite to replace them")
    try:
        FileSystems.mkdirs(_join(out, shards.PARTS))
    except OSError:  # already there (local file systems), or folders are implicit (object stores)
        pass
    _write_text(plan_path, json.dumps(settings, indent=1))
    return None


# ---------------------------------------------------------------------------------------
# The job


def pipeline_options(runner: str, beam_options: Sequence[str] = (), workers: int = 0) -> list[str]:
    """Beam's command-line options: the runner, and for the DirectRunner, unless the user
    chose otherwise, one worker process per core (`workers` 0), as the local writer uses."""
    if runner not in RUNNERS:
        raise shards.WriteError(f"unknown Beam runner {runner!r}; valid: {', '.join(RUNNERS)}")
    chosen = [f"--runner={runner}", *beam_options]
    if runner == "DirectRunner" and not any(option.startswith("--direct_running_mode") for option in beam_options):
        chosen += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers or os.cpu_count() or 1}"]
    return chosen


def build(pipeline, plan: sources.Plan, options: shards.Options, out: str) -> None:
    """Adds the whole job to `pipeline` (see the module docstring for its steps)."""
    photos = (
        pipeline
        | "plan" >> beam.Create(read_units(plan))
        | "spread" >> beam.Reshuffle()
        | "read and tile" >> beam.ParDo(TilePhotos(options))
    )
    compression = CompressionTypes.GZIP if options.compression == "GZIP" else CompressionTypes.UNCOMPRESSED
    written = []
    for split, count in shard_counts(plan).items():
        written.append(
            photos
            | f"{split} records" >> beam.FlatMap(lambda keyed, split: keyed[1].examples() if keyed[1].split == split
                                                 else [], split)  # fmt: skip
            | f"write {split}" >> beam.io.WriteToTFRecord(
                _join(out, split), file_name_suffix=".tfrecord", num_shards=count,
                shard_name_template="-SSSSS-of-NNNNN", compression_type=compression)  # fmt: skip
        )
    report = photos | "summaries" >> beam.Map(_summary) | "report" >> beam.CombineGlobally(Report())
    if options.domain == "gray":  # gray tiles have no colour to count
        prior = pipeline | "no prior" >> beam.Create([[]])
    else:
        prior = (
            photos
            | "train tiles" >> beam.FlatMap(lambda keyed: [keyed[1].tiles] if keyed[1].split == "train" else [])
            | "ab prior" >> beam.CombineGlobally(AbPrior())
        )
    all_written = tuple(written) | "shards" >> beam.Flatten()
    _ = (
        pipeline
        | "result" >> beam.Create([None])
        | "hand back" >> beam.Map(_write_result, _join(out, shards.PARTS, RESULT), report=beam.pvalue.AsSingleton(report),
                                  prior=beam.pvalue.AsSingleton(prior), written=beam.pvalue.AsList(all_written))  # fmt: skip
    )


def write(options: shards.Options, out: str, runner: str = "DirectRunner", beam_options: Sequence[str] = (),
          workers: int = 0, overwrite: bool = False, tfds_dir: str | None = None, verbose: bool = False,
          log: TextIO = sys.stderr) -> dict:  # fmt: skip
    """`shards.write` on a Beam runner; returns the manifest.

    `beam_options` are Beam's own command-line options, passed through (`--project=...`,
    `--temp_location=gs://...`, `--direct_num_workers=2`, ...).
    """
    out = str(out)
    chosen = pipeline_options(runner, beam_options, workers)
    done = _prepare_out(out, options, overwrite, log)
    if done is not None:
        print(f"{out} is already complete for these options: nothing to do (--overwrite rebuilds it)", file=log)
        return done
    started = time.perf_counter()
    plan = sources.plan(options.source, options.chunk_images(), tfds_dir)
    for skipped in plan.skipped:
        print(f"skipped {skipped['source']}: {skipped['reason']}", file=log)
    print(f"beam: {plan.images:,} photos on {' '.join(chosen)}", file=log)
    # Workers the runner starts on this machine inherit this: TensorFlow's C++ log lines off.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pipeline = beam.Pipeline(options=PipelineOptions(chosen))
    build(pipeline, plan, options, out)
    # The runner's and its workers' log lines (gRPC channels, harness start and stop, per
    # worker) are shown only if the pipeline fails, or with `verbose`.
    with contextlib.nullcontext() if verbose else holding_stderr():
        state = pipeline.run().wait_until_finish()
    if state != "DONE":
        raise shards.WriteError(f"the Beam pipeline ended {state}; nothing was written to {out}/{MANIFEST}")

    result_path = _join(out, shards.PARTS, RESULT)
    result = json.loads(_read_text(result_path))
    for skipped in result["skipped_files"]:
        print(f"skipped {skipped['source']}: {skipped['reason']}", file=log)
    manifest = _manifest(options, plan, result)
    if not any(info["tiles"] for info in manifest["splits"].values()):
        raise shards.WriteError(f"{options.source}: no usable photo; nothing was written (see the reasons above)")
    _write_text(_join(out, MANIFEST), json.dumps(manifest, indent=1))
    FileSystems.delete([_join(out, shards.PARTS)])
    print(shards.summary(manifest, out, time.perf_counter() - started), file=log)
    return manifest


def _manifest(options: shards.Options, plan: sources.Plan, result: dict) -> dict:
    """The local writer's manifest (shards._manifest) from the pipeline's result."""
    splits = {}
    for split, count in shard_counts(plan).items():
        splits[split] = {
            "shards": [schema.shard_name(split, index, count) for index in range(count)],
            "tiles": result["tiles"].get(split, 0),
            "images": result["images"].get(split, 0),
        }
        missing = set(splits[split]["shards"]) - set(result["shards"])
        if missing:
            raise shards.WriteError(f"the Beam pipeline did not write {', '.join(sorted(missing))}")
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": dataclasses.asdict(options),
        "source": {"spec": options.source, "photos": plan.images},
        "label_names": plan.label_names,
        "splits": splits,
        "skipped_files": plan.skipped + result["skipped_files"],
        "skipped_tiles": result["skipped_tiles"],
        **shards.domain_fields(options, result["converted_to_gray"], np.asarray(result["ab_prior"], np.int64)),
    }
