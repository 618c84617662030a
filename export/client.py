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
Models that take hints (MODEL=guided) also have `colorize_guided_image`:

    {"signature_name": "colorize_guided_image", "instances": [{"image_bytes": {"b64": ...},
      "hint_y": [45], "hint_x": [120], "hint_colors": ["#d02020"], "reference_bytes": {"b64": ...}}]}

with empty lists for no hints and {"b64": ""} for no reference.
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

from export.guidance import Hint

SIGNATURE = "colorize_image"
GUIDED_SIGNATURE = "colorize_guided_image"


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

    def takes_hints(self) -> bool:
        """Whether the served model has the guided signature (asks the server's metadata)."""
        http = urllib.request.Request(f"{self.url}/metadata")
        try:
            with urllib.request.urlopen(http, timeout=self.timeout) as response:
                signatures = json.load(response)["metadata"]["signature_def"]["signature_def"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as error:
            raise ServingError(f"{self.url}/metadata: {getattr(error, 'reason', error)}") from None
        return GUIDED_SIGNATURE in signatures

    def colorize_png(self, data: bytes, temperature: float | None = None, hints: list[Hint] | None = None,
                     reference: bytes | None = None) -> bytes:  # fmt: skip
        """Encoded photo (JPEG, PNG, any mode) -> the colorized photo as PNG bytes, same size.

        `hints` (pixels of the photo, export/guidance.py) and `reference` (an encoded colour
        photo) go to models that take them, through `colorize_guided_image`.
        """
        photo = {"b64": base64.b64encode(data).decode("ascii")}
        instance = photo if temperature is None else {"image_bytes": photo, "temperature": temperature}
        signature = SIGNATURE
        if hints or reference:
            signature = GUIDED_SIGNATURE
            instance = {"image_bytes": photo, "hint_y": [hint.y for hint in hints or []],
                        "hint_x": [hint.x for hint in hints or []], "hint_colors": [hint.colour for hint in hints or []],
                        "reference_bytes": {"b64": base64.b64encode(reference or b"").decode("ascii")}}  # fmt: skip
        answer = self.predict({"signature_name": signature, "instances": [instance]})
        try:
            return base64.b64decode(answer["predictions"][0]["b64"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ServingError(f"{self.url}: unexpected answer {str(answer)[:200]}") from None

    def colorize(self, rgb: np.ndarray, temperature: float | None = None, hints: list[Hint] | None = None,
                 reference: bytes | None = None) -> np.ndarray:  # fmt: skip
        """uint8 RGB [H, W, 3] -> uint8 RGB [H, W, 3], sent as a PNG (lossless, fast to encode)."""
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG", compress_level=1)
        colorized = self.colorize_png(buffer.getvalue(), temperature, hints, reference)
        return np.asarray(Image.open(io.BytesIO(colorized)).convert("RGB"))
