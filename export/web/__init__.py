"""The web app of `make serve`: upload a photo, see gray | colorized, download it; and the
"which one is real?" page that measures how often people are fooled.

    GET  /                          upload form
    POST /colorize                  field `photo`: any image up to the upload limit -> 303 to its result
    GET  /result/<id>               gray | colorized side by side, with a download link
    GET  /result/<id>/gray.png, /result/<id>/color.png    the previews (at most PREVIEW_SIDE px)
    GET  /result/<id>/download      the colorized photo at full resolution
    GET  /turing                    a new pair -> 303 to it
    GET  /turing/<id>               the pair and the question, or (once answered) the verdict
    POST /turing/<id>               field `choice`: left | right, the side picked as real
    GET  /turing/<id>/<side>.png    one image of the pair
For a model that takes hints (MODEL=guided) the result page also places colour hints and
takes a reference photo:
    POST /result/<id>/guide         fields `hints` (JSON list of {"x", "y", "colour"} in the photo's
                                    pixels), `reference` (a photo file, optional), `clear_reference`
                                    -> JSON {"colorized": preview URL, "download": URL, "version": n}
                                    or {"error": why} with 400 (bad hints or reference) or 502
    GET  /result/<id>/reference.png the reference in use
Errors are pages with their status: 400 for a non-image, 413 for an upload over the
limits, 404 for an unknown result, 502 when the TF Serving server fails. The app colorizes
through any function uint8 RGB -> uint8 RGB: a loaded export (export/inference.py) or a
TF Serving server (export/client.py). `make_server` puts it on waitress, a production WSGI
server, with every queue bounded.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import flask
import numpy as np
from PIL import Image
from werkzeug.exceptions import HTTPException

from export.client import ServingError
from export.guidance import GuidanceError, check_reference, outside, parse_hints
from export.guidance import png_bytes as reference_png
from export.images import UnusableImage, load_photo
from export.web.turing import SIDES, Answers, Pairs, Trial

PREVIEW_SIDE = 1024  # the page shows previews; the download is full size
# Results are kept in memory, newest first, up to this many bytes of PNG (and at least the
# newest): by count, a burst of uploads would drop results before their pages were shown.
KEPT_BYTES = 256 * 2**20


class Result(NamedTuple):
    name: str  # the uploaded file's name
    size: tuple[int, int]  # width, height
    gray_preview: bytes  # PNG
    color_preview: bytes  # PNG
    color: bytes  # PNG at full resolution
    photo: bytes = b""  # the upload as PNG at full resolution, kept to colorize again with hints (guided models)
    reference: bytes = b""  # PNG of the reference photo in use, shrunk (export/guidance.py); b"" for none
    version: int = 0  # counts the colorizations with hints, so that browsers fetch the new images


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W, 3] -> the same, shrunk (never enlarged) to fit `side` x `side`."""
    thumbnail = Image.fromarray(image)
    thumbnail.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(thumbnail)


def png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] or gray [H, W] -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # fast: the page waits for it
    return buffer.getvalue()


def gray_of(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 gray [H, W]: the gray the model sees, the photo's CIE L
    as an sRGB gray level (Pillow's "L" weighs the gamma-encoded channels instead)."""
    import tensorflow as tf

    from preprocess import color

    gray, _ = color.rgb_to_model(rgb)
    neutral = color.model_to_rgb(gray, tf.zeros_like(tf.concat([gray, gray], axis=-1)))  # a = b = 0
    return neutral[..., 1].numpy()  # the channels of a neutral colour differ by float rounding at most


def megabytes(size: int) -> str:
    """20971520 -> "20", 200000 -> "0.2"."""
    return f"{size / 2**20:.1f}".removesuffix(".0")


def _result_bytes(result: Result) -> int:
    return len(result.gray_preview) + len(result.color_preview) + len(result.color) + len(result.photo)


def make_server(app: flask.Flask, host: str, port: int, max_upload_bytes: int, threads: int = 4,
                connections: int = 64):  # fmt: skip
    """`app` on waitress at host:port (0: any free port; see `.effective_port`); `.run()` serves.

    What stays bounded under load: `threads` requests are in the app at once (and one of
    them colorizes: the app queues colorizations, each uses every core), at most
    `connections` are accepted, more wait in the kernel's listen queue of the same length
    and are refused beyond it. Request bodies over 512 KiB are spooled to temporary files
    by waitress, not held in memory; a body larger than the upload limit plus room for the
    form's headers is refused (413) before it is read.
    """
    import waitress

    return waitress.create_server(app, host=host, port=port, threads=threads, connection_limit=connections,
                                  backlog=connections, max_request_body_size=max_upload_bytes + 2**20,
                                  clear_untrusted_proxy_headers=True)  # fmt: skip


def create_app(colorize: Callable[..., np.ndarray], label: str, photos: list[Path], db_path: Path,
               max_upload_bytes: int = 20 * 2**20, max_pixels: int = 50_000_000, guided: bool = False) -> flask.Flask:  # fmt: skip
    """The app. `colorize`: uint8 RGB [H, W, 3] -> uint8 RGB [H, W, 3]; `label` names the model
    on the pages and in the answers; `photos`: the real photos of the Turing test. With
    `guided` (a model that takes hints), `colorize(rgb, hints=..., reference=...)` also takes
    hints (export/guidance.py) and an encoded reference photo, and result pages can place them."""
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    busy = threading.Lock()

    def one_at_a_time(rgb: np.ndarray, **guidance: object) -> np.ndarray:
        # A colorization uses every core and, for a big photo, much memory: requests queue.
        with busy:
            return colorize(rgb, **guidance) if guidance else colorize(rgb)

    results: OrderedDict[str, Result] = OrderedDict()
    results_lock = threading.Lock()
    answers = Answers(db_path)
    pairs = Pairs(photos, one_at_a_time, PREVIEW_SIDE, max_pixels)

    def page(template: str, status: int = 200, **values: object) -> tuple[str, int]:
        fooled, answered = answers.fooling_rate(label)
        return flask.render_template(template, label=label, fooled=fooled, answered=answered, guided=guided,
                                     max_upload=megabytes(max_upload_bytes), **values), status  # fmt: skip

    @app.errorhandler(HTTPException)
    def error(exception: HTTPException) -> tuple[str, int]:
        messages = {413: f"The upload is larger than the limit of {megabytes(max_upload_bytes)} MB."}
        message = messages.get(exception.code, exception.description)
        return page("error.html", exception.code or 500, title=exception.name, message=message)

    @app.get("/")
    def index() -> tuple[str, int]:
        return page("index.html")

    @app.post("/colorize")
    def upload() -> flask.Response | tuple[str, int]:
        upload = flask.request.files.get("photo")
        if upload is None or not upload.filename:
            return page("error.html", 400, title="No photo", message="Choose a photo to upload first.")
        try:
            rgb = load_photo(upload.stream, max_pixels, name=upload.filename)
        except UnusableImage as unusable:
            status = 413 if unusable.reason.startswith("too large") else 400
            return page("error.html", status, title="Not a photo we can read",
                        message=f"{upload.filename}: {unusable.reason}.")  # fmt: skip
        try:
            colorized = one_at_a_time(rgb)
        except ServingError as failed:
            return page("error.html", 502, title="The model server failed", message=str(failed))
        previews = png(gray_of(shrink(rgb, PREVIEW_SIDE))), png(shrink(colorized, PREVIEW_SIDE))
        result = Result(Path(upload.filename).name, (rgb.shape[1], rgb.shape[0]), *previews, png(colorized),
                        photo=png(rgb) if guided else b"")  # fmt: skip
        token = secrets.token_urlsafe(12)
        keep(token, result)
        return flask.redirect(flask.url_for("result", token=token), 303)

    def keep(token: str, result: Result) -> None:
        with results_lock:
            results[token] = result
            results.move_to_end(token)
            while len(results) > 1 and sum(map(_result_bytes, results.values())) > KEPT_BYTES:
                results.popitem(last=False)

    def guide_error(status: int, message: str) -> tuple[flask.Response, int]:
        return flask.jsonify(error=message), status

    @app.post("/result/<token>/guide")
    def guide(token: str) -> flask.Response | tuple[flask.Response, int]:
        found = find(token)
        if not guided:
            return guide_error(400, f"{label} takes no hints or reference photo")
        width, height = found.size
        try:
            hints = parse_hints(json.loads(flask.request.form.get("hints") or "[]"), "hints")
        except ValueError as error:  # not JSON
            return guide_error(400, f"hints: not JSON ({error})")
        except GuidanceError as error:
            return guide_error(400, str(error))
        why = outside(hints, height, width)
        if why:
            return guide_error(400, f"hints: {why}")
        reference = b"" if flask.request.form.get("clear_reference") else found.reference
        upload = flask.request.files.get("reference")
        if upload is not None and upload.filename:
            try:
                reference = reference_png(check_reference(load_photo(upload.stream, max_pixels, name=upload.filename),
                                                          upload.filename))  # fmt: skip
            except UnusableImage as unusable:
                return guide_error(400, f"{upload.filename}: {unusable.reason}")
            except GuidanceError as error:
                return guide_error(400, str(error))
        rgb = np.asarray(Image.open(io.BytesIO(found.photo)).convert("RGB"))
        try:
            colorized = one_at_a_time(rgb, hints=hints, reference=reference)
        except ServingError as failed:
            return guide_error(502, str(failed))
        result = found._replace(color_preview=png(shrink(colorized, PREVIEW_SIDE)), color=png(colorized),
                                reference=reference, version=found.version + 1)  # fmt: skip
        keep(token, result)
        return flask.jsonify(
            colorized=flask.url_for("preview", token=token, kind="color", v=result.version),
            download=flask.url_for("download", token=token, v=result.version),
            reference=flask.url_for("reference", token=token, v=result.version) if reference else None,
            hints=[hint._asdict() for hint in hints], version=result.version,
        )

    @app.get("/result/<token>/reference.png")
    def reference(token: str) -> flask.Response:
        found = find(token)
        if not found.reference:
            flask.abort(404, "No reference photo is in use.")
        return flask.send_file(io.BytesIO(found.reference), mimetype="image/png")

    def find(token: str) -> Result:
        with results_lock:
            if token not in results:
                flask.abort(404, "This result is no longer kept; upload the photo again.")
            return results[token]

    @app.get("/result/<token>")
    def result(token: str) -> tuple[str, int]:
        return page("result.html", token=token, result=find(token))

    @app.get("/result/<token>/<kind>.png")
    def preview(token: str, kind: str) -> flask.Response:
        found = find(token)
        previews = {"gray": found.gray_preview, "color": found.color_preview}
        if kind not in previews:
            flask.abort(404)
        return flask.send_file(io.BytesIO(previews[kind]), mimetype="image/png")

    @app.get("/result/<token>/download")
    def download(token: str) -> flask.Response:
        found = find(token)
        return flask.send_file(io.BytesIO(found.color), mimetype="image/png", as_attachment=True,
                               download_name=f"{Path(found.name).stem}-colorized.png")  # fmt: skip

    @app.get("/turing")
    def new_trial() -> flask.Response | tuple[str, int]:
        photo = pairs.pick()
        if photo is None:
            return page("error.html", 503, title="No photos", message="None of the test's photos can be read.")
        return flask.redirect(flask.url_for("trial", token=answers.new(label, photo).token), 303)

    def find_trial(token: str) -> Trial:
        trial = answers.get(token)
        if trial is None or trial.photo not in pairs.photos:
            flask.abort(404, "No such pair.")
        return trial

    @app.route("/turing/<token>", methods=["GET", "POST"])
    def trial(token: str) -> flask.Response | tuple[str, int]:
        found = find_trial(token)
        if flask.request.method == "POST":
            choice = flask.request.form.get("choice")
            if choice not in SIDES:
                flask.abort(400, "Pick left or right.")
            answers.answer(token, choice)  # a second answer to the same pair is ignored
            return flask.redirect(flask.url_for("trial", token=token), 303)
        return page("turing.html", trial=found)

    @app.get("/turing/<token>/<side>.png")
    def trial_image(token: str, side: str) -> flask.Response:
        found = find_trial(token)
        if side not in SIDES:
            flask.abort(404)
        real, colorized = pairs.images(found.photo)
        return flask.send_file(io.BytesIO(png(real if side == found.real_side else colorized)), mimetype="image/png")

    return app
