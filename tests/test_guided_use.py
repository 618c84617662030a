"""A guided model in a person's hands: the export's hint signatures, `colorize --hints
--reference` on photos, frame folders and videos, the stability command, TF Serving's REST
API and the web page. Every test uses one tiny untrained guided generator, exported once."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from werkzeug.serving import make_server

import models
from evaluate import hints as hints_eval
from evaluate import stability
from evaluate.metrics import psnr
from export import __main__ as export_cli
from export import colorize, guidance, savedmodel, sequence, steady
from export.client import ServingClient
from export.guidance import Hint
from export.inference import INFO_FILE, Colorizer, guidance_feed
from export.web import create_app
from models import hints
from models.guided import GuidedConfig
from preprocess import color
from preprocess.dataset import Shards
from tests.helpers import WORKING_SIZE, FakeServing, TrainSettings, encode, photo
from tests.test_web import browser  # noqa: F401  (the headless Chromium fixture)

TINY_GUIDED = GuidedConfig(base_width=4, global_layers=1)
HINTS = [Hint(5, 4, "#d02020"), Hint(50, 30, "#2040c0")]


def tiny_guided_generator(seed: int = 0):
    """The tiny guided network, untrained, with weights large enough that hints visibly steer it."""
    generator = models.build("guided", TINY_GUIDED)["generator"]
    rng = np.random.default_rng(seed)
    for weight in generator.weights:
        if weight.path.endswith("kernel"):
            fan_in = np.prod(weight.shape[:-1])
            weight.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), weight.shape).astype(np.float32))
    return generator


@pytest.fixture(scope="module")
def guided(tmp_path_factory) -> tuple[Path, object]:
    """(exports/guided/1 of a tiny untrained run, its generator)."""
    folder = tmp_path_factory.mktemp("guided")
    generator = tiny_guided_generator()
    models.write_run_config(folder / "run", "guided", TINY_GUIDED, TrainSettings())
    tf.train.Checkpoint(generator=generator).save(str(folder / "run" / models.BEST_DIR / "ckpt"))
    assert export_cli.main([f"--run={folder / 'run'}", f"--out={folder / 'exports'}"]) == 0
    return folder / "exports" / "guided" / "1", generator


@pytest.fixture(scope="module")
def colorizer(guided) -> Colorizer:
    """The guided export loaded once: loading traces its five signatures, seconds each."""
    return Colorizer(guided[0], precision="exported")  # as TF Serving and the signatures run it


def reference_photo() -> np.ndarray:
    """uint8 RGB [30, 40, 3]: warm on the left, cool on the right."""
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = [200, 90, 40]
    rgb[:, 20:] = [40, 120, 190]
    return rgb


def by_hand(generator, rgb: np.ndarray, hints: list[Hint], reference: np.ndarray | None) -> np.ndarray:
    """The guided colorization written out plainly, in NumPy where it can be: hints painted
    square by square, the reference's histogram counted with preprocess.color.ab_histogram."""
    height, width = rgb.shape[:2]
    h, w = savedmodel.working_shape(height, width, WORKING_SIZE, 8).numpy()
    small = tf.clip_by_value(tf.image.resize(rgb[None], [h, w], antialias=True) / 255.0, 0.0, 1.0)
    gray, _ = color.rgb_to_model(small)
    local = np.zeros((1, h, w, 3), np.float32)
    for hint in hints:
        row, column = int((hint.y + 0.5) * h / height), int((hint.x + 0.5) * w / width)
        ab = color.rgb_to_lab(np.array(hint.rgb, np.uint8)).numpy()[1:] / color.AB_SCALE
        half = (savedmodel.HINT_PATCH - 1) // 2
        rows = slice(max(row - half, 0), row - half + savedmodel.HINT_PATCH)
        columns = slice(max(column - half, 0), column - half + savedmodel.HINT_PATCH)
        local[0, rows, columns] = [*ab, 1.0]
    global_hint = np.zeros((1, len(color.ab_bins()) + 2), np.float32)
    if reference is not None:
        rh, rw = savedmodel.working_shape(*reference.shape[:2], guidance.REFERENCE_SIDE, 1).numpy()
        ab = color.rgb_to_lab(tf.clip_by_value(tf.image.resize(reference, [rh, rw], antialias=True) / 255.0, 0, 1))
        ab = ab.numpy()[..., 1:]
        counts = color.ab_histogram(ab)
        global_hint[0] = [*(counts / counts.sum()), np.hypot(ab[..., 0], ab[..., 1]).mean() / color.AB_SCALE, 1.0]
    fake = generator([gray, tf.constant(local), tf.constant(global_hint)], training=False)
    full_gray, _ = color.rgb_to_model(rgb[None])
    return color.model_to_rgb(full_gray, tf.image.resize(fake, [height, width])).numpy()[0]


# ---------------------------------------------------------------------------------------
# The export


def test_the_guided_signatures_match_the_model_by_hand_within_one_gray_level(guided):
    export_dir, generator = guided
    loaded = tf.saved_model.load(str(export_dir))
    rgb = photo(40, 60, seed=3)
    reference = reference_photo()
    for hints, ref in [(HINTS, None), ([], reference), (HINTS, reference), (HINTS[:1], None)]:
        encoded = guidance.png_bytes(ref) if ref is not None else b""
        expected = by_hand(generator, rgb, hints, ref)
        got = loaded.signatures[savedmodel.COLORIZE_GUIDED](
            image=tf.constant(rgb[None]), working_size=tf.constant(WORKING_SIZE), **guidance_feed(hints, encoded)
        )["rgb"].numpy()[0]
        assert np.abs(got.astype(int) - expected).max() <= 1, (hints, ref is not None)
        png = loaded.signatures[savedmodel.COLORIZE_GUIDED_IMAGE](
            image_bytes=tf.constant([encode(rgb)]), **guidance_feed(hints, encoded)
        )["png_bytes"].numpy()[0]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), got)


def test_empty_hints_give_exactly_the_automatic_signatures_result(guided):
    export_dir, _ = guided
    loaded = tf.saved_model.load(str(export_dir))
    rgb = np.stack([photo(40, 60, seed=1), photo(40, 60, seed=2)])
    automatic = loaded.signatures["colorize_at_size"](image=tf.constant(rgb), working_size=tf.constant(WORKING_SIZE))
    empty = loaded.signatures[savedmodel.COLORIZE_GUIDED](image=tf.constant(rgb), working_size=tf.constant(WORKING_SIZE),
                                                          **guidance_feed([], b"", 2))  # fmt: skip
    np.testing.assert_array_equal(empty["rgb"].numpy(), automatic["rgb"].numpy())
    pngs = [encode(rgb[0])]
    automatic_png = loaded.signatures["colorize_image"](image_bytes=tf.constant(pngs))["png_bytes"].numpy()
    guided_png = loaded.signatures[savedmodel.COLORIZE_GUIDED_IMAGE](image_bytes=tf.constant(pngs),
                                                                     **guidance_feed([], b""))["png_bytes"].numpy()  # fmt: skip
    assert automatic_png[0] == guided_png[0]
    # and the hints do steer: the photo's colours move, most near the hints
    hinted = loaded.signatures[savedmodel.COLORIZE_GUIDED](image=tf.constant(rgb), working_size=tf.constant(WORKING_SIZE),
                                                           **guidance_feed(HINTS, b"", 2))["rgb"].numpy()  # fmt: skip
    assert np.abs(hinted.astype(int) - automatic["rgb"].numpy()).mean() > 0.5


def test_bad_hints_and_gray_references_are_refused_by_the_graph(guided):
    export_dir, _ = guided
    signature = tf.saved_model.load(str(export_dir)).signatures[savedmodel.COLORIZE_GUIDED_IMAGE]
    data = tf.constant([encode(photo(40, 60))])
    gray = guidance.png_bytes(np.full((20, 20, 3), 90, np.uint8))
    for hints, reference, message in [
        ([Hint(60, 0, "#ffffff")], b"", r"hint at x=60, y=0 is outside the photo \(60 x 40 pixels\)"),
        ([Hint(1, 1, "#ffff")], b"", "hint colour #ffff is not #rrggbb"),
        ([], gray, r"the reference photo is gray \(mean chroma 0"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            signature(image_bytes=data, **guidance_feed(hints, reference))


def test_the_export_says_it_takes_hints_and_automatic_exports_keep_their_signatures(guided, colorizer, exported):
    export_dir, _ = guided
    info = json.loads((export_dir / INFO_FILE).read_text())
    assert info["hints"] is True and info["model"] == "guided"
    assert info["signatures"][savedmodel.COLORIZE_GUIDED_IMAGE] == ["image_bytes", "hint_y", "hint_x", "hint_colors",
                                                                    "reference_bytes"]  # fmt: skip
    assert info["signatures"][savedmodel.COLORIZE_GUIDED] == ["image", "working_size", "hint_y", "hint_x",
                                                              "hint_colors", "reference_bytes"]  # fmt: skip
    plain = json.loads((exported / INFO_FILE).read_text())
    assert plain["hints"] is False and set(plain["signatures"]) == {"serving_default", "colorize_image",
                                                                     "colorize_at_size"}  # fmt: skip
    assert set(tf.saved_model.load(str(exported)).signatures) == set(plain["signatures"])
    assert not Colorizer(exported).takes_hints and colorizer.takes_hints


def test_tf_serving_rest_requests_with_hints_as_the_readme_sends_them(guided, colorizer, exported):
    export_dir, _ = guided
    server = FakeServing(export_dir, "guided")
    try:
        client = ServingClient(server.url)
        assert client.takes_hints()
        rgb = photo(40, 60, seed=5)
        reference = guidance.png_bytes(reference_photo())
        np.testing.assert_array_equal(client.colorize(rgb, hints=HINTS, reference=reference),
                                      colorizer.colorize(rgb, hints=HINTS, reference=reference))  # fmt: skip
        # The README's request: plain JSON, empty lists and an empty reference for "none".
        request = {"signature_name": "colorize_guided_image", "instances": [{
            "image_bytes": {"b64": base64.b64encode(encode(rgb)).decode()},
            "hint_y": [], "hint_x": [], "hint_colors": [], "reference_bytes": {"b64": ""}}]}  # fmt: skip
        answer = client.predict(request)["predictions"][0]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["b64"])))),
                                      colorizer.colorize(rgb))  # fmt: skip
    finally:
        server.shutdown()
    plain = FakeServing(exported, "regression")
    try:
        assert not ServingClient(plain.url).takes_hints()
    finally:
        plain.shutdown()


# ---------------------------------------------------------------------------------------
# colorize


def write_hints(path: Path, hints: list[Hint], spelling: str = "colour") -> Path:
    path.write_text(json.dumps([{"x": hint.x, "y": hint.y, spelling: hint.colour} for hint in hints]))
    return path


def test_colorize_with_hints_and_a_reference(guided, colorizer, tmp_path, capsys):
    export_dir, _ = guided
    rgb = photo(40, 60, seed=6)
    Image.fromarray(rgb).save(tmp_path / "old.png")
    Image.fromarray(reference_photo()).save(tmp_path / "reference.jpg", quality=95)
    hints = write_hints(tmp_path / "hints.json", HINTS, spelling="color")
    out = tmp_path / "out"
    assert colorize.main(["--model", str(export_dir), "--precision=exported", "--output", str(out), "--hints",
                          str(hints), "--reference", str(tmp_path / "reference.jpg"), str(tmp_path / "old.png")]) == 0  # fmt: skip
    reference = guidance.png_bytes(guidance.read_reference(tmp_path / "reference.jpg"))
    expected = colorizer.colorize(rgb, hints=HINTS, reference=reference)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "old.png")), expected)
    assert not np.array_equal(expected, colorizer.colorize(rgb))
    assert "colorized 1 of 1 photos" in capsys.readouterr().err


def test_colorize_refuses_unusable_hints_and_references_in_one_line(guided, exported, tmp_path, capsys):
    export_dir, _ = guided
    Image.fromarray(photo(40, 60)).save(tmp_path / "old.png")
    Image.fromarray(np.full((30, 30, 3), 100, np.uint8)).save(tmp_path / "gray.jpg")
    Image.fromarray(reference_photo()).save(tmp_path / "reference.png")

    def run(*args: str, model: Path = export_dir) -> tuple[int, str]:
        code = colorize.main(["--model", str(model), "--output", str(tmp_path / "out"), *args, str(tmp_path / "old.png")])
        return code, capsys.readouterr().err

    outside = write_hints(tmp_path / "outside.json", [Hint(3, 3, "#ffffff"), Hint(60, 10, "#ffffff")])
    code, err = run("--hints", str(outside))
    assert code == 1 and f"{outside}: hint 2 at x=60, y=10 is outside the photo (60 x 40 pixels" in err
    (tmp_path / "red.json").write_text(json.dumps([{"x": 1, "y": 1, "colour": "red"}]))
    code, err = run("--hints", str(tmp_path / "red.json"))
    assert code == 2 and f"colorize: {tmp_path / 'red.json'}: hint 1: colour 'red' is not #rrggbb" in err
    code, err = run("--reference", str(tmp_path / "gray.jpg"))
    assert code == 2 and f"colorize: {tmp_path / 'gray.jpg'}: the reference photo is gray" in err
    code, err = run("--reference", str(tmp_path / "missing.jpg"))
    assert code == 2 and "missing.jpg: cannot read" in err
    code, err = run("--reference", str(tmp_path / "reference.png"), model=exported)
    assert code == 2 and "regression v1 (regression) takes no --hints or --reference" in err and "MODEL=guided" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert "Traceback" not in err


def test_colorize_a_folder_of_frames_with_hints_carried_to_every_frame(guided, colorizer, tmp_path, capsys):
    export_dir, _ = guided
    frames = [photo(24, 36, seed=index) for index in range(5)]
    (tmp_path / "reel").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "reel" / f"{index:03d}.png")
    hints = [Hint(2, 3, "#20a040")]
    write_hints(tmp_path / "hints.json", hints)
    Image.fromarray(reference_photo()).save(tmp_path / "reference.png")
    out = tmp_path / "out"
    assert colorize.main(["--model", str(export_dir), "--precision=exported", "--output", str(out), "--sequence",
                          "--hints", str(tmp_path / "hints.json"), "--reference", str(tmp_path / "reference.png"),
                          "--format=png", str(tmp_path / "reel")]) == 0  # fmt: skip
    assert sorted(path.name for path in (out / "reel").iterdir()) == [f"{index:03d}.png" for index in range(5)]
    reference = guidance.png_bytes(guidance.read_reference(tmp_path / "reference.png"))
    carried = steady.Steadier(steady.DEFAULT_STRENGTH)  # sequences carry colours by default (test_sequence_steady)
    for index, frame in enumerate(frames):  # each frame colorized with the same hints and reference, then carried
        alone = colorizer.colorize(frame, hints=hints, reference=reference)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "reel" / f"{index:03d}.png")), carried(frame, alone))
    assert "5 frames into" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["reel"]  # no temporary folder left
    # --sequence takes folders only
    assert colorize.main(["--model", str(export_dir), "--precision=exported", "--output", str(out), "--sequence",
                          str(tmp_path / "reference.png")]) == 2  # fmt: skip
    assert "--sequence takes folders of frames or videos" in capsys.readouterr().err


def test_colorize_a_video_into_an_mp4_at_its_frame_rate(guided, colorizer, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg", reason="the optional extra `video` is not installed")
    export_dir, _ = guided
    with sequence.VideoOut(tmp_path / "clip.mp4", 10.0) as video:
        for index in range(4):
            video.write(photo(32, 48, seed=index))
    Image.fromarray(reference_photo()).save(tmp_path / "reference.png")
    out = tmp_path / "out"
    assert colorize.main(["--model", str(export_dir), "--precision=exported", "--output", str(out), "--reference",
                          str(tmp_path / "reference.png"), str(tmp_path / "clip.mp4")]) == 0  # fmt: skip
    assert sorted(path.name for path in out.iterdir()) == ["clip.mp4"]
    written = sequence.read_sequence(out / "clip.mp4")
    source = [frame for _, frame in sequence.read_sequence(tmp_path / "clip.mp4").frames()]
    colour = [frame for _, frame in written.frames()]
    assert written.fps == 10.0 and len(colour) == 4 and colour[0].shape == (32, 48, 3)
    reference = guidance.png_bytes(guidance.read_reference(tmp_path / "reference.png"))
    expected = colorizer.colorize(source[0], reference=reference)
    assert np.abs(colour[0].astype(int) - expected).mean() < 6  # through H.264 once more
    assert "4 frames into" in capsys.readouterr().err


def test_stability_command_compares_guided_with_each_frame_alone(guided, colorizer, tmp_path, capsys):
    export_dir, _ = guided
    (tmp_path / "reel").mkdir()
    # two shots of two frames each (a cut in the middle), each frame with its own film grain,
    # so that the colours flicker on still pixels and carrying them has something to steady
    rng = np.random.default_rng(0)
    shots = [photo(24, 32, seed=0)] * 2 + [photo(24, 32, seed=1)] * 2
    frames = [np.clip(shot + rng.normal(0, 2, shot.shape[:2])[..., None], 0, 255).round().astype(np.uint8)
              for shot in shots]  # fmt: skip
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "reel" / f"{index}.png")
    Image.fromarray(reference_photo()).save(tmp_path / "reference.png")
    write_hints(tmp_path / "hints.json", HINTS[:1])
    scores = tmp_path / "scores.json"
    assert stability.main(["--model", str(export_dir), "--precision=exported", "--reference",
                           str(tmp_path / "reference.png"), "--hints",
                           str(tmp_path / "hints.json"), f"--json={scores}", str(tmp_path / "reel")]) == 0  # fmt: skip
    result = json.loads(scores.read_text())[str(tmp_path / "reel")]
    reference = guidance.png_bytes(guidance.read_reference(tmp_path / "reference.png"))
    # still pixels: those whose source value did not change (judged on the source frame's L, for all)
    alone, guided_score, carried_score = (stability.Stability(stability.SOURCE_STILL_LIGHTNESS) for _ in range(3))
    carried = steady.Steadier(steady.DEFAULT_STRENGTH)
    for frame in frames:
        lightness = color.rgb_to_lab(frame).numpy()[..., 0]
        alone.add(colorizer.colorize(frame), lightness)
        guided_frame = colorizer.colorize(frame, hints=HINTS[:1], reference=reference)
        guided_score.add(guided_frame, lightness)
        carried_score.add(carried(frame, guided_frame), lightness)
    assert result["automatic"]["score"] == pytest.approx(alone.score)
    assert result["guided"]["score"] == pytest.approx(guided_score.score)
    assert result["guided_steady"]["score"] == pytest.approx(carried_score.score)
    assert result["guided_steady"]["score"] < result["guided"]["score"]  # frames 0-1 and 2-3 are still
    assert result["automatic"]["frames"] == 4 and result["steadier"] == pytest.approx(alone.score / guided_score.score)
    assert result["steadier_carried"] == pytest.approx(alone.score / carried_score.score)
    printed = capsys.readouterr().out
    assert "each frame alone" in printed and "guided, carried" in printed
    with pytest.raises(SystemExit) as stopped:  # guided needs something to follow
        stability.main(["--model", str(export_dir), str(tmp_path / "reel")])
    assert stopped.value.code == 2 and "--model needs --reference and/or --hints" in capsys.readouterr().err


def test_the_hint_curve_of_an_export_is_what_its_signature_gives_a_user(guided, colorizer, tiny_shards, tmp_path):
    export_dir, _ = guided
    common = [f"--data={tiny_shards}", "--split=val", "--limit=4", "--points=0,3", f"--out={tmp_path}"]
    assert hints_eval.main([f"--model={export_dir}", "--precision=exported", *common, "--name=export"]) == 0
    run = export_dir.parents[2] / "run"
    assert hints_eval.main([f"--run={run}", "--checkpoint=best", "--patch=3", *common, "--name=run"]) == 0
    by_export = json.loads((tmp_path / "export" / "hints.json").read_text())
    by_run = json.loads((tmp_path / "run" / "hints.json").read_text())
    assert by_export["patch"] == savedmodel.HINT_PATCH and by_export["label"] == "guided v1"

    shards = Shards(tiny_shards)
    ids, _ = hints_eval.split_labels(shards, "val")
    truth = hints_eval.split_tiles(shards, "val", hints_eval.evaluated_indices(len(ids), 4))
    automatic = colorizer.colorize_batch(truth, size=truth.shape[1])
    assert by_export["psnr"]["none"]["0"] == pytest.approx(np.mean([psnr(t, o) for t, o in zip(truth, automatic)]))
    # three hints: a pixel at the centre of each of the run's 3 px squares, with the truth's
    # mean colour over the square; the photo itself as the reference
    guided_outputs = []
    for index, tile in enumerate(truth):
        corners = hints.sample_patches(tf.constant([0, index], tf.int64), 1, *tile.shape[:2], 3, (3,))[0][0].numpy()
        mean_colours = [np.round(tile[y:y + 3, x:x + 3].reshape(-1, 3).mean(0)).astype(int) for y, x in corners]
        tile_hints = [Hint(x + 1, y + 1, "#%02x%02x%02x" % tuple(rgb)) for (y, x), rgb in zip(corners, mean_colours)]
        guided_outputs.append(colorizer.colorize(tile, size=tile.shape[0], hints=tile_hints,
                                                 reference=guidance.png_bytes(tile)))  # fmt: skip
    expected = np.mean([psnr(t, o) for t, o in zip(truth, guided_outputs)])
    assert by_export["psnr"]["own"]["3"] == pytest.approx(expected)
    # the run and its export measure the same curve: hints in 8-bit colours are all that differ
    for name in ("none", "own"):
        for count in ("0", "3"):
            assert by_export["psnr"][name][count] == pytest.approx(by_run["psnr"][name][count], abs=0.1)


def test_the_hint_curve_of_an_export_sends_no_reference_for_a_gray_photo_and_counts_it(colorizer):
    measure = hints_eval.ExportHints(colorizer)
    gray_photo = np.repeat(photo(16, 16, seed=2)[..., :1], 3, axis=-1)
    references = measure.global_hint(np.stack([reference_photo()[:16, 12:28], gray_photo]))
    assert references[0] == guidance.png_bytes(reference_photo()[:16, 12:28]) and references[1] == b""
    assert measure.gray_references == 1
    corners, sides = hints_eval.hint_patches(range(2), 16, 16, 2, savedmodel.HINT_PATCH)
    output = measure(np.stack([reference_photo()[:16, 12:28], gray_photo]), corners, sides, 2, references)
    assert output.shape == (2, 16, 16, 3) and output.dtype == np.uint8  # the export took both


def test_the_hint_curve_of_an_export_refuses_automatic_exports_and_other_patches(guided, exported, tiny_shards,
                                                                                 capsys):  # fmt: skip
    assert hints_eval.main([f"--model={exported}", f"--data={tiny_shards}"]) == 2
    assert "takes no hints" in capsys.readouterr().err
    assert hints_eval.main([f"--model={guided[0]}", f"--data={tiny_shards}", "--patch=1"]) == 2
    assert f"a square of {savedmodel.HINT_PATCH} px" in capsys.readouterr().err
    assert hints_eval.main([f"--model={guided[0].parent}", "--version=7", f"--data={tiny_shards}"]) == 2
    assert "no version 7" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The web page


def guide(client, token_url: str, hints: list[Hint], reference: tuple[bytes, str] | None = None, clear: bool = False):
    data = {"hints": json.dumps([hint._asdict() for hint in hints])}
    if reference:
        data["reference"] = (io.BytesIO(reference[0]), reference[1])
    if clear:
        data["clear_reference"] = "1"
    return client.post(f"{token_url}/guide", data=data, content_type="multipart/form-data")


def upload_photo(client, rgb: np.ndarray) -> tuple[str, str]:
    answer = client.post("/colorize", data={"photo": (io.BytesIO(encode(rgb)), "old.png")},
                         content_type="multipart/form-data")  # fmt: skip
    assert answer.status_code == 303
    return answer.location, client.get(answer.location).get_data(as_text=True)


def download(client, page_or_url: str) -> np.ndarray:
    url = page_or_url if page_or_url.startswith("/") else re.search(r'id="download" href="([^"]+)"', page_or_url)[1]
    return np.asarray(Image.open(io.BytesIO(client.get(url).data)).convert("RGB"))


@pytest.mark.parametrize("through", ["export", "tf_serving"])
def test_the_page_colorizes_again_with_hints_and_a_reference(guided, colorizer, tmp_path, through):
    export_dir, _ = guided
    server = FakeServing(export_dir, "guided") if through == "tf_serving" else None
    try:
        colorize_fn = ServingClient(server.url).colorize if server else colorizer.colorize
        client = create_app(colorize_fn, "guided v1", [], tmp_path / "answers.sqlite", guided=True).test_client()
        rgb = photo(40, 60, seed=2)
        location, page = upload_photo(client, rgb)
        assert 'id="hint-colour"' in page and 'type="color"' in page and 'id="reference"' in page
        np.testing.assert_array_equal(download(client, page), colorizer.colorize(rgb))

        answer = guide(client, location, HINTS)
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        assert body["version"] == 1 and body["hints"] == [hint._asdict() for hint in HINTS] and body["reference"] is None
        np.testing.assert_array_equal(download(client, body["download"]), colorizer.colorize(rgb, hints=HINTS))
        preview = np.asarray(Image.open(io.BytesIO(client.get(body["colorized"]).data)))
        np.testing.assert_array_equal(preview, colorizer.colorize(rgb, hints=HINTS))  # small: the preview is full size

        body = guide(client, location, HINTS[:1], (encode(reference_photo()), "sunset.png")).get_json()
        reference = guidance.png_bytes(guidance.check_reference(reference_photo(), "sunset.png"))
        np.testing.assert_array_equal(download(client, body["download"]),
                                      colorizer.colorize(rgb, hints=HINTS[:1], reference=reference))  # fmt: skip
        assert client.get(body["reference"]).status_code == 200
        body = guide(client, location, HINTS[1:]).get_json()  # the reference stays until removed
        np.testing.assert_array_equal(download(client, body["download"]),
                                      colorizer.colorize(rgb, hints=HINTS[1:], reference=reference))  # fmt: skip
        body = guide(client, location, [], clear=True).get_json()  # nothing left: the automatic colours
        assert body["reference"] is None and body["version"] == 4
        np.testing.assert_array_equal(download(client, body["download"]), colorizer.colorize(rgb))
    finally:
        if server:
            server.shutdown()


def test_the_page_refuses_bad_hints_and_references_with_the_reason(colorizer, tmp_path):
    client = create_app(colorizer.colorize, "guided v1", [], tmp_path / "a.sqlite", guided=True).test_client()
    location, _ = upload_photo(client, photo(40, 60))
    for hints, reference, message in [
        ([Hint(60, 1, "#ffffff")], None, "hints: hint 1 at x=60, y=1 is outside the photo (60 x 40 pixels"),
        ([Hint(1, 1, "#fff")], None, "hints: hint 1: colour '#fff' is not #rrggbb"),
        ([], (encode(np.full((20, 20, 3), 128, np.uint8)), "gray.png"), "gray.png: the reference photo is gray"),
        ([], (b"not a photo", "notes.txt"), "notes.txt: not an image"),
    ]:
        answer = guide(client, location, hints, reference)
        assert answer.status_code == 400 and message in answer.get_json()["error"], answer.get_json()
    assert client.post(f"{location}/guide", data={"hints": "[{"}).status_code == 400
    plain = create_app(colorizer.colorize, "plain v1", [], tmp_path / "b.sqlite").test_client()
    location, page = upload_photo(plain, photo(40, 60))
    assert 'id="hint-colour"' not in page
    assert guide(plain, location, HINTS).status_code == 400


def test_hints_placed_by_clicks_in_headless_chromium(browser, colorizer, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(colorizer.colorize, colorizer.label, [], tmp_path / "answers.sqlite", guided=True)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rgb = photo(60, 80, seed=8)
        gray = np.repeat(rgb[..., 1:2], 3, -1)
        Image.fromarray(rgb[..., 1]).save(tmp_path / "upload.png")
        Image.fromarray(reference_photo()).save(tmp_path / "reference.png")
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.find_element(By.ID, "photo").send_keys(str(tmp_path / "upload.png"))
        browser.find_element(By.ID, "submit").click()
        shown = WebDriverWait(browser, 60).until(lambda _: browser.find_element(By.ID, "gray"))
        WebDriverWait(browser, 30).until(lambda _: browser.execute_script("return arguments[0].complete", shown))
        status = browser.find_element(By.ID, "guide-status")

        def version(number: int) -> None:
            WebDriverWait(browser, 60).until(lambda _: status.get_attribute("data-version") == str(number))

        def result() -> np.ndarray:
            with urllib.request.urlopen(browser.find_element(By.ID, "download").get_attribute("href")) as answer:
                return np.asarray(Image.open(io.BytesIO(answer.read())).convert("RGB"))

        # the next hint's colour, as a person picks it (a colour input's value cannot be typed)
        browser.execute_script("arguments[0].value = '#2040c0'", browser.find_element(By.ID, "hint-colour"))
        box = browser.execute_script("const b = arguments[0].getBoundingClientRect(); return [b.width, b.height]", shown)
        # a click at 3/4 of the width and 1/4 of the height of the displayed photo (offsets from its centre):
        # about photo pixel (60, 15), as the page maps the displayed size to the photo's
        ActionChains(browser).move_to_element_with_offset(shown, int(box[0] / 4), -int(box[1] / 4)).click().perform()
        version(1)
        x, y = map(int, re.search(r"at x (\d+), y (\d+)", browser.find_element(By.ID, "hints").text).groups())
        assert abs(x - 60) <= 1 and abs(y - 15) <= 1
        np.testing.assert_array_equal(result(), colorizer.colorize(gray, hints=[Hint(x, y, "#2040c0")]))

        # change the hint's colour in its list entry
        entry = browser.find_element(By.CSS_SELECTOR, "#hints .hint-colour")
        browser.execute_script("arguments[0].value = '#e0a020'; arguments[0].dispatchEvent(new Event('change'))", entry)
        version(2)
        np.testing.assert_array_equal(result(), colorizer.colorize(gray, hints=[Hint(x, y, "#e0a020")]))

        browser.find_element(By.ID, "reference").send_keys(str(tmp_path / "reference.png"))
        version(3)
        reference = guidance.png_bytes(guidance.check_reference(reference_photo(), "reference.png"))
        np.testing.assert_array_equal(result(), colorizer.colorize(gray, hints=[Hint(x, y, "#e0a020")],
                                                                   reference=reference))  # fmt: skip

        browser.find_element(By.CSS_SELECTOR, "#hints .remove-hint").click()
        version(4)
        browser.find_element(By.ID, "clear-reference").click()
        version(5)
        assert browser.find_elements(By.CSS_SELECTOR, "#hints li") == []
        np.testing.assert_array_equal(result(), colorizer.colorize(gray))
        colorized = browser.find_element(By.ID, "colorized")
        WebDriverWait(browser, 30).until(lambda _: browser.execute_script("return arguments[0].complete", colorized))
        assert browser.execute_script("return arguments[0].naturalWidth", colorized) == 80
    finally:
        server.shutdown()
