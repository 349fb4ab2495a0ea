"""A small client for `dartrt serve` (standard library and Pillow only: nothing of Ray or the runtime).

    from dartrt.serve.client import Client
    images = Client("http://127.0.0.1:8000").generate([3, 5], n_per_class=2, seed=7, cfg=1.5)

A refused request raises `ServiceError` with the service's status and one-line message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from PIL import Image

from dartrt.runtime.errors import DartrtError

from .codec import decode_png


class ServiceError(DartrtError):
    """The service answered with an error status (4xx: fix the request; 503: overloaded, retry later)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:300] or "(no message)"


class Client:
    """Talks to one service; every call has a timeout (seconds)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | bytes | None = None, accept: str = "application/json"
                ) -> Answer:
        """One HTTP exchange; error statuses come back as an Answer too (no exception)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Answer(resp.status, resp.read(), resp.headers.get("Content-Type", ""), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return Answer(err.code, err.read(), err.headers.get("Content-Type", ""), dict(err.headers))

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        answer = self.request(method, path, body)
        if answer.status != 200:
            raise ServiceError(answer.status, _message(answer.body))
        return json.loads(answer.body)

    def generate_json(self, class_ids: list[int], **settings) -> dict:
        """The service's JSON answer (images as base64 PNGs, the resolved settings, the batch it shared)."""
        return self._json("POST", "/v1/generate", {"class_ids": list(class_ids), **settings})

    def generate(self, class_ids: list[int], **settings) -> list[Image.Image]:
        """Images for ``class_ids`` (class-major, like `runtime.generate`); settings as in its keywords."""
        return [decode_png(e["png_base64"]) for e in self.generate_json(class_ids, **settings)["images"]]

    def png(self, class_id: int, **settings) -> bytes:
        """One image as PNG bytes (``Accept: image/png``)."""
        answer = self.request("POST", "/v1/generate", {"class_ids": [int(class_id)], **settings}, accept="image/png")
        if answer.status != 200:
            raise ServiceError(answer.status, _message(answer.body))
        return answer.body

    def models(self) -> dict:
        return self._json("GET", "/v1/models")

    def health(self) -> dict:
        return self._json("GET", "/healthz")
