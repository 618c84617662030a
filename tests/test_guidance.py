"""What a person hands a guided model, without a model: hints files and colours, reference
photos, sequences of frames and videos in and out, and the colour-stability score."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from evaluate import stability
from export import guidance, savedmodel, sequence
from export.guidance import GuidanceError, Hint
from export.inference import error_message
from preprocess import color

# ---------------------------------------------------------------------------------------
# Hints and colours


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_hints_file_is_read_with_either_spelling_of_colour(tmp_path):
    path = write_json(tmp_path / "hints.json", [{"x": 3, "y": 7, "colour": "#D02020"}, {"x": 0, "y": 0, "color": "#2040c0"}])
    assert guidance.read_hints(path) == [Hint(3, 7, "#d02020"), Hint(0, 0, "#2040c0")]
    assert guidance.read_hints(path)[0].rgb == (0xD0, 0x20, 0x20)
    assert guidance.read_hints(write_json(tmp_path / "none.json", [])) == []


@pytest.mark.parametrize(
    "content, reason",
    [
        ("not json", "not JSON"),
        ({"x": 1}, "expected a JSON list"),
        ([[1, 2, "#ffffff"]], "hint 1 is [1, 2, \"#ffffff\"], not an object"),
        ([{"x": 1, "y": 2}], "hint 1: no colour"),
        ([{"x": 1, "colour": "#ffffff"}], "hint 1: no y"),
        ([{"x": 1, "y": 2, "colour": "#ffffff", "size": 3}], "hint 1: unknown keys size"),
        ([{"x": 1, "y": 2, "colour": "#fff"}], "hint 1: colour '#fff' is not #rrggbb"),
        ([{"x": 1, "y": 2, "colour": "#ffffff"}, {"x": 1, "y": 2, "colour": "red"}], "hint 2: colour 'red' is not #rrggbb"),
        ([{"x": 1, "y": 2, "colour": "#gg0000"}], "is not #rrggbb"),
        ([{"x": -1, "y": 2, "colour": "#ffffff"}], "x = -1 is not a pixel index"),
        ([{"x": 1.5, "y": 2, "colour": "#ffffff"}], "x = 1.5 is not a pixel index"),
        ([{"x": 1, "y": True, "colour": "#ffffff"}], "y = true is not a pixel index"),
    ],
)
def test_bad_hints_files_name_the_file_the_hint_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "hints.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(GuidanceError) as error:
        guidance.read_hints(path)
    assert str(error.value).startswith(f"{path}: ") and reason in str(error.value)
    with pytest.raises(GuidanceError, match="cannot read it"):
        guidance.read_hints(tmp_path / "missing.json")


def test_a_hint_outside_the_photo_is_named_with_the_photos_size():
    hints = [Hint(59, 39, "#ffffff"), Hint(60, 0, "#ffffff")]
    assert guidance.outside(hints, 40, 60) == ("hint 2 at x=60, y=0 is outside the photo (60 x 40 pixels: "
                                                "x up to 59, y up to 39)")  # fmt: skip
    assert guidance.outside(hints[:1], 40, 60) is None
    assert "hint 1 at x=59, y=39" in guidance.outside(hints, 39, 60)


def test_hex_colours_in_the_graph_match_python_and_refuse_the_same_strings():
    colours = ["#d02020", "#00FF7f", "#000000", "#ffffff", "#2040C0", "#0a0B0c"]
    got = savedmodel.hex_colors_to_rgb(tf.constant([colours, colours[::-1]]))
    assert got.dtype == tf.uint8 and got.shape == (2, 6, 3)
    np.testing.assert_array_equal(got.numpy()[0], [guidance.parse_colour(colour) for colour in colours])
    assert savedmodel.hex_colors_to_rgb(tf.zeros([1, 0], tf.string)).shape == (1, 0, 3)  # no hints at all
    for bad in ["red", "#fff", "#1234567", "d02020", "#gg0000", ""]:
        with pytest.raises(ValueError):
            guidance.parse_colour(bad)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"hint colour {bad} is not #rrggbb"):
            savedmodel.hex_colors_to_rgb(tf.constant(["#ffffff", bad]))


def test_local_hints_put_each_colours_ab_at_the_working_pixel_of_the_photo_pixel():
    working = tf.constant([16, 8])
    got = savedmodel.local_hints(tf.constant([0, 99, 50]), tf.constant([0, 49, 25]),
                                 tf.constant(["#ff0000", "#0000ff", "#808080"]), tf.constant([100, 50]), working,
                                 patch=1).numpy()  # fmt: skip
    assert got.shape == (16, 8, 3)
    # photo (y, x) -> working (floor((y + 0.5) * 16 / 100), floor((x + 0.5) * 8 / 50))
    assert sorted(map(tuple, np.argwhere(got[..., 2] == 1))) == [(0, 0), (8, 4), (15, 7)]
    lab = color.rgb_to_lab(np.array([[255, 0, 0], [0, 0, 255], [128, 128, 128]], np.uint8)).numpy()
    np.testing.assert_allclose(got[[0, 15, 8], [0, 7, 4], :2], lab[:, 1:] / 110, atol=1e-5)  # L ignored
    assert np.abs(got[8, 4, :2]).max() < 1e-3  # gray is a hint too: "no colour here"
    assert got[..., 2].sum() == 3 and np.abs(got[got[..., 2] == 0]).max() == 0
    three = savedmodel.local_hints(tf.constant([50]), tf.constant([25]), tf.constant(["#ff0000"]),
                                   tf.constant([100, 50]), working).numpy()  # fmt: skip
    assert three[..., 2].sum() == savedmodel.HINT_PATCH**2
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"hint at x=50, y=3 is outside the photo \(50 x 100"):
        savedmodel.local_hints(tf.constant([3]), tf.constant([50]), tf.constant(["#ff0000"]), tf.constant([100, 50]),
                               working)  # fmt: skip


def test_the_reason_of_a_check_in_the_graph_is_found_in_its_error():
    with pytest.raises(tf.errors.InvalidArgumentError) as eager:
        savedmodel.hex_colors_to_rgb(tf.constant(["#12"]))
    assert error_message(eager.value) == "hint colour #12 is not #rrggbb (six hexadecimal digits, e.g. #d02020)"
    served = ("Graph execution error:\n\nDetected at node map/while/Assert defined at (most recent call last):\n"
              "<stack traces unavailable>\nassertion failed: [hint at x=60, y=0 is outside the photo (60 x 40 pixels)]\n"
              "\t [[{{node map/while/Assert}}]] [Op:__inference_signature_wrapper_12]")  # fmt: skip
    assert error_message(served) == "hint at x=60, y=0 is outside the photo (60 x 40 pixels)"
    assert error_message("Graph execution error:\n\nOOM when allocating tensor\n") == "OOM when allocating tensor"


# ---------------------------------------------------------------------------------------
# Reference photos


def coloured(height: int = 48, width: int = 64, chroma: float = 30.0) -> np.ndarray:
    """uint8 RGB [H, W, 3]: half the photo a at +chroma, half b at -chroma, at L 60."""
    lab = np.zeros((height, width, 3), np.float32)
    lab[..., 0] = 60.0
    lab[:, : width // 2, 1] = chroma
    lab[:, width // 2 :, 2] = -chroma
    return np.round(color.lab_to_rgb(lab).numpy() * 255).astype(np.uint8)


def test_a_gray_reference_is_refused_in_python_and_in_the_graph(tmp_path):
    for name, rgb in {"gray.png": np.full((40, 50, 3), 128, np.uint8), "faint.png": coloured(chroma=1.5)}.items():
        Image.fromarray(rgb).save(tmp_path / name)
        with pytest.raises(GuidanceError, match=rf"{name}: the reference photo is gray \(mean chroma [01]\.\d, under 3 Lab units\)"):
            guidance.read_reference(tmp_path / name)
        with pytest.raises(tf.errors.InvalidArgumentError, match="the reference photo is gray"):
            savedmodel.reference_hint(tf.constant(guidance.png_bytes(rgb)))
    (tmp_path / "notes.jpg").write_bytes(b"not a photo")
    with pytest.raises(GuidanceError, match="notes.jpg: not an image"):
        guidance.read_reference(tmp_path / "notes.jpg")


def test_a_references_global_hint_is_its_ab_histogram_and_saturation(tmp_path):
    big = np.repeat(np.repeat(coloured(), 8, axis=0), 8, axis=1)  # 384 x 512: shrunk before it is sent
    Image.fromarray(big).save(tmp_path / "reference.png")
    small = guidance.read_reference(tmp_path / "reference.png")
    assert small.shape[0] * small.shape[1] <= 1.02 * guidance.REFERENCE_SIDE**2
    hint = savedmodel.reference_hint(tf.constant(guidance.png_bytes(small))).numpy()
    bins = color.ab_bins()
    assert hint.shape == (len(bins) + 2,) and hint[-1] == 1.0
    histogram = hint[: len(bins)]
    assert histogram.sum() == pytest.approx(1.0, abs=1e-5)
    # the two halves' colours, a = 30 and b = -30, hold nearly all of it
    for ab in ([30.0, 0.0], [0.0, -30.0]):
        assert histogram[np.argmin(((bins - ab) ** 2).sum(-1))] == pytest.approx(0.5, abs=0.03)
    assert hint[-2] == pytest.approx(30.0 / 110.0, abs=0.01)
    empty = savedmodel.reference_hint(tf.constant(b"")).numpy()
    assert empty.shape == hint.shape and not empty.any()  # no reference: the "not given" hint


# ---------------------------------------------------------------------------------------
# Sequences


def frames_folder(folder: Path, count: int, height: int = 12, width: int = 18) -> list[np.ndarray]:
    folder.mkdir(parents=True)
    frames = [np.full((height, width, 3), 10 * index, np.uint8) for index in range(count)]
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{index}.png")  # frame10 after frame9, not after frame1
    (folder / "notes.txt").write_text("not a frame")
    return frames


def test_a_folder_of_frames_reads_in_numeric_order_and_writes_whole(tmp_path):
    frames = frames_folder(tmp_path / "film", 11)
    found = sequence.read_sequence(tmp_path / "film")
    assert found.count == 11 and found.fps is None and not found.is_video
    names, read = zip(*found.frames())
    assert list(names) == [f"frame{index}.png" for index in range(11)]
    np.testing.assert_array_equal(np.stack(read), np.stack(frames))

    target = tmp_path / "out" / "film"
    with pytest.raises(RuntimeError):  # a run that fails half way leaves nothing
        with sequence.FramesOut(target) as out:
            Image.fromarray(frames[0]).save(out.file("frame0.png"))
            raise RuntimeError("interrupted")
    assert not target.exists() and os.listdir(tmp_path / "out") == []
    with sequence.FramesOut(target) as out:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(out.file(f"frame{index}.png"))
    assert sorted(os.listdir(target)) == sorted(f"frame{index}.png" for index in range(11))
    assert os.listdir(tmp_path / "out") == ["film"]  # no temporary left


def test_sequences_that_cannot_be_read_say_why(tmp_path):
    frames_folder(tmp_path / "mixed", 2)
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "mixed" / "frame2.png")
    with pytest.raises(sequence.SequenceError, match="frame frame2.png is 20 x 12 pixels, the first one 18 x 12"):
        list(sequence.read_sequence(tmp_path / "mixed").frames())
    (tmp_path / "empty").mkdir()
    with pytest.raises(sequence.SequenceError, match="empty: no frames"):
        sequence.read_sequence(tmp_path / "empty")
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(sequence.SequenceError, match="not a folder of frames or a video"):
        sequence.read_sequence(tmp_path / "photo.png")


def test_without_the_video_extra_a_video_is_refused_naming_the_extra(tmp_path, monkeypatch):
    real = sequence.importlib.util.find_spec
    monkeypatch.setattr(sequence.importlib.util, "find_spec", lambda name: None if name == "imageio_ffmpeg" else real(name))
    (tmp_path / "film.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(sequence.SequenceError, match=r"film.mp4: videos need the optional extra `video`: pip install "
                                                     r"'colorize-pipeline\[video\]'"):  # fmt: skip
        sequence.read_sequence(tmp_path / "film.mp4")


def test_a_video_round_trips_with_its_frame_rate_and_is_written_whole(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="the optional extra `video` is not installed")
    rng = np.random.default_rng(0)
    coarse = rng.uniform(40, 220, (6, 3, 4, 3)).astype(np.float32)
    frames = tf.cast(tf.image.resize(coarse, [33, 47]), tf.uint8).numpy()  # smooth, odd sides
    with sequence.VideoOut(tmp_path / "film.mp4", 12.5) as video:
        for frame in frames:
            video.write(frame)
    assert os.listdir(tmp_path) == ["film.mp4"]
    found = sequence.read_sequence(tmp_path / "film.mp4")
    assert found.is_video and found.fps == 12.5
    read = np.stack([frame for _, frame in found.frames()])
    assert read.shape == (6, 34, 48, 3)  # H.264 4:2:0 needs even sides: the last row and column repeated
    assert np.abs(read[:, :33, :47].astype(int) - frames).mean() < 6  # CRF 18, colour at half resolution (4:2:0)
    with pytest.raises(RuntimeError):
        with sequence.VideoOut(tmp_path / "broken.mp4", 25) as video:
            video.write(frames[0])
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["film.mp4"]
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(sequence.SequenceError, match="junk.mp4: cannot read it as a video"):
        list(sequence.read_sequence(tmp_path / "junk.mp4").frames())


# ---------------------------------------------------------------------------------------
# The colour-stability score


def lab_frame(ab_left: tuple[float, float], lightness_right: float, height: int = 8, width: int = 12) -> np.ndarray:
    """uint8 RGB: the left half at L 60 with the given ab, the right half gray at the given L."""
    lab = np.zeros((height, width, 3), np.float32)
    lab[:, : width // 2] = [60.0, *ab_left]
    lab[:, width // 2 :, 0] = lightness_right
    return np.round(color.lab_to_rgb(lab).numpy() * 255).astype(np.uint8)


def test_stability_is_the_mean_ab_change_on_pixels_whose_lightness_held_still():
    # Left half: the same L, ab jumps by 20 (a: 0 -> 20 -> 0). Right half: L jumps by 30, so left out.
    frames = [lab_frame((0, 0), 40), lab_frame((20, 0), 70), lab_frame((0, 0), 40)]
    scored = stability.stability(frames)
    assert scored.frames == 3 and scored.still_fraction == pytest.approx(0.5)
    assert scored.score == pytest.approx(20.0, abs=0.6)  # uint8 rounding of the Lab colours
    # chroma: the left half's 0, 20, 0 over three frames, the right half gray: 20 / 6 on average
    assert scored.chroma == pytest.approx(20.0 / 6.0, abs=0.3)

    steady = stability.stability([lab_frame((20, 0), 40), lab_frame((20, 0), 40.6), lab_frame((20, 0), 41.2)])
    assert steady.still_fraction == 1.0 and steady.score == pytest.approx(0.0, abs=0.6)  # |dL| 0.6 < 2: still

    # Half the still pixels change by 10, the other half not at all: 5 on average.
    half = [lab_frame((0, 0), 60), lab_frame((0, 10), 60)]
    assert stability.stability(half).score == pytest.approx(5.0, abs=0.4)
    assert np.isnan(stability.stability(frames[:1]).score)  # one frame: no pair

    # Judged on another L (the source's, when colorizations are compared): the right half is still too.
    source = stability.Stability()
    for frame in frames:
        source.add(frame, lightness=np.full(frame.shape[:2], 50.0))
    assert source.still_fraction == 1.0 and source.score == pytest.approx(10.0, abs=0.3)  # 20 on half, 0 on half


def test_stability_command_scores_sequences_as_they_are(tmp_path, capsys):
    folder = tmp_path / "flicker"
    folder.mkdir()
    for index, frame in enumerate([lab_frame((0, 0), 40), lab_frame((20, 0), 70), lab_frame((0, 0), 40)]):
        Image.fromarray(frame).save(folder / f"{index}.png")
    assert stability.main(["--score", str(folder), f"--json={tmp_path / 'scores.json'}"]) == 0
    assert "stability 20." in capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())[str(folder)]
    assert scores["frames"] == 3 and scores["score"] == pytest.approx(20.0, abs=0.6)
    assert stability.main(["--score", str(tmp_path / "missing")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
