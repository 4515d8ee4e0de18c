"""``quasar`` command line (Fire). Thin: every command lives with the package it drives,
and those modules import heavy libraries (torch, onnxruntime) only inside functions."""
from __future__ import annotations

import sys


def _commands() -> dict:
    from quasar.export.cli import export, models

    commands = {"models": models, "export": export}
    try:
        from quasar.runtime.cli import score
        commands["score"] = score
    except ImportError:  # pragma: no cover - during development only
        pass
    try:
        from quasar.evaluate.cli import anchors, evaluate, reproduce
        commands.update(anchors=anchors, evaluate=evaluate, reproduce=reproduce)
    except ImportError:  # pragma: no cover - during development only
        pass
    try:
        from quasar.evaluate.speed import bench
        commands["bench"] = bench
    except ImportError:  # pragma: no cover - during development only
        pass
    return commands


def main(argv=None) -> None:
    import fire

    fire.Fire(_commands(), command=argv if argv is not None else sys.argv[1:], name="quasar")


if __name__ == "__main__":
    main()
