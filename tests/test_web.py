"""The web app: upload -> gray | colorized -> download, errors, the "which one is real?"
page and its SQLite answers, forwarding to TF Serving, and a real upload in headless Chromium."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import flask
import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from export.client import ServingClient
from export.inference import Colorizer
from export.web import PREVIEW_SIDE, create_app
from export.web import __main__ as web_cli
from tests.helpers import FakeServing, encode, photo

REPO = Path(__file__).resolve().parents[1]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1200,900"]  # fmt: skip


def reddish(rgb: np.ndarray) -> np.ndarray:
    """A stand-in model for the page logic: warmer and deterministic."""
    rgb = rgb.astype(np.int32)
    return np.stack([rgb[..., 0] // 2 + 128, rgb[..., 1], rgb[..., 2] // 2], -1).astype(np.uint8)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    paths = [tmp_path / "photos" / "a.png", tmp_path / "photos" / "b.jpg"]
    paths[0].parent.mkdir()
    Image.fromarray(photo(40, 60, seed=1)).save(paths[0])
    Image.fromarray(photo(30, 30, seed=2)).save(paths[1])
    return paths


@pytest.fixture
def client(photos, tmp_path) -> flask.testing.FlaskClient:
    app = create_app(
        reddish, "test v1", photos, tmp_path / "answers.sqlite", max_upload_bytes=200_000, max_pixels=100_000
    )
    return app.test_client()


def upload(client: flask.testing.FlaskClient, data: bytes, name: str = "photo.png"):
    return client.post("/colorize", data={"photo": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_upload_shows_gray_and_colour_and_downloads_full_size(client):
    rgb = photo(20, 1200)  # wider than a preview
    answer = upload(client, encode(rgb), "holiday.png")
    assert answer.status_code == 303
    page = client.get(answer.location).get_data(as_text=True)
    gray_src, color_src = (re.search(f'id="{name}" src="([^"]+)"', page)[1] for name in ("gray", "colorized"))
    download = re.search(r'id="download" href="([^"]+)"', page)[1]
    assert "1200 × 20 pixels" in page

    full = client.get(download)
    assert full.headers["Content-Disposition"] == "attachment; filename=holiday-colorized.png"
    np.testing.assert_array_equal(decode(full.data), reddish(rgb))
    gray, colour = decode(client.get(gray_src).data), decode(client.get(color_src).data)
    assert gray.shape == colour.shape == (20 * PREVIEW_SIDE // 1200, PREVIEW_SIDE, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert (colour[..., 0] > colour[..., 2]).mean() > 0.9


def test_uploads_that_are_not_photos_get_a_clear_error(client):
    for data, name, status, message in [
        (b"%PDF-1.4 not a photo", "doc.pdf", 400, "doc.pdf: not an image"),
        (b"", "empty.png", 400, "Choose a photo"),  # browsers send an empty part when nothing is chosen
        (encode(np.zeros((200, 600, 3), np.uint8)), "huge.png", 413, "too large"),  # 120,000 pixels > 100,000
        (np.random.default_rng(0).bytes(300_000), "big.png", 413, "larger than the limit of 0.2 MB"),
    ]:
        answer = upload(client, data, name if data else "")
        assert answer.status_code == status, name
        assert message in answer.get_data(as_text=True), name
    assert client.get("/result/nonexistent").status_code == 404


def test_which_one_is_real_records_answers_and_the_fooling_rate(client, photos, tmp_path):
    def new_trial() -> tuple[str, dict[str, np.ndarray]]:
        answer = client.get("/turing")
        assert answer.status_code == 303
        page = client.get(answer.location).get_data(as_text=True)
        assert 'id="choose-left"' in page and 'id="choose-right"' in page
        images = {side: decode(client.get(f"{answer.location}/{side}.png").data) for side in ("left", "right")}
        return answer.location, images

    chosen = []
    for _ in range(6):
        location, images = new_trial()
        real_side = "left" if (reddish(images["left"]) == images["right"]).all() else "right"
        fake_side = {"left": "right", "right": "left"}[real_side]
        assert (reddish(images[real_side]) == images[fake_side]).all()  # a real photo and its colorization
        pick = fake_side if len(chosen) < 2 else real_side  # fooled twice, then right four times
        assert client.post(location, data={"choice": pick}).status_code == 303
        chosen.append(pick)
        page = client.get(location).get_data(as_text=True)
        assert ("Fooled!" in page) == (pick == fake_side)

    assert client.post(location, data={"choice": fake_side}).status_code == 303  # a second answer is ignored
    page = client.get(location).get_data(as_text=True)
    assert "<b>33%</b>" in page and "2 of 6 answers" in page
    with sqlite3.connect(tmp_path / "answers.sqlite") as db:
        rows = db.execute("SELECT model, photo, chosen != real_side FROM trials ORDER BY shown_at").fetchall()
    assert [row[2] for row in rows] == [1, 1, 0, 0, 0, 0]
    assert {row[0] for row in rows} == {"test v1"} and {row[1] for row in rows} <= {"a.png", "b.jpg"}
    assert client.post(location, data={"choice": "middle"}).status_code == 400
    assert client.get("/turing/unknown").status_code == 404


def test_forwarding_to_tf_serving_gives_the_exports_colours(exported, tmp_path):
    server = FakeServing(exported, "regression")
    try:
        serving = ServingClient(server.url)
        app = create_app(serving.colorize, serving.label, [], tmp_path / "answers.sqlite")
        client = app.test_client()
        rgb = photo(24, 32, seed=4)
        page = client.get(upload(client, encode(rgb)).location).get_data(as_text=True)
        full = client.get(re.search(r'id="download" href="([^"]+)"', page)[1]).data
        np.testing.assert_array_equal(decode(full), Colorizer(exported, precision="exported").colorize(rgb))
        assert server.requests and "model regression" in page
    finally:
        server.shutdown()


def test_make_serve_command_line(exported, monkeypatch, tmp_path):
    started = {}

    class Server:  # waitress's server, as far as main uses it
        effective_port = 8123

        def run(self) -> None:
            started["ran"] = True

        def close(self) -> None:
            started["closed"] = True

    monkeypatch.setattr(web_cli, "make_server", lambda app, *args: started.update(args=args) or Server())
    assert web_cli.main(["--model", str(exported.parent), "--port", "8123"]) == 0
    assert started == {"args": ("127.0.0.1", 8123, 20 * 2**20, 4, 64), "ran": True, "closed": True}
    assert (exported.parent / "turing.sqlite").exists()  # answers beside the export's versions
    assert web_cli.main(["--model", str(tmp_path / "nothing")]) == 2


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("headless Chromium test skipped: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver) to run it")  # fmt: skip
    webdriver = pytest.importorskip("selenium.webdriver", reason="headless Chromium test skipped: pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_upload_in_headless_chromium(browser, exported, tmp_path):  # browser first: a skip skips the export too
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    colorizer = Colorizer(exported)
    app = create_app(colorizer.colorize, colorizer.label, [tmp_path / "real.png"], tmp_path / "answers.sqlite")
    Image.fromarray(photo(48, 64, seed=9)).save(tmp_path / "real.png")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        rgb = photo(90, 120, seed=8)
        Image.fromarray(rgb[..., 1]).save(tmp_path / "upload.png")  # a gray photo, as a person would send
        browser.get(base + "/")
        browser.find_element(By.ID, "photo").send_keys(str(tmp_path / "upload.png"))
        browser.find_element(By.ID, "submit").click()
        shown = WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located((By.ID, "colorized")))
        WebDriverWait(browser, 30).until(lambda _: browser.execute_script("return arguments[0].complete", shown))
        assert browser.execute_script("return arguments[0].naturalWidth", shown) == 120  # decoded by the browser
        href = browser.find_element(By.ID, "download").get_attribute("href")
        with urllib.request.urlopen(href) as answer:
            colorized = decode(answer.read())
        expected = colorizer.colorize(np.repeat(rgb[..., 1:2], 3, -1))
        assert colorized.shape == (90, 120, 3)
        assert np.abs(colorized.astype(int) - expected).max() <= 1
        assert np.abs(colorized[..., 0].astype(int) - colorized[..., 2]).mean() > 5  # colour, not gray

        browser.find_element(By.LINK_TEXT, "Which one is real?").click()
        browser.find_element(By.ID, "choose-left").click()
        verdict = WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "verdict")))
        assert "real" in verdict.text
        assert "of 1 answers" in browser.find_element(By.ID, "fooling-rate").text
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------
# make serve: the production server under load


def post_photo(port: int, data: bytes, name: str) -> tuple[int, str | None]:
    """POST /colorize as a browser's form sends it; (status, Location)."""
    boundary = secrets.token_hex(12)
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/colorize", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmRSS", "VmHWM"))}


def test_make_serve_colorizes_concurrent_uploads_refuses_bad_ones_and_stays_bounded(exported, photos, tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-m", "export.web", f"--model={exported}", "--port=0", f"--photos={photos[0].parent}",
         f"--db={tmp_path / 'answers.sqlite'}", "--max-upload-mb=0.5", "--max-pixels=100000", "--threads=4"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stderr), daemon=True).start()  # the pipe never fills
    try:
        deadline = time.monotonic() + 120
        while not any("serving" in line for line in log) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", "".join(log))[1])

        def colorized(index: int) -> np.ndarray:
            rgb = photo(48, 64, seed=index)
            status, location = post_photo(port, encode(rgb), f"photo-{index}.png")
            assert status == 303, (index, status)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{location}/download", timeout=60) as answer:
                result = decode(answer.read())
            assert result.shape == rgb.shape
            return result

        assert np.ptp(colorized(0).astype(int), axis=-1).max() > 0  # warm: the model is loaded and traced
        warm = memory_kib(server.pid)

        bad = {
            "notes.png": (b"not an image at all", 400),  # not an image
            "huge.png": (encode(photo(400, 300)), 413),  # 120,000 pixels: over --max-pixels
            "big.bmp": (np.random.default_rng(0).bytes(700_000), 413),  # over --max-upload-mb
            "": (encode(photo(8, 8)), 400),  # no file chosen
        }
        with concurrent.futures.ThreadPoolExecutor(len(bad) + 20) as pool:
            good = [pool.submit(colorized, index) for index in range(1, 21)]
            refused = {name: pool.submit(post_photo, port, data, name) for name, (data, _) in bad.items()}
            results = [future.result(timeout=600) for future in good]
            statuses = {name: future.result(timeout=600)[0] for name, future in refused.items()}
        assert len(results) == 20 and all(np.ptp(result.astype(int), axis=-1).max() > 0 for result in results)
        assert statuses == {name: status for name, (_, status) in bad.items()}
        assert server.poll() is None, "".join(log)
        after = memory_kib(server.pid)
        # 20 uploads of 3,000 pixels, colorized one at a time: the peak hardly moves
        assert after["VmHWM"] - warm["VmHWM"] < 300 * 1024, (warm, after)
        assert "Traceback" not in "".join(log)
    finally:
        server.terminate()
        server.wait(timeout=60)
