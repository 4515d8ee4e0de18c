"""One lock discipline for every writer of QUASAR: ``quasar score`` (local and Ray),
``quasar anchors`` and ``quasar optimize`` (bundle edits), ``quasar report``. A writer holds an
exclusive, non-blocking ``fcntl.flock`` on ``<target>.lock`` for its whole run; a second
writer is refused at once with a message that names the target and the holder's process id.

A bundle is locked through :func:`bundle_lock`: the lock file is ``<bundle>.lock`` *beside*
the bundle directory (its resolved path, so a symlink to the bundle takes the same lock), never
inside it: the bundle's checksum verification refuses unlisted files, and an edit swaps the
whole directory. The lock is re-entrant within a process (``quasar anchors`` takes it at the
start of the command, :func:`quasar.bundle.edit_bundle` takes it again for the swap).
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from quasar.errors import BundleError, OutputLockedError
from quasar.text import safe_text

LOCK_SUFFIX = ".lock"


class OutputLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<path>.lock``, held for the whole
    run (reading / resuming / writing). A second writer is refused at once
    (:class:`OutputLockedError`, naming the file and the other process id).

    The lock file is removed at release, while still locked; a process that opened the old
    file just before it was unlinked would lock an orphan, so after locking the inode of
    the open file is compared with the one at the path, and the attempt repeated when they
    differ."""

    def __init__(self, path: str, *, what: str = "",
                 hint: str = "wait for it to finish, or choose another --out") -> None:
        self.target = str(path)
        self.path = self.target + LOCK_SUFFIX
        self.what = what or self.target
        self.hint = hint
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        import fcntl

        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = ""
                try:
                    pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                except OSError:
                    pass
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    who = f"process {pid}" if pid.isdigit() else "another process"
                    raise OutputLockedError(
                        f"{safe_text(self.what)} is being written by {who} (lock "
                        f"{safe_text(self.path)}); {self.hint}") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # unlinked by the previous holder between open and flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return self
        raise OutputLockedError(f"{safe_text(self.path)}: cannot take the lock (it keeps "
                                "being replaced)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------- bundles
_HELD: Dict[str, Tuple[OutputLock, int]] = {}
_HELD_GUARD = threading.Lock()


def bundle_lock_path(bundle_dir: Union[str, os.PathLike]) -> Path:
    """``<resolved bundle dir>.lock``: beside the bundle, the same for every way of naming it."""
    return Path(str(Path(bundle_dir).expanduser().resolve()) + LOCK_SUFFIX)


@contextlib.contextmanager
def bundle_lock(bundle_dir: Union[str, os.PathLike, None]) -> Iterator[None]:
    """Hold the writers' lock of a bundle (``<bundle>.lock`` beside it) for the block.

    A second writer (``quasar anchors``, ``quasar optimize``, in another process) is refused
    at once with :class:`OutputLockedError` naming the holder's process id. Re-entrant in one
    process. Where the bundle's folder does not exist, nothing is locked (the load that
    follows says what is wrong, and no folder is created for a mistyped path); ``None`` (no
    bundle named yet) locks nothing."""
    if bundle_dir is None:
        yield
        return
    target = str(Path(bundle_dir).expanduser().resolve())
    if not os.path.isdir(os.path.dirname(target)):
        yield
        return
    with _HELD_GUARD:
        held = _HELD.get(target)
        if held is not None:
            _HELD[target] = (held[0], held[1] + 1)
        else:
            lock = OutputLock(target, what=f"bundle {target}",
                              hint="wait for that command to finish (one `quasar anchors` / "
                                   "`quasar optimize` edits a bundle at a time)")
            try:
                lock.acquire()
            except OutputLockedError:
                raise
            except OSError as exc:
                raise BundleError(
                    f"{safe_text(target)}: cannot take the bundle's lock {safe_text(lock.path)} "
                    f"({exc.strerror or exc}); changing a bundle needs a writable folder around "
                    "it - copy the bundle to one") from exc
            _HELD[target] = (lock, 1)
    try:
        yield
    finally:
        with _HELD_GUARD:
            lock, n = _HELD[target]
            if n > 1:
                _HELD[target] = (lock, n - 1)
            else:
                del _HELD[target]
                lock.release()


def bundle_lock_held(bundle_dir: Union[str, os.PathLike]) -> bool:
    """Whether this process holds the lock of ``bundle_dir``."""
    with _HELD_GUARD:
        return str(Path(bundle_dir).expanduser().resolve()) in _HELD
