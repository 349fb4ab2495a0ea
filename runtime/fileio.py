"""File writing and hashing, the one home for both: every part of dartrt that writes an artifact uses it.

Writes are atomic: a hidden temp file in the target's folder, then a rename over the target, so a reader
(or a crashed build) never sees half a file, and the hidden name keeps the manifest from listing it.

Hashes are sha256, read in 1 MiB chunks (multi-GB external data never sits in memory), and remembered
per (path, size, mtime, inode): a command that re-reads a manifest after writing part of a package
re-hashes only the files that changed, not every weight file again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a hidden sibling of ``path``, then rename it into place (mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; packages and models are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda p: Path(p).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data, **dump_kw) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, **dump_kw) + "\n")


def atomic_write_npz(path: str | Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """``np.savez`` (or ``savez_compressed``) of ``arrays`` to ``path``, atomically. Written through a closed
    file object: given the temp path as a name, numpy would append ".npz" to it and the rename would miss."""
    save = np.savez_compressed if compressed else np.savez

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            save(f, **arrays)

    atomic_write(path, write)


def read_json_object(path: str | Path, missing: str = "is missing", damaged: str = "") -> dict:
    """A JSON file whose top level is an object, or one `DartrtError` line: ``missing`` / ``damaged`` end
    the message for an absent or unparsable file (what to do about it)."""
    from .errors import DartrtError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DartrtError(f"{path} {missing}") from None
    except IsADirectoryError:
        raise DartrtError(f"{path} is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DartrtError(f"{path} is not valid JSON ({exc}){'; ' + damaged if damaged else ''}") from None
    if not isinstance(data, dict):
        raise DartrtError(f"{path}: the top level is not a JSON object{'; ' + damaged if damaged else ''}")
    return data


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` by way of a hidden sibling of ``dst`` (safe across disks)."""
    atomic_write(dst, lambda p: shutil.copyfile(src, p))


_CHUNK = 1 << 20
_DIGESTS: dict[str, tuple[tuple[int, int, int], str]] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file; a file unchanged since this process last hashed it is not read again."""
    path = Path(path)
    st = path.stat()
    key, signature = str(path.resolve()), (st.st_size, st.st_mtime_ns, st.st_ino)
    known = _DIGESTS.get(key)
    if known is not None and known[0] == signature:
        return known[1]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    _DIGESTS[key] = (signature, digest.hexdigest())
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on the file ``path`` (created if needed, holding our pid) for
    the ``with`` block; a second holder gets one `DartrtError` line naming ``what`` and the first pid.

    The lock is the kernel's (``flock``), so it dies with its process: a killed run never leaves a stale
    lock, only a small file that the next run reuses. The file is not removed afterwards, because
    removing it would let a third process lock a new file while a second still holds the old one."""
    import fcntl

    from .errors import DartrtError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DartrtError(f"{what} is in use by another dartrt process (pid {holder}, lock {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
