"""``quasar`` command line: the root only assembles the commands of quasar/commands/.

Adding a command: write ``quasar/commands/<name>.py`` defining ``COMMAND = Command(...)``
(name, summary, ``target="module:function"`` doing the work, one Option per parameter,
shared ones from quasar/commands/options.py; see quasar/commands/base.py), then add one
line to ``COMMANDS`` below. Parsing, help, the check for a missing extra, exit codes and a
closed stdout are handled for every command alike.
"""
from __future__ import annotations

import importlib
import sys
import textwrap
from typing import Optional, Sequence

COMMANDS = {  # name -> module defining COMMAND, in the order `quasar --help` lists them
    "score": "quasar.commands.score",
    "models": "quasar.commands.models",
    "export": "quasar.commands.export",
    "push": "quasar.commands.push",
    "anchors": "quasar.commands.anchors",
    "evaluate": "quasar.commands.evaluate",
    "reproduce": "quasar.commands.reproduce",
    "bench": "quasar.commands.bench",
    "report": "quasar.commands.report",
    "optimize": "quasar.commands.optimize",
    "serve": "quasar.commands.serve",
}


def command(name: str):
    """The Command object of ``quasar NAME``."""
    return importlib.import_module(COMMANDS[name]).COMMAND


def root_help() -> str:
    from quasar import __version__
    from quasar.commands.base import EXIT_CODES_HELP, _width

    width = _width()
    rows = [f"  {name:<11}{command(name).summary}" for name in COMMANDS]
    return "\n".join([
        "usage: quasar COMMAND [options]      (quasar COMMAND --help: its options)",
        "",
        f"QUASAR {__version__}: no-reference image quality and aesthetics scores "
        "(arXiv:2403.06866).",
        "",
        "commands:",
        *rows,
        "",
        "Options are spelled --kebab-case (--batch-size; --batch_size is accepted too).",
        textwrap.fill(EXIT_CODES_HELP, width),
    ]) + "\n"


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``quasar`` on command-line tokens (default: sys.argv[1:]); returns the exit code."""
    from quasar.commands.base import EXIT_USAGE, _print, run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        return _print(root_help()) if argv else _usage_error(root_help(), None)
    if argv[0] in ("--version", "-V"):
        from quasar import __version__

        return _print(f"quasar {__version__}\n")
    if argv[0] == "help":  # quasar help [COMMAND]
        if len(argv) == 1:
            return _print(root_help())
        argv = [argv[1], "--help"]
    name = argv[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return _usage_error(f"quasar: error: unknown command {name!r}{hint}; commands: "
                            f"{', '.join(COMMANDS)}\n", EXIT_USAGE)
    return run_command(command(name), argv[1:])


def _usage_error(text: str, code: Optional[int]) -> int:
    sys.stderr.write(text)
    return 2 if code is None else code


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``quasar``: exits with the command's code (returns on success)."""
    code = run(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
