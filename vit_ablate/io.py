"""Atomic file writes and folder locks: a reader (or a killed job) never sees a half-written result,
and two processes never write one run or sweep folder at once.

Every file goes to a temporary file in the target's directory (``os.replace`` is atomic only within
one file system) and is then moved over the target: a reader sees the old file or the new one. A write
that fails (disk full, read-only file system) removes its temporary file and raises an ``OSError``
naming the target; a process killed while writing leaves a ``.<name>.*.tmp`` file that
``remove_stale_temporaries`` clears on the folder's next use (under its lock).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, List, Optional

TEMPORARY = re.compile(r"^\..+\.[^.]+\.tmp$")  # what temporary_sibling creates: .<name>.<random>.tmp


def _default_mode() -> int:
    # mkstemp creates files readable by their owner only; results are meant to be shared like any file
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_sibling(path: Path) -> tuple[int, str]:
    """An open temporary file next to ``path`` with the permissions a plain ``open`` would give."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(exc, path) from exc
    os.fchmod(fd, _default_mode())
    return fd, tmp


class StorageError(OSError):
    """A file we meant to write could not be written (disk full, read-only, no permission); the
    message names the file."""


def storage_error(exc: BaseException, path: str | os.PathLike) -> StorageError:
    """``exc`` as a ``StorageError`` naming the file we meant to write (``ENOSPC`` alone names none)."""
    if isinstance(exc, StorageError):
        return exc
    errno = getattr(exc, "errno", None)
    message = f"cannot write {os.fspath(path)}: {getattr(exc, 'strerror', None) or exc}"
    return StorageError(errno, message) if errno else StorageError(message)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    fd, tmp = temporary_sibling(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise storage_error(exc, path) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_none(data: Any, found: Optional[List[str]] = None, where: str = "") -> Any:
    """``data`` with every NaN/inf float replaced by ``None`` (strict JSON has no NaN); the dotted
    paths of the replaced values are appended to ``found``."""
    if isinstance(data, float) and not math.isfinite(data):
        if found is not None:
            found.append(where)
        return None
    if isinstance(data, dict):
        return {k: finite_or_none(v, found, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(v, found, f"{where}[{i}]") for i, v in enumerate(data)]
    return data


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Strict JSON (readable by any JSON parser): a NaN or infinite number is written as ``null``."""
    text = json.dumps(finite_or_none(data), indent=2, sort_keys=True, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def remove_stale_temporaries(folder: str | os.PathLike) -> List[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (not recursive). Call it only
    while holding the folder's ``FolderLock``: then no writer of ours is active there."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and TEMPORARY.match(entry.name):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


# ----------------------------------------------------------------------------------------------- lock
class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock; ``holder`` is its pid as it wrote it."""

    def __init__(self, folder: Path, holder: str):
        self.folder, self.holder = folder, holder
        super().__init__(f"{folder} is in use by another process (pid {holder})")


class FolderLock:
    """An exclusive, non-blocking lock on a folder: ``<folder>/.lock``, holding the owner's pid.

    ``flock`` is released by the kernel when its process dies, so the lock of a killed process is
    taken over by the next one (the file stays behind, stale, until then). ``release`` deletes the
    file; an acquirer that opened the file just before it was deleted notices (its file is no longer
    the one at the path) and tries again, so two processes never both believe they hold the lock.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._handle = None

    def acquire(self) -> "FolderLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise FolderBusy(self.folder, holder) from None
            try:
                current = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # its previous holder deleted it between our open and flock
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def holder(self) -> Optional[str]:
        """The pid in the lock file while another process holds the lock, else None; writes nothing."""
        import fcntl

        try:
            handle = open(self.path)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip() or "unknown"
            return None

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: see the class docstring
        except OSError:
            pass
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
