"""make data --runner=beam against the local writer: the same tiles, the same manifest, the same skips.

Run on Beam's DirectRunner in memory (one process, the fastest to start); the benchmark
`python -m preprocess.beam_bench` compares the multi-process DirectRunner on real photos.
Skipped without Apache Beam (`pip install -e '.[beam]'`); `make test-beam` runs them with it.
"""

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import preprocess
from preprocess import __main__ as preprocess_cli
from preprocess import dataset, shards, sources
from tests.helpers import prepare_tiny_colours
from tests.test_preprocess import bad_files, make, photo, photo_folder, write_cifar_batches

try:
    from preprocess import beam as beam_writer
except ModuleNotFoundError as error:
    if error.name.split(".")[0] != "apache_beam":
        raise
    beam_writer = None

needs_beam = pytest.mark.skipif(beam_writer is None, reason="Apache Beam is not installed: pip install -e '.[beam]'")
IN_MEMORY = ["--direct_running_mode=in_memory"]


def make_beam(out: Path, beam_options=IN_MEMORY, **options) -> tuple[dict, str]:
    log = io.StringIO()
    overwrite = options.pop("overwrite", False)
    tfds_dir = options.pop("tfds_dir", None)
    manifest = beam_writer.write(shards.Options(**options), out, beam_options=beam_options, overwrite=overwrite,
                                 tfds_dir=tfds_dir, log=log)  # fmt: skip
    return manifest, log.getvalue()


def tile_multiset(out: Path, split: str) -> Counter:
    """Every record of a split, decoded: (source_id, label, shape, pixels) -> how many times."""
    records = dataset.Shards(out).records(split).as_numpy_iterator()
    pixels = "gray" if dataset.Shards(out).domain == "gray" else "rgb"
    return Counter((r["source_id"], int(r["label"]), r[pixels].shape, r[pixels].tobytes()) for r in records)


def assert_same_output(local: Path, beam: Path, local_manifest: dict, beam_manifest: dict) -> None:
    assert {key: value for key, value in beam_manifest.items() if key != "created"} == {
        key: value for key, value in local_manifest.items() if key != "created"}
    assert sorted(path.name for path in beam.glob("*.tfrecord")) == sorted(path.name for path in local.glob("*.tfrecord"))
    for split in local_manifest["splits"]:
        assert tile_multiset(beam, split) == tile_multiset(local, split), split
    assert sorted(path.name for path in beam.iterdir()) == sorted(path.name for path in local.iterdir())


def skip_lines(log: str) -> list[str]:
    return sorted(line for line in log.splitlines() if line.startswith("skipped"))


@needs_beam
def test_beam_writes_the_local_writers_tiles_manifest_and_skips(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "photos", 9, size=(64, 96))
    expected = bad_files(root / "bad")
    Image.fromarray(np.repeat(photo(64, 64)[..., :1], 3, axis=-1)).save(root / "near_gray.png")
    half_flat = photo(64, 128, seed=9)
    half_flat[:, 64:] = (200, 40, 40)
    Image.fromarray(half_flat).save(root / "half_flat.png")
    options = dict(source=f"folder:{root}", size=32, mode="tile", overlap=0.0, val_fraction=0.5, images_per_shard=4)
    local_manifest, local_log = make(tmp_path / "local", **options)
    # read units of 3 photos: more units than chunks, so the report's order is rebuilt from keys
    monkeypatch.setattr(beam_writer, "READ_PHOTOS", 3)
    beam_manifest, beam_log = make_beam(tmp_path / "beam", **options)

    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)
    assert local_manifest["splits"]["train"]["images"] and local_manifest["splits"]["val"]["images"]
    assert len(local_manifest["splits"]["train"]["shards"]) == 4  # 16 photos, 4 a shard
    assert sum(local_manifest["ab_prior"]["counts"]) == local_manifest["splits"]["train"]["tiles"] * 32 * 32
    skipped = {Path(skip["source"]).name: skip["reason"] for skip in beam_manifest["skipped_files"]}
    assert skipped.keys() == {*expected, "near_gray.png"}
    assert skipped["near_gray.png"].startswith("near-gray photo")
    assert skipped["truncated.jpg"].startswith("truncated")
    assert any(skip["source"].endswith("half_flat.png") for skip in beam_manifest["skipped_tiles"])
    # one line a skipped file, then the summary's counts: the same words from both writers
    assert skip_lines(beam_log) == skip_lines(local_log)
    assert sum(line.startswith(f"skipped {root}") for line in skip_lines(beam_log)) == len(skipped)
    assert "Traceback" not in beam_log and "wrote" in beam_log


@needs_beam
def test_beam_matches_the_local_writer_on_the_sample_photos(tmp_path):
    options = dict(source="samples", size=64, mode="random", crops=2)
    local_manifest, _ = make(tmp_path / "local", **options)
    beam_manifest, _ = make_beam(tmp_path / "beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)
    assert beam_manifest["source"]["photos"] >= 10


@needs_beam
def test_beam_matches_the_local_writer_on_cifar10_batches_with_gzip(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", rows_per_batch=8)
    options = dict(source=f"cifar10:{tmp_path}", size=32, mode="random", crops=2, images_per_shard=5, compression="GZIP")
    local_manifest, _ = make(tmp_path / "local", **options)
    beam_manifest, _ = make_beam(tmp_path / "beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)
    assert beam_manifest["splits"]["test"]["images"] == 8 and beam_manifest["label_names"][0] == "airplane"


@needs_beam
def test_beam_matches_the_local_writer_on_several_sources(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", rows_per_batch=5)
    root = photo_folder(tmp_path / "photos", 7)
    options = dict(source=f"cifar10:{tmp_path} + folder:{root} + samples", size=32, mode="resize", images_per_shard=4)
    local_manifest, _ = make(tmp_path / "local", **options)
    beam_manifest, _ = make_beam(tmp_path / "beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)
    assert beam_manifest["source"]["photos"] == 15 + 7 + sources.plan("samples", 100).images


@needs_beam
def test_beam_matches_the_local_writer_on_gray_only_shards(tmp_path):
    root = photo_folder(tmp_path / "photos", 4)
    Image.fromarray(photo(48, 64, seed=7)[..., 0]).save(root / "scan.png")  # a gray original: kept
    options = dict(source=f"folder:{root}", size=32, mode="center", domain="gray")
    local_manifest, _ = make(tmp_path / "local", **options)
    beam_manifest, _ = make_beam(tmp_path / "beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)
    assert beam_manifest["ab_prior"] is None and len(beam_manifest["converted_to_gray"]["photos"]) == 4


@needs_beam
def test_beam_reads_a_prepared_tfds_dataset_as_the_local_writer(tmp_path):
    prepare_tiny_colours(tmp_path / "tfds")
    options = dict(source="tfds:tiny_colours", size=32, images_per_shard=4, tfds_dir=str(tmp_path / "tfds"))
    local_manifest, _ = make(tmp_path / "local", **options)
    beam_manifest, _ = make_beam(tmp_path / "beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)


@needs_beam
def test_a_folder_given_as_a_url_is_read_by_both_writers(tmp_path):
    # file:// goes through the same tf.io.gfile calls as gs:// on Dataflow
    root = photo_folder(tmp_path / "photos", 4)
    (root / "nested" / "deeper" / "empty.jpg").write_bytes(b"")
    options = dict(source=f"folder:file://{root}/", size=32, val_fraction=0.0)
    local_manifest, _ = make(tmp_path / "local", **options)
    beam_manifest, _ = make_beam(tmp_path / "beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", local_manifest, beam_manifest)
    assert beam_manifest["splits"]["train"]["images"] == 4
    assert beam_manifest["skipped_files"] == [{"source": f"file://{root}/nested/deeper/empty.jpg", "reason": "empty file"}]
    ids = {record[0] for record in tile_multiset(tmp_path / "beam", "train")}
    assert ids == {b"photo01.png", b"photo02.jpg", b"nested/deeper/photo00.jpg", b"nested/deeper/photo03.png"}


def test_only_folder_sources_read_from_urls(tmp_path):
    with pytest.raises(sources.SourceError, match="only folder: reads from a URL"):
        sources.plan("imagefolder:gs://bucket/photos", images_per_chunk=10)
    with pytest.raises(sources.SourceError, match="not found, or not a folder"):
        sources.plan(f"folder:file://{tmp_path}/nowhere", images_per_chunk=10)


@needs_beam
def test_beam_output_is_kept_refused_or_rebuilt_like_the_local_writers(tmp_path):
    root = photo_folder(tmp_path / "photos", 3)
    make_beam(tmp_path / "out", source=f"folder:{root}", size=32)
    shard = next((tmp_path / "out").glob("train-*.tfrecord"))
    before = shard.stat().st_mtime_ns
    _, log = make_beam(tmp_path / "out", source=f"folder:{root}", size=32)
    assert "already complete" in log and shard.stat().st_mtime_ns == before
    with pytest.raises(shards.WriteError, match="other options"):
        make_beam(tmp_path / "out", source=f"folder:{root}", size=16)
    manifest, _ = make_beam(tmp_path / "out", source=f"folder:{root}", size=16, overwrite=True)
    assert manifest["options"]["size"] == 16 and not (tmp_path / "out" / shards.PARTS).exists()
    assert not list((tmp_path / "out").glob("beam-temp-*")) and not list((tmp_path / "out").glob(".*.tmp-*"))


@needs_beam
def test_beam_with_no_usable_photo_writes_no_manifest(tmp_path):
    bad_files(tmp_path / "photos")
    with pytest.raises(shards.WriteError, match="no usable photo"):
        make_beam(tmp_path / "out", source=f"folder:{tmp_path / 'photos'}", size=32)
    assert not (tmp_path / "out" / "manifest.json").exists()


@needs_beam
def test_beam_runner_names_and_direct_runner_defaults():
    with pytest.raises(shards.WriteError, match="unknown Beam runner 'Dataflow'; valid: DirectRunner, DataflowRunner"):
        beam_writer.pipeline_options("Dataflow")
    assert beam_writer.pipeline_options("DirectRunner", workers=2) == [
        "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    chosen = ["--direct_running_mode=in_memory"]
    assert beam_writer.pipeline_options("DirectRunner", chosen) == ["--runner=DirectRunner", *chosen]
    dataflow = ["--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp"]
    assert beam_writer.pipeline_options("DataflowRunner", dataflow) == ["--runner=DataflowRunner", *dataflow]


@needs_beam
def test_cli_runs_beam_quietly(tmp_path):
    root = photo_folder(tmp_path / "photos", 3)
    (root / "empty.jpg").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "preprocess", "--runner=beam", f"--source=folder:{root}", "--size=32",
         f"--out={tmp_path / 'out'}", "--beam-option=--direct_running_mode=in_memory"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"skipped {root / 'empty.jpg'}: empty file" in result.stderr
    assert "wrote 3 tiles of 32 px from 3 photos" in result.stderr
    # Beam's and TensorFlow's own log lines are held back when the pipeline succeeds
    assert "INFO:" not in result.stderr and "WARNING" not in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / "manifest.json").exists()


def test_cli_without_beam_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "preprocess.beam", raising=False)
    monkeypatch.delattr(preprocess, "beam", raising=False)
    code = preprocess_cli.main(["--runner=beam", f"--out={tmp_path / 'out'}"])
    assert code == 2
    assert "--runner=beam needs Apache Beam: pip install -e '.[beam]'" in capsys.readouterr().err
