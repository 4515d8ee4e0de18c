"""One lock discipline for every writer of QUASAR: ``quasar score`` (local and Ray),
``quasar anchors`` and ``quasar optimize`` (bundle edits), ``quasar report``. A writer holds an
exclusive, non-blocking ``fcntl.flock`` on ``<target>.lock`` for its whole run; a second
writer is refused at once with a message that names the target and the holder's process id.
"""
from __future__ import annotations

import errno
import os
from typing import Any, Optional

from quasar.errors import OutputLockedError
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

    def __init__(self, path: str) -> None:
        self.target = str(path)
        self.path = self.target + LOCK_SUFFIX
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
                        f"{safe_text(self.target)} is being written by {who} (lock "
                        f"{safe_text(self.path)}); wait for it to finish, or choose another "
                        "--out") from None
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
