"""`colorize`: photos of every mode at their own size, names and folders kept, bad files
reported and skipped, exit codes; and the loader it shares with the web app."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from export import colorize
from export.images import UnusableImage, load_photo
from export.inference import Colorizer, ExportNotFound, resolve
from preprocess import color
from tests.helpers import photo


def lightness(rgb: np.ndarray) -> np.ndarray:
    return color.rgb_to_lab(rgb)[..., 0].numpy()


def save_modes(folder) -> dict[str, np.ndarray]:
    """One small file per mode, each -> the RGB a viewer shows for it (the colorization's L source)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = photo(24, 40)
    gray = rgb[..., 1]
    alpha = np.where(np.arange(40) < 20, 255, 0).astype(np.uint8)[None, :].repeat(24, 0)  # right half transparent
    white = np.full_like(rgb, 255)
    shown = {}
    Image.fromarray(gray).save(folder / "gray.png")
    shown["gray.png"] = np.repeat(gray[..., None], 3, -1)
    Image.fromarray(rgb).save(folder / "rgb.png")
    shown["rgb.png"] = rgb
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
    shown["rgba.png"] = np.where(alpha[..., None] > 0, rgb, white)
    Image.fromarray(gray.astype(np.uint16) * 257 + 128).save(folder / "gray16.png")  # 16-bit: scaled, not clipped
    shown["gray16.png"] = np.repeat(gray[..., None], 3, -1)
    palette = Image.fromarray(rgb).quantize(32)
    palette.save(folder / "palette.png")
    shown["palette.png"] = np.asarray(palette.convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    shown["cmyk.jpg"] = rgb
    tall = Image.fromarray(rgb)
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tall.save(folder / "rotated.jpg", quality=100, exif=exif)
    shown["rotated.jpg"] = np.rot90(rgb, k=-1)
    return shown


def test_every_mode_comes_back_at_its_size_coloured_from_what_a_viewer_shows(exported, tmp_path):
    shown = save_modes(tmp_path / "in")
    args = ["--model", str(exported.parent), "--output", str(tmp_path / "out"), str(tmp_path / "in")]
    assert colorize.main(args) == 0
    colorizer = Colorizer(exported)
    for name, expected in shown.items():
        result = np.asarray(Image.open((tmp_path / "out" / name).with_suffix(".png")))
        assert result.shape == expected.shape, name
        difference = np.abs(result.astype(int) - colorizer.colorize(expected))
        if name.endswith(".jpg"):  # lossy: close on average, and never a wrong rotation or inverted CMYK
            assert difference.mean() < 3, name
        else:
            assert difference.max() <= 1, name
        assert np.abs(lightness(result[:, :8]) - lightness(expected[:, :8])).mean() < 2, name  # its own L
        assert np.abs(result[..., 0].astype(int) - result[..., 2]).mean() > 5, name  # coloured, not gray


def test_folders_keep_their_subfolders_and_jpg_output(exported, tmp_path):
    (tmp_path / "in" / "trip" / "day1").mkdir(parents=True)
    Image.fromarray(photo(16, 16)).save(tmp_path / "in" / "trip" / "day1" / "a.png")
    Image.fromarray(photo(16, 24)).save(tmp_path / "in" / "b.jpeg")
    (tmp_path / "in" / "notes.txt").write_text("not a photo, and not named as one: ignored")
    args = ["--model", str(exported.parent), "--format", "jpg", "--output", str(tmp_path / "out"), str(tmp_path / "in")]
    assert colorize.main(args) == 0
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    written = sorted(str(path.relative_to(tmp_path / "out")) for path in files)
    assert written == ["b.jpg", "trip/day1/a.jpg"]
    assert Image.open(tmp_path / "out" / "b.jpg").format == "JPEG"
    assert Image.open(tmp_path / "out" / "b.jpg").size == (24, 16)


def test_bad_files_are_reported_and_skipped(exported, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(photo(16, 16)).save(inputs / "good.png")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "text.jpg").write_text("hello")
    (inputs / "cut.png").write_bytes((inputs / "good.png").read_bytes()[:60])
    Image.fromarray(photo(16, 16)).save(inputs / "good.jpg")  # would also write good.png
    assert colorize.main(["--model", str(exported), "--output", str(tmp_path / "out"), str(inputs)]) == 0
    err = capsys.readouterr().err
    assert "colorized 1 of 5 photos" in err
    for name, reason in [("empty.png", "empty file"), ("text.jpg", "not an image"),
                         ("cut.png", "truncated or corrupt"), ("good.png", "same output name")]:  # fmt: skip
        assert f"{inputs / name}: {reason}" in err, name
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["good.png"]  # no partial files either


def test_exit_codes(exported, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("nope")
    out = str(tmp_path / "out")
    assert colorize.main(["--model", str(exported), "--output", out, str(tmp_path / "bad.png")]) == 1  # none written
    assert colorize.main(["--model", str(exported), "--output", out, str(tmp_path / "missing.png")]) == 2
    assert colorize.main(["--model", str(tmp_path / "no-export"), "--output", out, str(tmp_path / "bad.png")]) == 2
    (tmp_path / "empty").mkdir()
    assert colorize.main(["--model", str(exported), "--output", out, str(tmp_path / "empty")]) == 2
    with_temperature = ["--model", str(exported), "--temperature=0.5", "--output", out, str(tmp_path / "bad.png")]
    assert colorize.main(with_temperature) == 2
    assert "does not take a --temperature" in capsys.readouterr().err


def test_the_command_needs_only_tensorflow_and_the_export(exported, tmp_path):
    """A fresh process in which the model and training code cannot be imported."""
    Image.fromarray(photo(20, 30)).save(tmp_path / "in.png")
    script = ("import sys; sys.modules.update(models=None, train=None); from export.colorize import main; "
              f"sys.exit(main(['--model', {str(exported)!r}, '--output', {str(tmp_path / 'out')!r}, "
              f"{str(tmp_path / 'in.png')!r}]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "colorized 1 of 1 photos" in done.stderr
    assert Image.open(tmp_path / "out" / "in.png").size == (30, 20)


def test_size_sets_the_working_size(exported):
    colorizer = Colorizer(exported)
    rgb = photo(48, 64, seed=7)
    default, larger = colorizer.colorize(rgb), colorizer.colorize(rgb, size=48)
    np.testing.assert_array_equal(default, colorizer.colorize(rgb, size=colorizer.info["working_size"]))
    assert np.abs(default.astype(int) - larger).mean() > 0.5


def test_versions_are_found_like_tf_serving_finds_them(exported, tmp_path):
    assert resolve(exported.parent) == exported  # the newest
    assert resolve(exported.parent, 1) == exported
    assert resolve(exported) == exported
    with pytest.raises(ExportNotFound, match="no version 7; found 1"):
        resolve(exported.parent, 7)
    with pytest.raises(ExportNotFound, match="no export versions"):
        resolve(tmp_path)


def test_loader_reads_uploads_and_guards_against_bombs():
    data = io.BytesIO()
    Image.fromarray(photo(30, 40)).save(data, format="PNG")
    assert load_photo(io.BytesIO(data.getvalue()), name="upload.png").shape == (30, 40, 3)
    with pytest.raises(UnusableImage, match="too large"):
        load_photo(io.BytesIO(data.getvalue()), max_pixels=500)  # 1,200 pixels
    with pytest.raises(UnusableImage, match="upload.png: empty file"):
        load_photo(io.BytesIO(b""), name="upload.png")


def test_a_folder_of_small_photos_is_colorized_in_batches_as_each_alone(exported, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = [(16, 24)] * 5 + [(24, 16)] * 2 + [(16, 24)] * 3  # runs of one size, broken by another
    for i, (height, width) in enumerate(sizes):
        Image.fromarray(photo(height, width, seed=i)).save(folder / f"p{i:02d}.png")
    (folder / "p05.png").write_bytes(b"not an image")  # inside the second run
    calls = []
    real = Colorizer.colorize_batch
    monkeypatch.setattr(Colorizer, "colorize_batch", lambda self, rgb, *a: calls.append(len(rgb)) or real(self, rgb, *a))
    monkeypatch.setattr(colorize, "BATCH_PHOTOS", 3)
    assert colorize.main(["--model", str(exported.parent), "--output", str(tmp_path / "out"), str(folder)]) == 0
    assert calls == [3, 2, 1, 3]  # p00-02, p03-04 | p06 | p07-09: at most 3, one shape each
    colorizer = Colorizer(exported)
    for i in (0, 4, 6, 9):
        alone = colorizer.colorize(np.asarray(Image.open(folder / f"p{i:02d}.png").convert("RGB")))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"p{i:02d}.png")), alone)
    assert not (tmp_path / "out" / "p05.png").exists()


def test_without_a_model_the_shipped_colorizer_colours_a_photo(tmp_path, monkeypatch):
    """What a fresh clone does with `colorize photo.jpg`: no training, no --model, no --output."""
    import skimage.data

    from export import PRETRAINED

    Image.fromarray(skimage.data.coffee()).convert("L").save(tmp_path / "coffee.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    assert colorize.main(["coffee.jpg"]) == 0
    result = np.asarray(Image.open(tmp_path / "colorized" / "coffee.png").convert("RGB"))
    assert result.shape == skimage.data.coffee().shape
    assert color.colorfulness(result) > 10  # gray in, colour out
    info = Colorizer(PRETRAINED).info
    assert (info["model"], info["working_size"]) == ("zhang", 64)
    assert (PRETRAINED.parent / "README.md").read_text().count("non-commercial") >= 1


def test_without_a_model_hints_use_the_shipped_guided_colorizer(tmp_path, monkeypatch):
    """`colorize --hints` on a fresh clone: the shipped colorizer takes no hints, its guided companion does,
    and a blue hint on a gray cup turns the cup blue where it lands, where the automatic colorizer does not."""
    import json

    import skimage.data

    from export import PRETRAINED_GUIDED

    Image.fromarray(skimage.data.coffee()).convert("L").save(tmp_path / "coffee.png")
    x, y = 200, 220  # on the cup's rim, which is red in the original
    (tmp_path / "hints.json").write_text(json.dumps([{"x": x, "y": y, "colour": "#2050e0"}]))
    monkeypatch.chdir(tmp_path)
    assert colorize.main(["--output", "guided", "--hints", "hints.json", "coffee.png"]) == 0
    assert colorize.main(["--output", "automatic", "coffee.png"]) == 0
    guided = color.rgb_to_lab(np.asarray(Image.open(tmp_path / "guided" / "coffee.png").convert("RGB"))).numpy()
    automatic = color.rgb_to_lab(np.asarray(Image.open(tmp_path / "automatic" / "coffee.png").convert("RGB"))).numpy()
    around = np.s_[y - 4 : y + 5, x - 4 : x + 5, 2]
    assert guided[around].mean() < -15  # b well below 0: blue
    assert guided[around].mean() < automatic[around].mean() - 15
    info = Colorizer(PRETRAINED_GUIDED).info
    assert (info["model"], info["hints"]) == ("guided", True)
    assert (PRETRAINED_GUIDED / "README.md").read_text().count("non-commercial") >= 1
