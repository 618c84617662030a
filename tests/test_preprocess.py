"""make data end to end on small photos made here: sources, tiles, shards, manifest, reader."""

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from preprocess import color, dataset, schema, shards, sources, tiles
from tests.helpers import prepare_tiny_colours
from tests.helpers import ramp_photo as photo


def photo_folder(root: Path, count: int, size=(48, 64)) -> Path:
    for i in range(count):
        folder = root / ("nested/deeper" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(*size, seed=i)).save(folder / f"photo{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


def make(out: Path, **options) -> tuple[dict, str]:
    log = io.StringIO()
    workers = options.pop("workers", 1)
    overwrite = options.pop("overwrite", False)
    tfds_dir = options.pop("tfds_dir", None)
    manifest = shards.write(shards.Options(**options), out, workers, overwrite, tfds_dir, log=log)
    return manifest, log.getvalue()


def read_split(out: Path, split: str) -> list[dict]:
    return [
        {key: value.numpy() for key, value in schema.parse(record).items()}
        for name in json.loads((out / "manifest.json").read_text())["splits"][split]["shards"]
        for record in tf.data.TFRecordDataset(str(out / name))
    ]


def test_folder_source_writes_shards_manifest_and_a_readable_split(tmp_path):
    root = photo_folder(tmp_path / "photos", 12)
    manifest, log = make(tmp_path / "out", source=f"folder:{root}", size=32, mode="center", val_fraction=0.3)
    splits = manifest["splits"]
    assert set(splits) == {"train", "val"}
    assert splits["train"]["images"] + splits["val"]["images"] == 12
    assert splits["train"]["tiles"] + splits["val"]["tiles"] == 12
    assert splits["val"]["images"] >= 1 and splits["train"]["images"] >= 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tfrecord")) == [
        "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["options"]["size"] == 32
    assert "wrote 12 tiles of 32 px from 12 photos" in log
    assert not (tmp_path / "out" / shards.PARTS).exists()

    # the prior counts every pixel of every train tile
    counts = np.array(manifest["ab_prior"]["counts"])
    assert counts.sum() == splits["train"]["tiles"] * 32 * 32
    assert len(counts) == len(manifest["ab_prior"]["bins"]) == len(color.ab_bins())

    # the stored tile is the centre crop of the photo scaled so its shorter side is 32
    train = read_split(tmp_path / "out", "train")
    first = next(r for r in train if r["source_id"] == b"photo01.png")
    expected = tiles.make_tiles(photo(48, 64, seed=1), 32, "center", np.random.default_rng(0))[0]
    np.testing.assert_array_equal(first["rgb"], expected)

    batch = next(iter(dataset.load(tmp_path / "out", "train", batch_size=4)))
    assert batch["gray"].shape == (4, 32, 32, 1) and batch["gray"].dtype == tf.float32
    assert batch["color"].shape == (4, 32, 32, 2)
    assert batch["label"].shape == (4,) and (batch["label"].numpy() == schema.NO_LABEL).all()
    assert -1.0 <= batch["gray"].numpy().min() and batch["gray"].numpy().max() <= 1.0
    assert np.abs(batch["color"].numpy()).max() <= 1.0


def test_tiles_of_one_photo_never_land_in_two_splits(tmp_path):
    root = photo_folder(tmp_path / "photos", 16, size=(80, 80))
    make(tmp_path / "out", source=f"folder:{root}", size=32, mode="tile", val_fraction=0.5, images_per_shard=5)
    train = {r["source_id"] for r in read_split(tmp_path / "out", "train")}
    val = {r["source_id"] for r in read_split(tmp_path / "out", "val")}
    assert train and val and not train & val
    assert len(list((tmp_path / "out").glob("train-*-of-00004.tfrecord"))) == 4


@pytest.mark.parametrize(
    "mode, expected",
    [("resize", [(32, 32)]), ("center", [(32, 32)]), ("random", [(32, 32)] * 3), ("tile", [(32, 32)] * 12)],
)
def test_tiling_modes(mode, expected):
    # tile: stride 24 -> rows start at 0, 24, 28 (last aligned to the border), columns at 0, 24, 48, 68
    rgb = photo(60, 100)
    made = tiles.make_tiles(rgb, 32, mode, np.random.default_rng(0), crops=3, overlap=0.25)
    assert [t.shape[:2] for t in made] == expected
    if mode == "tile":
        np.testing.assert_array_equal(made[-1], rgb[28:60, 68:100])
        np.testing.assert_array_equal(made[5], rgb[24:56, 24:56])


def test_small_photos_are_scaled_up_for_random_crops():
    made = tiles.make_tiles(photo(20, 40), 32, "random", np.random.default_rng(0), crops=2)
    assert [t.shape for t in made] == [(32, 32, 3)] * 2


def test_near_gray_photos_and_flat_tiles_are_skipped_with_reasons(tmp_path):
    root = photo_folder(tmp_path / "photos", 3, size=(64, 64))
    gray_rgb = np.repeat(photo(64, 64)[..., :1], 3, axis=-1)
    Image.fromarray(gray_rgb).save(root / "gray_as_rgb.png")
    half_flat = photo(64, 128, seed=9)
    half_flat[:, 64:] = (200, 40, 40)
    Image.fromarray(half_flat).save(root / "half_flat.png")
    manifest, log = make(tmp_path / "out", source=f"folder:{root}", size=64, mode="tile", overlap=0.0)
    skipped = {Path(s["source"]).name: s["reason"] for s in manifest["skipped_files"]}
    assert skipped.keys() == {"gray_as_rgb.png"}
    assert skipped["gray_as_rgb.png"].startswith("near-gray photo: colourfulness 0.0 < 5.0")
    assert manifest["skipped_tiles"] == [
        {"source": str(root / "half_flat.png"), "tile": 1, "reason": "flat tile: luma std 0.00 < 3.0"}
    ]
    assert "skipped 1 files: 1 near-gray photo" in log and "skipped 1 flat tiles" in log


def bad_files(root: Path) -> dict[str, str]:
    """Every kind of broken input next to good photos; -> file name: expected reason start."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not a photo at all")
    buffer = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(photo(32, 32)[..., 0]).save(root / "grayscale.png")
    Image.new("1", (20000, 20000)).save(root / "bomb.png")
    return {
        "empty.jpg": "empty file",
        "notes.jpg": "not an image",
        "truncated.jpg": "truncated",
        "grayscale.png": "grayscale image",
        "bomb.png": "too large",
    }


def test_bad_files_are_reported_and_the_rest_is_written(tmp_path):
    root = photo_folder(tmp_path / "photos", 3)
    expected = bad_files(root)
    rgba = np.dstack([photo(40, 40), np.full((40, 40), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(photo(40, 40)).convert("CMYK").save(root / "cmyk.jpg")
    manifest, log = make(tmp_path / "out", source=f"folder:{root}", size=32)
    skipped = {Path(s["source"]).name: s["reason"] for s in manifest["skipped_files"]}
    assert skipped.keys() == expected.keys()
    for name, reason in expected.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
        assert f"skipped {root / name}: {skipped[name]}" in log
    assert sum(info["images"] for info in manifest["splits"].values()) == 5  # 3 photos, rgba, cmyk
    assert "skipped 5 files:" in log
    assert "Traceback" not in log


def test_unreadable_folder_is_reported_and_the_rest_is_written(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "photos", 2)
    locked = root / "locked"
    locked.mkdir()
    Image.fromarray(photo(32, 32)).save(locked / "hidden.png")
    real_scandir = os.scandir

    def scandir(path="."):
        # root may not be denied a folder by its permissions, so the denial is simulated
        if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    manifest, log = make(tmp_path / "out", source=f"folder:{root}", size=32)
    assert manifest["skipped_files"] == [{"source": str(locked), "reason": "cannot read folder: Permission denied"}]
    assert sum(info["images"] for info in manifest["splits"].values()) == 2
    assert f"skipped {locked}: cannot read folder" in log


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preprocess", *args], capture_output=True, text=True, timeout=300)


def test_cli_reports_a_missing_path_without_a_traceback(tmp_path):
    result = run_cli(f"--source=folder:{tmp_path / 'nowhere'}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.tfrecord"))


def test_cli_rejects_an_unknown_source_and_bad_options(tmp_path):
    result = run_cli("--source=flickr:cats", f"--out={tmp_path}")
    assert result.returncode == 2 and "valid: samples, folder:PATH" in result.stderr
    result = run_cli("--val-fraction=1.5", f"--out={tmp_path}")
    assert result.returncode == 2 and "val fraction 1.5" in result.stderr and "Traceback" not in result.stderr


def test_cli_fails_cleanly_when_no_photo_is_usable(tmp_path):
    root = tmp_path / "photos"
    bad_files(root)
    result = run_cli(f"--source=folder:{root}", f"--out={tmp_path / 'out'}", "--workers=1")
    assert result.returncode == 2
    assert "no usable photo" in result.stderr and "Traceback" not in result.stderr
    assert f"{root / 'empty.jpg'}: empty file" in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_samples_source_uses_the_photos_dependencies_ship(tmp_path):
    plan = sources.plan("samples", images_per_chunk=100)
    assert plan.images >= 10
    paths = [item[1] for chunk in plan.chunks for item in chunk.items]
    assert all(Path(path).is_file() for path in paths)
    assert any("skimage" in path for path in paths) and any("sklearn" in path for path in paths)


def write_cifar_batches(folder: Path, rows_per_batch: int = 6) -> None:
    folder.mkdir(parents=True)
    with open(folder / "batches.meta", "wb") as meta:
        pickle.dump({b"label_names": [name.encode() for name in sources.CIFAR10_CLASSES]}, meta)
    for index, name in enumerate(["data_batch_1", "data_batch_2", "test_batch"]):
        images = np.stack([photo(32, 32, seed=10 * index + row) for row in range(rows_per_batch)])
        batch = {
            b"data": images.transpose(0, 3, 1, 2).reshape(rows_per_batch, 3072),
            b"labels": [(index + row) % 10 for row in range(rows_per_batch)],
            b"filenames": [f"{name}_{row}.png".encode() for row in range(rows_per_batch)],
        }
        with open(folder / name, "wb") as out:
            pickle.dump(batch, out)


def test_cifar10_pickle_batches_keep_labels_pixels_and_the_test_split(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    manifest, _ = make(tmp_path / "out", source=f"cifar10:{tmp_path}", size=32, mode="resize", images_per_shard=4)
    assert manifest["label_names"] == list(sources.CIFAR10_CLASSES)
    assert manifest["splits"]["test"]["images"] == 6
    assert manifest["splits"]["train"]["images"] + manifest["splits"]["val"]["images"] == 12
    test = {r["source_id"].decode(): r for r in read_split(tmp_path / "out", "test")}
    assert test["test_batch/test_batch_4.png"]["label"] == (2 + 4) % 10
    np.testing.assert_array_equal(test["test_batch/test_batch_4.png"]["rgb"], photo(32, 32, seed=24))


def test_cifar10_jpeg_folders_keep_class_labels(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        for name in ("cat", "ship"):
            folder = tmp_path / "cifar" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(photo(32, 32, seed=i)).save(folder / f"{i:04d}.jpg", quality=95)
    manifest, _ = make(tmp_path / "out", source=f"cifar10:{tmp_path / 'cifar'}", size=32, mode="resize")
    assert manifest["splits"]["test"]["images"] == 4
    labels = {r["source_id"].decode(): r["label"] for r in read_split(tmp_path / "out", "test")}
    assert labels["test/cat/0001.jpg"] == sources.CIFAR10_CLASSES.index("cat")
    assert labels["test/ship/0000.jpg"] == sources.CIFAR10_CLASSES.index("ship")
    batch = next(iter(dataset.load(tmp_path / "out", "test", batch_size=4)))
    assert sorted(batch["label"].numpy().tolist()) == [3, 3, 8, 8]


def test_imagefolder_labels_come_from_class_folders_and_words_txt(tmp_path):
    root = tmp_path / "tiny"
    for wnid, count in (("n02", 3), ("n01", 5)):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(photo(32, 32, seed=i + count)).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", quality=95)
    Image.fromarray(photo(32, 32)).save(root / "train" / "stray.png")
    (root / "val" / "images").mkdir(parents=True)  # the official zip's unlabelled validation photos
    Image.fromarray(photo(32, 32)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tbullfrog, Rana catesbeiana\n")
    manifest, log = make(tmp_path / "out", source=f"imagefolder:{root}", size=32, mode="resize", val_fraction=0.3)
    assert manifest["label_names"] == ["goldfish", "bullfrog"]
    records = read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "val")
    labels = {r["source_id"].decode(): int(r["label"]) for r in records}
    assert len(labels) == 8 and manifest["splits"]["val"]["images"] >= 1
    assert all(label == (0 if name.startswith("train/n01/") else 1) for name, label in labels.items())
    assert "stray.png" in log and "not inside a class folder" in log
    assert "val/images: not a class folder of the train split" in log


def test_imagefolder_val_folder_and_photos_hashed_out_of_train_keep_both(tmp_path):
    # one chunk in each group: both groups' val shards would be val-00000-of-00001
    root = tmp_path / "photos"
    for split, seed in (("train", 0), ("val", 100)):
        for name in ("apple", "zebra"):
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(photo(32, 32, seed=seed + i)).save(root / split / name / f"{split}_{name}_{i}.png")
    manifest, _ = make(tmp_path / "out", source=f"imagefolder:{root}", size=32, mode="resize", val_fraction=0.3)
    val = manifest["splits"]["val"]
    assert len(set(val["shards"])) == len(val["shards"]) == 2
    ids = [r["source_id"].decode() for r in read_split(tmp_path / "out", "val")]
    assert len(ids) == val["images"] == val["tiles"]
    assert sum(name.startswith("val/") for name in ids) == 12  # every photo of the val folder
    assert sum(name.startswith("train/") for name in ids) >= 1  # and those hashed out of train/
    assert manifest["splits"]["train"]["images"] + val["images"] == 24


def test_several_sources_make_one_data_set_with_labels_numbered_on(tmp_path):
    write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py", rows_per_batch=4)
    root = tmp_path / "tiny"
    for wnid in ("n01", "n02"):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(photo(32, 32, seed=i + 50)).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", quality=95)
    (tmp_path / "loose").mkdir()
    Image.fromarray(photo(32, 32, seed=99)).save(tmp_path / "loose" / "unlabelled.png")
    out = tmp_path / "out"
    result = run_cli(f"--source=imagefolder:{root}", f"--source=cifar10:{tmp_path / 'cifar'}",
                     f"--source=folder:{tmp_path / 'loose'}", "--size=32", "--mode=resize", "--val-fraction=0.3",
                     "--images-per-shard=3", "--workers=2", f"--out={out}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_names"] == ["n01", "n02", *sources.CIFAR10_CLASSES]
    joined = f"imagefolder:{root} + cifar10:{tmp_path / 'cifar'} + folder:{tmp_path / 'loose'}"
    assert manifest["options"]["source"] == manifest["source"]["spec"] == joined
    assert manifest["splits"]["test"]["images"] == 4  # CIFAR-10's test batch keeps its split
    records = read_split(out, "train") + read_split(out, "val")
    labels = {r["source_id"].decode(): int(r["label"]) for r in records}
    assert len(labels) == 10 + 8 + 1 and manifest["source"]["photos"] == 10 + 12 + 1
    assert {labels[f"train/n0{k}/n0{k}_{i}.JPEG"] for k in (1, 2) for i in range(5)} == {0, 1}
    assert labels["train/n02/n02_3.JPEG"] == 1
    assert labels["data_batch_2/data_batch_2_3.png"] == 2 + (1 + 3) % 10  # CIFAR-10's labels after the two classes
    assert labels["unlabelled.png"] == schema.NO_LABEL
    # a photo's split is its own source's: the same as when its source is made alone
    alone, _ = make(tmp_path / "alone", source=f"imagefolder:{root}", size=32, mode="resize", val_fraction=0.3)
    joined_val = {r["source_id"].decode() for r in read_split(out, "val")}
    alone_val = {r["source_id"].decode() for r in read_split(tmp_path / "alone", "val")}
    assert alone_val == {name for name in joined_val if name.startswith("train/n0")}
    result = run_cli(f"--source=imagefolder:{root} +  + folder:{tmp_path / 'loose'}", f"--out={tmp_path / 'bad'}")
    assert result.returncode == 2 and "an empty source" in result.stderr and "Traceback" not in result.stderr


def test_imagefolder_without_a_split_folder_or_words_uses_folder_names(tmp_path):
    for name in ("zebra", "apple"):
        (tmp_path / "photos" / name / "deeper").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(photo(32, 32, seed=i)).save(tmp_path / "photos" / name / "deeper" / f"{i}.png")
    plan = sources.plan(f"imagefolder:{tmp_path / 'photos'}", images_per_chunk=10)
    assert plan.label_names == ["apple", "zebra"]
    assert sorted(item[2] for chunk in plan.chunks for item in chunk.items) == [0, 0, 1, 1]
    (tmp_path / "flat").mkdir()
    Image.fromarray(photo(32, 32)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(sources.SourceError, match="no class sub-folders"):
        sources.plan(f"imagefolder:{tmp_path / 'flat'}", images_per_chunk=10)


def test_tfds_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "reachable", lambda host, **_: False)
    with pytest.raises(sources.SourceError, match="looks offline") as error:
        sources.plan("tfds:beans", images_per_chunk=100, tfds_dir=str(tmp_path))
    assert "folder:PATH" in str(error.value)


def test_reachable_is_false_for_a_closed_port():
    assert not sources.reachable("127.0.0.1", port=9, timeout=1.0)


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    prepare_tiny_colours(tmp_path / "tfds")
    for split, expected in (("train", {"train", "val"}), ("test", {"test"})):
        manifest, _ = make(tmp_path / split, source=f"tfds:tiny_colours:{split}", size=32, images_per_shard=4,
                           tfds_dir=str(tmp_path / "tfds"))
        assert set(manifest["splits"]) == expected
        assert manifest["label_names"] == ["x", "y"]
    assert manifest["splits"]["test"]["images"] == 3
    test = read_split(tmp_path / "test", "test")
    assert [r["source_id"] for r in test] == [b"tiny_colours/test/0", b"tiny_colours/test/1", b"tiny_colours/test/2"]
    assert sorted(r["label"] for r in test) == [0, 0, 1]  # TFDS stores examples in its own order


def test_complete_output_is_left_alone_unless_overwrite(tmp_path):
    root = photo_folder(tmp_path / "photos", 3)
    make(tmp_path / "out", source=f"folder:{root}", size=32)
    shard = next((tmp_path / "out").glob("train-*.tfrecord"))
    before = shard.stat().st_mtime_ns
    _, log = make(tmp_path / "out", source=f"folder:{root}", size=32)
    assert "already complete" in log and shard.stat().st_mtime_ns == before
    with pytest.raises(shards.WriteError, match="other options"):
        make(tmp_path / "out", source=f"folder:{root}", size=16)
    manifest, _ = make(tmp_path / "out", source=f"folder:{root}", size=16, overwrite=True)
    assert manifest["options"]["size"] == 16


def test_an_interrupted_run_leaves_no_partial_shard_and_a_rerun_completes_it(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "photos", 12)
    options = dict(source=f"folder:{root}", size=32, images_per_shard=3)
    make(tmp_path / "reference", **options)

    real_write_chunk = shards.write_chunk
    calls = []

    def dies_in_third_chunk(chunk, options, out, names):
        calls.append(chunk.index)
        if len(calls) == 3:
            real_read = sources.read

            def read_then_die(chunk, max_pixels, **options):
                yield next(real_read(chunk, max_pixels, **options))
                raise KeyboardInterrupt  # as if killed midway through a shard

            monkeypatch.setattr(sources, "read", read_then_die)
        return real_write_chunk(chunk, options, out, names)

    monkeypatch.setattr(shards, "write_chunk", dies_in_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "out", **options)
    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*.tmp-*"))
    written = sorted(p.name for p in out.glob("*.tfrecord"))
    assert written == sorted(n for i in (0, 1) for n in (f"train-0000{i}-of-00004.tfrecord", f"val-0000{i}-of-00004.tfrecord"))

    monkeypatch.undo()
    (out / ".train-00003-of-00004.tfrecord.tmp-999").write_bytes(b"left by a killed worker")
    _, log = make(out, **options)
    assert "resuming: 2 of 4 chunks already done" in log
    assert not list(out.glob(".*.tmp-*"))
    reference = tmp_path / "reference"
    for shard in reference.glob("*.tfrecord"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()


def test_parallel_workers_write_the_same_shards_as_one(tmp_path):
    root = photo_folder(tmp_path / "photos", 8)
    options = dict(source=f"folder:{root}", size=32, mode="random", crops=2, images_per_shard=3)
    one, _ = make(tmp_path / "one", **options)
    two, _ = make(tmp_path / "two", workers=2, **options)
    assert one["splits"] == two["splits"] and one["ab_prior"] == two["ab_prior"]
    for shard in (tmp_path / "one").glob("*.tfrecord"):
        assert (tmp_path / "two" / shard.name).read_bytes() == shard.read_bytes()


def test_gzip_shards_read_back(tmp_path):
    root = photo_folder(tmp_path / "photos", 4)
    make(tmp_path / "out", source=f"folder:{root}", size=32, compression="GZIP", val_fraction=0.0)
    batch = next(iter(dataset.load(tmp_path / "out", "train", batch_size=4, training=False)))
    assert batch["gray"].shape == (4, 32, 32, 1)


def test_reader_training_augments_and_evaluation_is_stable(tmp_path):
    root = photo_folder(tmp_path / "photos", 6, size=(64, 64))
    make(tmp_path / "out", source=f"folder:{root}", size=64, val_fraction=0.0)
    train = dataset.load(tmp_path / "out", "train", batch_size=4, crop_size=48, seed=1)
    batches = list(train)
    assert len(batches) == 1  # 6 tiles, remainder dropped
    assert batches[0]["gray"].shape == (4, 48, 48, 1) and batches[0]["color"].shape == (4, 48, 48, 2)
    evaluation = dataset.load(tmp_path / "out", "train", batch_size=4, training=False)
    first, second = list(evaluation), list(evaluation)
    assert [len(b["gray"]) for b in first] == [4, 2]
    np.testing.assert_array_equal(first[0]["color"], second[0]["color"])


def test_training_crops_are_whole_tile_windows_flipped_at_random_and_each_tile_once_an_epoch(tiny_shards):
    shards = dataset.Shards(tiny_shards)
    tiles = np.concatenate([batch["rgb"].numpy() for batch in shards.records("train").batch(64)])
    crop = 16
    # every crop_size window of every tile, as it is and mirrored: [tile, flip, row, col, crop, crop, 3]
    candidates = np.stack([tiles, tiles[:, :, ::-1]], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(candidates, (crop, crop), axis=(2, 3))
    windows = np.moveaxis(windows, 4, -1)  # channels last again
    windows_lab = color.rgb_to_lab(windows.reshape(-1, crop, crop, 3)).numpy().reshape(*windows.shape[:4], -1)
    found = []
    for batch in shards.batches("train", batch_size=8, crop_size=crop, seed=3):
        lab = color.model_to_lab(batch["gray"], batch["color"]).numpy().reshape(len(batch["gray"]), -1)
        for pixels in lab:
            matches = np.argwhere(np.abs(windows_lab - pixels).max(-1) < 1e-3)
            assert len(matches) >= 1, "a training crop is no window of any tile"
            found.append(tuple(matches[0]))
    assert len(found) == 40 and sorted(match[0] for match in found) == list(range(40))
    assert {match[1] for match in found} == {0, 1}  # some flipped, some not
    assert len({match[2:] for match in found}) > 10  # offsets spread over the 17 x 17 possible


def test_the_shards_handle_tells_what_every_stage_asks(tmp_path):
    root = photo_folder(tmp_path / "photos", 4)
    manifest, _ = make(tmp_path / "out", source=f"folder:{root}", size=32, compression="GZIP")
    shards = dataset.Shards(tmp_path / "out")
    assert shards.tile_size == 32 and shards.compression == "GZIP"
    assert {name: (split.tiles, split.photos) for name, split in shards.splits.items()} == {
        name: (info["tiles"], info["images"]) for name, info in manifest["splits"].items()}
    assert all(Path(path).exists() for split in shards.splits.values() for path in split.files)
    np.testing.assert_array_equal(shards.ab_prior, manifest["ab_prior"]["counts"])
    assert shards.label_names is None
    records = list(shards.records("train"))
    assert len(records) == shards.splits["train"].tiles and records[0]["rgb"].shape == (32, 32, 3)
    assert len(list(shards.records("train", limit=2))) == 2
    batch = next(iter(shards.batches("train", 2)))
    assert batch["gray"].shape == (2, 32, 32, 1) and batch["color"].shape == (2, 32, 32, 2)
    (tmp_path / "out" / dataset.MANIFEST).write_text("{")
    with pytest.raises(ValueError, match="manifest.json: not a manifest"):
        dataset.Shards(tmp_path / "out")


def test_reader_names_a_missing_manifest_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        dataset.load(tmp_path, "train")
    root = photo_folder(tmp_path / "photos", 2)
    make(tmp_path / "out", source=f"folder:{root}", size=32, val_fraction=0.0)
    with pytest.raises(ValueError, match="no split 'test'"):
        dataset.load(tmp_path / "out", "test")


def test_contact_sheet_shows_gray_and_colour_pairs(tmp_path):
    from preprocess.preview import contact_sheet

    root = photo_folder(tmp_path / "photos", 5)
    make(tmp_path / "out", source=f"folder:{root}", size=32, val_fraction=0.0)
    contact_sheet(tmp_path / "out", tmp_path / "sheet.png", count=4)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    # 4 cells in a row; a cell is gray | colour, each 32 px tile enlarged 3x, with 4 px margins
    assert sheet.shape == (96 + 8, 4 * (2 * 96 + 8), 3)
    gray_half, colour_half = sheet[4:100, 4:100].astype(int), sheet[4:100, 100:196].astype(int)
    assert np.abs(gray_half[..., 0] - gray_half[..., 2]).max() <= 1
    assert np.abs(colour_half[..., 0] - colour_half[..., 2]).mean() > 10


def test_gray_domain_keeps_gray_photos_and_stores_the_lightness_of_colour_ones(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    scan = photo(32, 32, seed=1)[..., 1]  # a gray scan: one channel
    Image.fromarray(scan).save(root / "a_scan.png")
    near_gray = np.repeat(photo(32, 32, seed=2)[..., :1], 3, axis=-1).astype(np.int16)
    near_gray[..., 2] += 4  # a faint tint, as an aged print has: below --min-colorfulness
    near_gray = np.clip(near_gray, 0, 255).astype(np.uint8)
    assert 0 < color.colorfulness(near_gray) < 5
    Image.fromarray(near_gray).save(root / "b_sepia.png")
    colour = photo(32, 32, seed=3)
    Image.fromarray(colour).save(root / "c_colour.png")

    manifest, log = make(tmp_path / "out", source=f"folder:{root}", size=32, val_fraction=0.0, domain="gray")
    assert manifest["options"]["domain"] == "gray"
    assert manifest["skipped_files"] == []  # gray and near-gray photos are what this domain is for
    assert manifest["splits"]["train"]["images"] == 3 and manifest["splits"]["train"]["tiles"] == 3
    assert manifest["ab_prior"] is None
    assert manifest["converted_to_gray"]["photos"] == [str(root / "c_colour.png")]
    assert "wrote 3 gray-only tiles" in log and "1 colour photo among them stored as lightness" in log

    shards_handle = dataset.Shards(tmp_path / "out")
    assert shards_handle.domain == "gray"
    records = {r["source_id"].numpy().decode(): r["gray"].numpy() for r in shards_handle.records("train")}
    assert set(records) == {"a_scan.png", "b_sepia.png", "c_colour.png"}
    assert all(levels.shape == (32, 32, 1) and levels.dtype == np.uint8 for levels in records.values())
    np.testing.assert_array_equal(records["a_scan.png"][..., 0], scan)  # a scan's own pixels, one byte each

    # the reader's "gray" is L / 50 - 1, as colour shards give it: exactly for a gray photo,
    # within 8-bit rounding (0.4 L at most) for a colour photo given to the gray domain
    batch = next(iter(shards_handle.batches("train", 3, training=False)))
    assert set(batch) == {"gray", "label"}
    gray = dict(zip(records, batch["gray"].numpy()))
    expected = {name: color.rgb_to_model(rgb)[0].numpy() for name, rgb in
                [("a_scan.png", np.repeat(scan[..., None], 3, -1)), ("c_colour.png", colour)]}  # fmt: skip
    np.testing.assert_array_equal(gray["a_scan.png"], expected["a_scan.png"])
    assert np.abs(gray["c_colour.png"] - expected["c_colour.png"]).max() * 50 < 0.4
    sepia_lightness = color.rgb_to_model(near_gray)[0].numpy()
    assert np.abs(gray["b_sepia.png"] - sepia_lightness).max() * 50 < 0.4


def test_gray_domain_from_the_command_line_trains_on_every_photo_and_has_a_contact_sheet(tmp_path):
    from preprocess.__main__ import main

    root = photo_folder(tmp_path / "photos", 4, size=(32, 32))
    out, sheet = tmp_path / "out", tmp_path / "sheet.png"
    args = [f"--source=folder:{root}", "--size=32", f"--out={out}", "--workers=1", f"--contact-sheet={sheet}"]
    assert main([*args, "--domain=gray"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # no colour truth to validate against: by default every gray photo trains
    assert manifest["options"]["val_fraction"] == 0.0 and manifest["splits"]["train"]["tiles"] == 4
    assert np.asarray(Image.open(sheet)).shape == (96 + 8, 4 * (96 + 8), 3)  # gray tiles alone
    # shards of other options are not silently reused: colour ones need --overwrite
    assert main([*args, "--domain=color"]) == 2


def test_colour_truth_is_refused_from_gray_only_shards_with_the_folder_named(tmp_path):
    root = photo_folder(tmp_path / "photos", 2, size=(32, 32))
    make(tmp_path / "out", source=f"folder:{root}", size=32, val_fraction=0.0, domain="gray")
    handle = dataset.Shards(tmp_path / "out")
    with pytest.raises(dataset.GrayOnly, match=f"{tmp_path / 'out'} has only gray photos \\(DOMAIN=gray\\); scores"):
        handle.require_color("scores need colour")
    with pytest.raises(dataset.GrayOnly, match="only gray photos"):
        handle.unpaired_batches("train", 1)
    dataset.Shards(tmp_path / "out").split("train")  # reading them is fine
    # shards made before DOMAIN existed are colour shards, and re-running make data on them is a no-op
    colour = tmp_path / "colour"
    make(colour, source=f"folder:{root}", size=32)
    manifest = json.loads((colour / "manifest.json").read_text())
    del manifest["options"]["domain"]
    (colour / "manifest.json").write_text(json.dumps(manifest))
    assert dataset.Shards(colour).domain == "color"
    _, log = make(colour, source=f"folder:{root}", size=32)
    assert "already complete" in log
