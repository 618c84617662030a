"""Colours carried from frame to frame (export/steady.py, `colorize --steady`): still surfaces
keep their colour, moved content takes the new frame's, a pan carries colour with the scene,
and `colorize` writes carried sequences whole. Frames are made here, a few dozen pixels wide."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evaluate import stability
from export import colorize, steady
from export.inference import Colorizer
from preprocess import color

SIDE = 48


def lab_frame(lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Lab L [H, W] (0..100) and ab [H, W, 2] or [2] -> uint8 RGB [H, W, 3]."""
    ab = np.broadcast_to(np.asarray(ab, np.float32), lightness.shape + (2,))
    lab = np.concatenate([lightness[..., None].astype(np.float32), ab], axis=-1)
    return np.round(color.lab_to_rgb(lab).numpy() * 255.0).astype(np.uint8)


def gray(lightness: np.ndarray) -> np.ndarray:
    return lab_frame(lightness, [0.0, 0.0])


def texture(height: int, width: int, seed: int = 0, contrast: float = 20.0) -> np.ndarray:
    """Lab L [H, W] around 55: a random texture phase correlation can lock onto."""
    return 55.0 + np.random.default_rng(seed).uniform(-contrast / 2, contrast / 2, (height, width))


def ab_of(rgb: np.ndarray) -> np.ndarray:
    return color.rgb_to_lab(rgb).numpy()[..., 1:]


def test_still_pixels_keep_their_colour_and_flicker_falls_as_an_exponential_average_predicts():
    """A still shot whose colorization flips between two colours every frame: carried with
    strength s, the flip shrinks towards (1 - s) / (1 + s) of itself, as the average of the
    recurrence ab(t) = s ab(t-1) + (1 - s) ab_frame(t) says; the first frame is the model's own."""
    lightness = texture(SIDE, SIDE)
    source = gray(lightness)
    flips = [np.array([20.0, 25.0]), np.array([-15.0, 5.0])]  # 40.3 Lab units apart
    frames = [lab_frame(lightness, flips[index % 2]) for index in range(20)]
    carried = steady.Steadier(0.8)
    outputs = [carried(source, frame) for frame in frames]
    assert outputs[0] is frames[0]

    alone, kept = stability.Stability(), stability.Stability()
    for frame, output in zip(frames, outputs):
        alone.add(frame, lightness)
        kept.add(output, lightness)
    expected, previous = [], flips[0]
    for index in range(1, 20):  # the recurrence in floats: the simplest correct version
        current = 0.8 * previous + 0.2 * flips[index % 2]
        expected.append(np.linalg.norm(current - previous))
        previous = current
    assert alone.score == pytest.approx(40.3, abs=0.5)
    assert kept.score == pytest.approx(np.mean(expected), abs=0.3)  # 8-bit rounding
    assert alone.score / kept.score > 4.0
    last_flip = np.linalg.norm(ab_of(outputs[-1]) - ab_of(outputs[-2]), axis=-1).mean()
    assert last_flip == pytest.approx(40.3 * 0.2 / 1.8, abs=0.3)


def test_a_still_pixel_keeps_its_code_until_its_colour_has_moved_a_level_and_then_follows():
    """A still shot whose colorization wobbles by a fraction of a level each frame, then drifts
    for good: the carried output keeps each pixel's 8-bit code through the wobble (rounding the
    carried colour anew would flip codes, and ab with them, now and then), stays within a level
    of the exact carried colour in every channel, and follows the drift."""
    lightness = texture(SIDE, SIDE, seed=3)
    source = gray(lightness)
    rng = np.random.default_rng(0)
    wobble = [np.array([20.0, 10.0]) + rng.normal(0.0, 0.4, (SIDE, SIDE, 2)) for _ in range(12)]
    drift = [np.array([20.0 + 1.5 * step, 10.0]) for step in range(1, 13)]
    frames = [lab_frame(lightness, ab) for ab in wobble + drift]
    carried = steady.Steadier(0.8)
    outputs = [carried(source, frame) for frame in frames]

    exact, rounded = ab_of(frames[0]), [frames[0]]  # the recurrence with dL = 0: weight = strength
    for frame, output in zip(frames[1:], outputs[1:]):
        frame_lab = color.rgb_to_lab(frame).numpy()
        exact = 0.8 * exact + 0.2 * frame_lab[..., 1:]
        exact_rgb = color.lab_to_rgb(np.concatenate([frame_lab[..., :1], exact], -1)).numpy() * 255.0
        assert np.abs(exact_rgb - output).max() < 1.0 + 1e-3
        rounded.append(np.round(exact_rgb))

    def codes_changed(sequence: list[np.ndarray]) -> float:
        """The largest share of pixels whose code changed from one wobbling frame to the next, once settled."""
        return max(np.any(after != before, axis=-1).mean() for before, after in zip(sequence[4:11], sequence[5:12]))

    assert codes_changed(rounded) > 0.3
    assert codes_changed(outputs) < 0.1
    np.testing.assert_allclose(ab_of(outputs[-1]).mean((0, 1)), exact.mean((0, 1)), atol=0.5)
    assert ab_of(outputs[-1]).mean((0, 1))[0] > 30.0  # it followed: 20 + 1.5 x 12 with lag


def test_pixels_whose_lightness_changed_take_the_new_frame_s_colour():
    """A bright square moves over a still textured background: where it arrives and where it
    left, the output is the new colorization (within a gray level); the background is carried."""
    background = texture(SIDE, SIDE, seed=1)
    before, after = background.copy(), background.copy()
    before[8:20, 8:20] = 95.0
    after[8:20, 26:38] = 95.0
    carried = steady.Steadier(0.8)
    carried(gray(before), lab_frame(before, [30.0, 10.0]))
    new_colour = lab_frame(after, [-20.0, 30.0])
    output = carried(gray(after), new_colour)
    assert carried.shift == (0, 0)
    changed = np.zeros((SIDE, SIDE), bool)
    changed[9:19, 9:19] = changed[9:19, 27:37] = True  # inside the square's old and new places
    np.testing.assert_allclose(output[changed], new_colour[changed], atol=1)
    still = np.ones((SIDE, SIDE), bool)
    still[6:22, 6:40] = False
    blended = 0.8 * np.array([30.0, 10.0]) + 0.2 * np.array([-20.0, 30.0])  # dL = 0 there: w = strength
    np.testing.assert_allclose(ab_of(output)[still].mean(0), blended, atol=1.0)


def test_a_cut_carries_nothing_even_where_lightness_matches_by_chance():
    carried = steady.Steadier(0.8)
    blocks = np.ones((4, 4))  # patches of 4 x 4 pixels, as a photo's are smooth at that scale
    shot, next_shot = (np.kron(texture(SIDE // 4, SIDE // 4, seed, contrast=60.0), blocks) for seed in (5, 6))
    carried(gray(shot), lab_frame(shot, [30.0, 10.0]))
    new_colour = lab_frame(next_shot, [-20.0, 30.0])
    output = carried(gray(next_shot), new_colour)
    assert np.mean(np.abs(shot - next_shot) < 6.0) > 0.1  # pixels that would carry without the cut
    assert carried.cuts == 1
    np.testing.assert_allclose(output, new_colour, atol=1)
    carried(gray(next_shot), new_colour)  # the new shot holds still: carried again, no second cut
    assert carried.cuts == 1


def test_a_pan_carries_colour_with_the_scene_instead_of_dragging_it():
    """Equiluminant red and green stripes pan 2 px a frame. Lightness barely changes at a fixed
    pixel, so carrying in place would drag each stripe's colour behind it; following the
    camera's shift keeps the colorization's colours where the stripes are."""
    height, width, step = SIDE, 96, 2
    scene_lightness = texture(height, width + 20 * step, seed=2, contrast=4.0)
    stripes = np.where((np.arange(width + 20 * step) // 8) % 2 == 0, 1.0, -1.0)
    scene_ab = np.stack([40.0 * stripes, 20.0 * stripes], axis=-1)[None].repeat(height, 0)  # [H, W', 2]
    windows = [slice(index * step, index * step + width) for index in range(10)][::-1]  # content moves right
    shots = [(scene_lightness[:, window], scene_ab[:, window]) for window in windows]
    followed, in_place = steady.Steadier(0.8), steady.Steadier(0.8, follow_camera=False)
    errors = {"followed": [], "in_place": []}
    for lightness, ab in shots:
        source, truth = gray(lightness), lab_frame(lightness, ab)
        for name, carried in (("followed", followed), ("in_place", in_place)):
            output = carried(source, truth)
            errors[name].append(np.linalg.norm(ab_of(output) - ab_of(truth), axis=-1)[:, 4:-4].mean())
    assert followed.shift == (0, step)
    assert steady.camera_shift(shots[0][0], shots[1][0]) == (0, step)
    assert max(errors["followed"]) < 1.0
    assert np.mean(errors["in_place"][1:]) > 5.0


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "nan", "strong"])
def test_bad_strengths_are_refused_in_one_line(value, tmp_path, capsys):
    (tmp_path / "reel").mkdir()
    with pytest.raises(SystemExit) as stopped:
        colorize.main([f"--steady={value}", "--sequence", "--output", str(tmp_path / "out"), str(tmp_path / "reel")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and error.startswith("colorize: error: argument --steady: ")
    assert ("not a number" in error) if value == "strong" else ("must be at least 0 and below 1" in error)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        stability.main(["--score", f"--steady={value}", str(tmp_path / "reel")])
    assert "argument --steady" in capsys.readouterr().err
    with pytest.raises(ValueError, match="below 1"):
        steady.Steadier(1.0)


def test_steady_is_refused_without_a_sequence(exported, tmp_path, capsys):
    Image.fromarray(gray(texture(16, 16))).save(tmp_path / "photo.png")
    assert colorize.main(["--model", str(exported), "--steady=0.5", "--output", str(tmp_path / "out"),
                          str(tmp_path / "photo.png")]) == 2  # fmt: skip
    assert "--steady carries colours between the frames of a sequence" in capsys.readouterr().err


def write_reel(folder, frames) -> None:
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:02d}.png")


def test_colorize_carries_colours_by_default_and_writes_sequences_whole(exported, tmp_path, capsys):
    """A folder of frames: by default each output is Steadier(DEFAULT_STRENGTH) applied in order
    to the frames colorized alone (the first unchanged); --steady=0 gives them alone; a
    sequence that fails half way leaves nothing behind, not even a temporary folder."""
    lightness = texture(24, 32, seed=3)
    frames = [gray(lightness + np.random.default_rng(index).normal(0, 1.0, lightness.shape)) for index in range(5)]
    write_reel(tmp_path / "reel", frames)
    model = Colorizer(exported)
    # one batch, as colorize takes the frames: the same pixels, while a photo colorized on its own
    # may differ by a level where vectorised float rounding differs with the tensor's size
    alone = list(model.colorize_batch(np.stack(frames)))
    carried = steady.Steadier(steady.DEFAULT_STRENGTH)
    expected = [carried(frame, output) for frame, output in zip(frames, alone)]
    for options, wanted in (([], expected), (["--steady=0"], alone)):
        out = tmp_path / f"out{len(options)}"
        assert colorize.main(["--model", str(exported), "--sequence", "--output", str(out), *options,
                              str(tmp_path / "reel")]) == 0  # fmt: skip
        written = [np.asarray(Image.open(out / "reel" / f"{index:02d}.png")) for index in range(5)]
        for frame, want in zip(written, wanted):
            np.testing.assert_array_equal(frame, want)
        assert sorted(path.name for path in out.iterdir()) == ["reel"]
    np.testing.assert_array_equal(expected[0], alone[0])
    assert not np.array_equal(expected[-1], alone[-1])

    broken = frames[:3] + [gray(texture(20, 32))] + frames[3:]  # a frame of another size, half way
    write_reel(tmp_path / "broken", broken)
    out = tmp_path / "out-broken"
    assert colorize.main(["--model", str(exported), "--sequence", "--output", str(out), str(tmp_path / "broken")]) == 1
    assert "a sequence has one size" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_stability_follows_the_camera_and_scores_against_the_truth(tmp_path, capsys):
    """A true colour pan scores 0 once the camera's shift is followed (the same scene, the same
    colour), above 0 at fixed pixels; frames given with their truth score its ab error and PSNR."""
    height, width, step = 32, 48, 3
    scene = np.random.default_rng(4).uniform(40, 220, (height, width + 8 * step, 3)).astype(np.uint8)
    pan = [scene[:, index * step : index * step + width] for index in range(8)][::-1]
    write_reel(tmp_path / "pan", pan)
    scores = tmp_path / "scores.json"
    assert stability.main(["--score", "--follow-camera", f"--json={scores}", str(tmp_path / "pan")]) == 0
    followed = stability.stability(pan, follow_camera=True)
    assert followed.score == 0.0 and followed.still_fraction > 0.8
    assert stability.stability(pan).score > 5.0
    assert f'"score": 0.0' in scores.read_text()

    truth = pan[0]
    wrong = lab_frame(color.rgb_to_lab(truth).numpy()[..., 0], [0.0, 0.0])  # the truth's L, no colour
    scored = stability.Stability()
    scored.add(truth, truth=truth)
    scored.add(wrong, truth=truth)
    chroma = np.linalg.norm(ab_of(truth), axis=-1).mean()
    summary = scored.summary()
    assert summary["ab_error"] == pytest.approx(chroma / 2, rel=0.02)  # 0 for the first frame, chroma for the second
    squared = np.mean((truth.astype(float) - wrong) ** 2)
    assert summary["psnr"] == pytest.approx((100.0 + 10 * np.log10(255.0**2 / squared)) / 2)  # metrics.PSNR_CAP
