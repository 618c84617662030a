"""A small client of TF Serving's REST API for the `colorize_image` signature.

    client = ServingClient("http://localhost:8501/v1/models/cgan")
    png = client.colorize_png(open("photo.jpg", "rb").read())

It sends what the README's `curl` example does ("Serving with TensorFlow Serving"):

    POST /v1/models/<name>[/versions/<n>]:predict
    {"signature_name": "colorize_image", "instances": [{"b64": "<base64 photo>"}]}
    -> {"predictions": [{"b64": "<base64 PNG>"}]}

TF Serving decodes {"b64": ...} for every string input, and encodes a string output the
same way only when its name ends in "_bytes" (hence `png_bytes`). Models with a
temperature take it per photo: {"instances": [{"image_bytes": {"b64": ...}, "temperature": 0.38}]}.
Standard library only, so that a client machine needs neither TensorFlow nor requests.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

SIGNATURE = "colorize_image"


class ServingError(Exception):
    """TF Serving answered with an error, or could not be reached."""


class ServingClient:
    """`url`: the model's REST address, http://HOST:8501/v1/models/NAME[/versions/N]."""

    def __init__(self, url: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    @property
    def label(self) -> str:
        """The model as the URL names it (`cgan`, `cgan v3`), for pages and reports."""
        path = self.url.split("/v1/models/", 1)[-1]
        name, _, version = path.partition("/versions/")
        return f"{name} v{version}" if version else name

    def predict(self, request: dict) -> dict:
        """POST `request` to `:predict`; the decoded JSON answer, or ServingError with the server's message."""
        body = json.dumps(request).encode()
        http = urllib.request.Request(f"{self.url}:predict", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(http, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            try:
                message = json.load(error).get("error", error.reason)
            except ValueError:
                message = error.reason
            raise ServingError(f"{self.url}: HTTP {error.code}: {message}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ServingError(f"{self.url}: {getattr(error, 'reason', error)}") from None

    def colorize_png(self, data: bytes, temperature: float | None = None) -> bytes:
        """Encoded photo (JPEG, PNG, any mode) -> the colorized photo as PNG bytes, same size."""
        photo = {"b64": base64.b64encode(data).decode("ascii")}
        instance = photo if temperature is None else {"image_bytes": photo, "temperature": temperature}
        answer = self.predict({"signature_name": SIGNATURE, "instances": [instance]})
        try:
            return base64.b64decode(answer["predictions"][0]["b64"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ServingError(f"{self.url}: unexpected answer {str(answer)[:200]}") from None

    def colorize(self, rgb: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """uint8 RGB [H, W, 3] -> uint8 RGB [H, W, 3], sent as a PNG (lossless, fast to encode)."""
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG", compress_level=1)
        return np.asarray(Image.open(io.BytesIO(self.colorize_png(buffer.getvalue(), temperature))).convert("RGB"))
