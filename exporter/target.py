"""Where an export may write, and how it lands there without ever destroying what is not its own.

Rules (`dartrt export -o OUT`):
- OUT may be new, an empty folder, or (with ``force``) an existing dartrt package; anything else (a
  file, a folder with other content, the checkpoint being exported) is refused, with or without force,
  so an export can never delete a user's files;
- one export per OUT at a time: a lock on OUT's resolved path (a small file in the system's temp
  folder, so nothing is added next to the user's package), held from the first check to the final
  rename, so the loser of two concurrent exports fails with one line instead of silently replacing the
  winner's package; the target is checked again just before the rename as well;
- the package is built in a hidden sibling (`.OUT.tmp-*`) and renamed into place at the end; temp and
  old-copy folders of OUT left by a killed export are removed by the next export of OUT (they cannot be
  a live export's: that one would hold the lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import exclusive_lock
from dartrt.runtime.manifest import is_package


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_target(out: Path, force: bool, source: Path | None = None) -> None:
    """Refuse ``out`` unless it is new, empty, or (with ``force``) a dartrt package; and never the
    ``source`` checkpoint folder, a folder inside it, or a folder that contains it."""
    resolved = out.resolve()
    if source is not None and source.is_dir():
        src = source.resolve()
        if _is_within(resolved, src) or _is_within(src, resolved):
            raise DartrtError(f"cannot export into {out}: it is (or holds) the checkpoint being exported, {source}; "
                              "choose another folder")
    if not out.exists() and not out.is_symlink():
        if out.parent.exists() and not out.parent.is_dir():
            raise DartrtError(f"cannot export to {out}: {out.parent} is a file, not a folder")
        return
    if not out.is_dir():
        raise DartrtError(f"cannot export to {out}: it exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not is_package(out):
        raise DartrtError(f"{out} is not empty and is not a dartrt package; export never replaces other files "
                          "(choose a new or empty folder)")
    if not force:
        raise DartrtError(f"{out} already holds a package (--force replaces that package)")


def lock_path(out: Path) -> Path:
    """The lock file of export target ``out``: one per resolved path, in the temp folder."""
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "dartrt-locks" / f"export-{key}.lock"


def _remove_leftovers(out: Path) -> None:
    """Temp and old-copy folders of ``out`` from an export that was killed (the caller holds the lock)."""
    for prefix in (f".{out.name}.tmp-", f".{out.name}.old-"):
        for stale in out.parent.glob(f"{prefix}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(out: Path, force: bool, source: Path | None = None) -> Iterator[Path]:
    """Lock ``out``, check it, and yield a fresh hidden sibling to build the package in; on a normal exit
    the sibling replaces ``out`` (re-checked under the lock), on any exception (SIGINT, SIGTERM, an
    error) it is removed and ``out`` is left as it was."""
    out = Path(out)
    check_target(out, force, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path(out), f"the export target {out}"):
        _remove_leftovers(out)
        check_target(out, force, source)  # another process may have written it before we got the lock
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp.chmod(0o755)
        try:
            yield tmp
            _publish(tmp, out, force, source)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _publish(tmp: Path, out: Path, force: bool, source: Path | None) -> None:
    check_target(out, force, source)
    if out.exists() and any(out.iterdir()):  # a package, and force was given
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists():
            out.rmdir()  # empty
        tmp.rename(out)
