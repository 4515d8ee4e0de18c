"""``quasar`` command line (Fire). Thin: every command lives with the package it drives,
and those modules import heavy libraries (torch, onnxruntime) only inside functions."""
from __future__ import annotations

import sys


def _commands() -> dict:
    from quasar.export.cli import export, models
    from quasar.export.precision import optimize

    commands = {"models": models, "export": export, "optimize": optimize}
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

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        # Fire splits its command line at a lone "-" (stdin for score), converts values
        # ("1.50" -> 1.5) and lets boolean flags swallow the next token; `quasar score`
        # therefore has an argparse parser of its own.
        from quasar.runtime.cli import main as score_main

        sys.exit(score_main(argv[1:]))
    fire.Fire(_commands(), command=argv, name="quasar")


if __name__ == "__main__":
    main()
