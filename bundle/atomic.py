"""Atomic file and directory writes: the one helper every writer in QUASAR uses.

A file is written to a unique temporary name in the same directory (``.<name>.<random>.tmp``,
so two processes writing side by side never collide), flushed and fsync'ed, then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows); the directory is fsync'ed so the
rename survives a power cut. On any error the temporary file is removed and the target is
left as it was. A directory is built the same way: a unique temporary sibling, renamed into
place at the end (:func:`atomic_dir`), or swapped for an existing one
(:func:`replace_directory`).

Every temporary name carries the writer's process id (``.<name>.<pid>-<random>.<tag>``), so
what a killed writer left behind is recognisable: :func:`stale_siblings` lists the temporaries
of a target whose writer is gone, and the bundle layer removes them (or restores a bundle that
a kill caught in the middle of a swap) at its next use.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import IO, Iterator, List, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: PathLike) -> None:
    """fsync a directory (makes a rename in it durable); a no-op where unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: PathLike, tag: str = "tmp") -> Path:
    """A unique hidden sibling of ``path``: ``.<name>.<pid>-<random>.<tag>``."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.{tag}")


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, encoding: str = "utf-8",
                 newline: Union[str, None] = None, fsync: bool = True,
                 perm: Union[int, None] = None) -> Iterator[IO]:
    """``with atomic_write(p, "w") as f: f.write(...)`` - all of it at ``p``, or nothing.

    The file gets ordinary permissions (0666 minus the umask) unless ``perm`` is given.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode, got {mode!r}")
    target = Path(path)
    tmp = temp_name(target)
    kw = {} if "b" in mode else {"encoding": encoding, "newline": newline}
    f = open(tmp, mode, **kw)
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, perm if perm is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes, **kw) -> Path:
    with atomic_write(path, "wb", **kw) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, **kw) -> Path:
    with atomic_write(path, "w", **kw) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """For writers that want a *path* (safetensors, pyarrow, ONNX): yields a unique temp
    path beside ``path``; when the block ends without error it is fsync'ed and renamed over
    ``path``; otherwise removed."""
    target = Path(path)
    tmp = temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{target}: nothing was written")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def _set_tree_permissions(root: Path) -> None:
    """mkdtemp makes 0700 dirs: give a new tree ordinary permissions (umask applied)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def temp_dir(path: PathLike, tag: str = "tmp") -> Path:
    """A new, empty, private (0700) directory named :func:`temp_name` ``(path, tag)``."""
    for _ in range(100):
        d = temp_name(path, tag)
        try:
            os.mkdir(d, 0o700)
            return d
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: cannot create a temporary directory beside it")


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    kernel, C library or file system cannot (then the caller renames twice)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: PathLike, target: PathLike) -> None:
    """Put directory ``new`` at ``target`` (which may exist), then remove the old one.

    Where the system can, the two are exchanged in one atomic step, so ``target`` exists at
    every instant (a reader never finds it missing, a kill leaves the new one in place and
    the old one under ``new``'s temporary name). Elsewhere the old one is renamed aside to
    ``.<name>.<pid>-<random>.old`` and ``new`` renamed in (the old one restored if that
    fails); a kill between the two renames leaves only the ``.old`` copy, which
    :func:`quasar.bundle.io.recover_bundle` puts back."""
    new, target = Path(new), Path(target)
    if not os.path.lexists(target):
        os.rename(new, target)
        fsync_dir(target.parent)
        return
    if target.is_dir() and not target.is_symlink() and _exchange(new, target):
        old = new
    else:
        old = temp_name(target, "old")
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
    fsync_dir(target.parent)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def temp_siblings(target: PathLike, tags: Sequence[str]) -> List[Tuple[Path, int, str]]:
    """``(path, pid, tag)`` of the temporaries of ``target`` (:func:`temp_name` form, one of
    ``tags``); empty when the folder cannot be listed. Only exact
    ``.<name>.<pid>-<random>.<tag>`` names count, so the temporaries of another target whose
    name starts the same (``b`` and ``b.x``) are never taken."""
    target = Path(target)
    pat = re.compile(r"^\." + re.escape(target.name) + r"\.(\d+)-[A-Za-z0-9_]+\.("
                     + "|".join(map(re.escape, tags)) + r")$")
    out = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    for name in names:
        m = pat.match(name)
        if m:
            out.append((target.parent / name, int(m.group(1)), m.group(2)))
    return sorted(out)


def remove_path(path: PathLike) -> None:
    """Remove a file or a directory tree (not following a symlink); errors ignored."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


@contextlib.contextmanager
def atomic_dir(target: PathLike, *, overwrite: bool = False,
               exists_error=FileExistsError) -> Iterator[Path]:
    """Build a directory in a unique temporary sibling and move it to ``target`` when the
    block succeeds (replacing an existing one only with ``overwrite``); on failure nothing
    is left behind and an existing ``target`` is untouched."""
    target = Path(target).expanduser().absolute()
    if os.path.lexists(target) and not overwrite:
        raise exists_error(f"{target} already exists. Pass --overwrite to replace it or "
                           "choose another --out.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target)
    try:
        yield tmp
        _set_tree_permissions(tmp)
        if os.path.lexists(target) and not overwrite:
            raise exists_error(f"{target} appeared while it was being written. Pass "
                               "--overwrite to replace it or choose another --out.")
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy(src: PathLike, dst: PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def cleanup_on_signals(signals: Sequence[str] = ("SIGTERM", "SIGHUP")) -> Iterator[None]:
    """Turn ``SIGTERM`` / ``SIGHUP`` into ``KeyboardInterrupt`` for the block, so that the
    ``finally`` clauses removing temporaries run when a long writer is terminated (the
    default action kills Python without them). A no-op outside the main thread; SIGKILL
    cannot be caught: what it leaves is recognised by name (:func:`temp_siblings`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")

    old = {}
    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None:
            old[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
