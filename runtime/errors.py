"""The one exception type users see.

Every check on user input (class ids, settings, files) raises `DartrtError` with a single-line message
that names the problem. The CLI turns it into one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations


class DartrtError(Exception):
    """A problem with the user's input or files, explained in one line."""

    def __init__(self, message: str) -> None:
        # Collapse any newline so the message is always exactly one line.
        super().__init__(" ".join(str(message).split()))
