"""The service's refusal: a `DartrtError` that also carries the HTTP status to answer with.

Still a DartrtError, so everything the runtime refuses (a class id out of range, a NaN CFG scale)
reaches the client as the runtime's own one-line message, with 400 unless a status says otherwise.
"""

from __future__ import annotations

from dartrt.runtime.errors import DartrtError

BAD_REQUEST = 400
NOT_ACCEPTABLE = 406
TOO_LARGE = 413
UNAVAILABLE = 503


class ServeError(DartrtError):
    """A request the service refuses; ``status`` says why (a 4xx: the request; 503: the service)."""

    def __init__(self, message: str, status: int = BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = int(status)


def status_of(exc: DartrtError) -> int:
    """The HTTP status for a refused request: the ServeError's own, else 400 (the runtime's checks)."""
    return getattr(exc, "status", BAD_REQUEST)
