"""Terminal output helpers shared by every command (standard library only)."""
from __future__ import annotations

import os
import sys


def silence_stdout() -> None:
    """The reader of stdout went away (``| head``): send further output, including the
    interpreter's final flush, to /dev/null instead of a BrokenPipeError traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
