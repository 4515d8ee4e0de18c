"""The command layer: option definitions, strict parsing, help, exit codes.

Why not let Fire parse: Fire binds what it can, *runs the command*, and only then complains
about the tokens it could not consume (``--sed 1`` exported a whole bundle before
``ERROR: Could not consume arg``); it also converts values (``1.50`` -> 1.5), lets a
boolean flag swallow the next token and splits its command line at a lone ``-``. Here every
command line is parsed completely, against the command's declared options, before the
command's module body or any heavy library is imported; only a clean parse is handed on.

A command is a :class:`Command`: a name, a one-line summary, the dotted path of the function
that does the work (``"quasar.export.cli:export"``), and its options. Defaults come from
that function's signature (one source), descriptions from :class:`Option` objects, most of
them shared (``quasar/commands/options.py``) so that one concept has one name, one short flag
and one description across commands.

Exit codes: the same for every command, defined with the errors in quasar/errors.py
(``EXIT_CODES``); every help page ends with them.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from quasar.console import silence_stdout  # noqa: F401 (re-exported)
from quasar.errors import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED,  # noqa: F401
                           EXIT_USAGE, exit_code_of, exit_codes_help, install_hint)

EXIT_CODES_HELP = exit_codes_help()  # from quasar/errors.py's EXIT_CODES, the one table

# Optional dependency (top-level module) -> the extra that installs it.
EXTRA_OF = {"torch": "export", "torchvision": "export", "open_clip": "export", "timm": "export",
            "onnx": "export", "onnxscript": "export", "scipy": "evaluate",
            "sklearn": "evaluate", "openpyxl": "evaluate", "onnxruntime": "cpu",
            "pyarrow": "parquet", "matplotlib": "report"}


class CommandLineError(Exception):
    """A command line that cannot be parsed; reported with the usage line, exit 2."""


# The runtime comes from the cpu or gpu extra, never from a command's own extra: a command
# that needs onnxruntime and more (optimize: onnx, scipy) names the runtime's extra for it.
RUNTIME_MODULES = ("onnxruntime",)


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class Option:
    """One option (or positional argument) of a command.

    ``name`` is the parameter name of the command function (snake_case); the flag is its
    kebab-case form (``batch_size`` -> ``--batch-size``) and the snake_case spelling is
    accepted silently. ``type`` converts the string (``None``: inferred from the default:
    bool -> a switch, int, float, else str). A switch whose default is True is spelled
    ``--no-<name>``. ``default_text`` describes a ``None`` default in words.

    Ranges are declared here, once, like choices: ``minimum`` / ``maximum`` (inclusive) and
    ``above`` / ``below`` (exclusive bounds, for "a number > 0") are checked when the command line
    is parsed (``--batch-size 0``: "must be at least 1, got 0"; exit 2, nothing run) and
    shown in help. The command bodies receive checked, typed values and do not check again.
    """

    name: str
    help: str
    short: Optional[str] = None
    type: Optional[Callable[[str], Any]] = None
    metavar: Optional[str] = None
    choices: Optional[Tuple[str, ...]] = None
    default_text: Optional[str] = None
    aliases: Tuple[str, ...] = ()   # other accepted long flags (hidden), e.g. "--anchor-set"
    minimum: Optional[float] = None  # inclusive bounds of an integer / number option
    maximum: Optional[float] = None
    above: Optional[float] = None    # exclusive bounds: above=0 means "> 0"
    below: Optional[float] = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} must be the parameter name")
        if not self.help:
            raise ValueError(f"option {self.name!r} needs a description")
        if self.short is not None and (len(self.short) != 2 or not self.short.startswith("-")):
            raise ValueError(f"short flag {self.short!r} of {self.name!r}: use -x")
        if None not in (self.minimum, self.above) or None not in (self.maximum, self.below):
            raise ValueError(f"option {self.name!r}: minimum or above, maximum or below")
        lo = self.minimum if self.minimum is not None else self.above
        hi = self.maximum if self.maximum is not None else self.below
        closed = self.minimum is not None and self.maximum is not None
        if lo is not None and hi is not None and (lo > hi or (lo == hi and not closed)):
            raise ValueError(f"option {self.name!r}: empty range")

    def check_range(self, value):
        """``value`` if it lies in the declared range, else an ``argparse.ArgumentTypeError``
        saying which bound it misses (a message meant for ``quasar CMD: error: --flag ...``)."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if self.minimum is not None and value < self.minimum:
            raise argparse.ArgumentTypeError(f"must be at least {_num(self.minimum)}, "
                                             f"got {_num(value)}")
        if self.above is not None and not value > self.above:
            raise argparse.ArgumentTypeError(f"must be greater than {_num(self.above)}, "
                                             f"got {_num(value)}")
        if self.maximum is not None and value > self.maximum:
            raise argparse.ArgumentTypeError(f"must be at most {_num(self.maximum)}, "
                                             f"got {_num(value)}")
        if self.below is not None and not value < self.below:
            raise argparse.ArgumentTypeError(f"must be less than {_num(self.below)}, "
                                             f"got {_num(value)}")
        return value

    @property
    def range_text(self) -> Optional[str]:
        """The declared range in words, for help ("at least 1", "> 0, at most 1")."""
        parts = []
        if self.minimum is not None:
            parts.append(f"at least {_num(self.minimum)}")
        if self.above is not None:
            parts.append(f"> {_num(self.above)}")
        if self.maximum is not None:
            parts.append(f"at most {_num(self.maximum)}")
        if self.below is not None:
            parts.append(f"< {_num(self.below)}")
        return ", ".join(parts) or None

    def but(self, **changes) -> "Option":
        """A copy with some fields changed (a command-specific description, metavar...)."""
        return dataclasses.replace(self, **changes)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _num(x) -> str:
    """1.0 -> "1", 0.25 -> "0.25" (bounds and values in messages, as the user writes them)."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def opt(name: str, help: str, **kw) -> Option:
    """A command's own option (not shared)."""
    return Option(name, help, **kw)


#: ``-q`` of a command whose function takes no ``quiet`` (the layer quiets it, _quiet_down).
LAYER_QUIET = Option("quiet", "no progress bar, no log messages or library warnings (results "
                     "and errors are still shown)", short="-q")


@dataclass
class _Param:
    """An option bound to a command: the Option plus what the signature says."""

    option: Option
    kind: str               # "positional" | "varargs" | "value" | "switch" | "negswitch"
    default: Any
    required: bool
    layer: bool = False     # handled by the command layer, not passed to the function

    @property
    def name(self) -> str:
        return self.option.name

    @property
    def flag(self) -> str:
        if self.kind == "negswitch":
            return "--no-" + self.name.replace("_", "-")
        return self.option.flag

    @property
    def metavar(self) -> str:
        if self.kind == "positional":
            return self.name.upper()
        return self.option.metavar or self.name.upper()


def _infer_type(default) -> Callable[[str], Any]:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return integer
    if isinstance(default, float):
        return number
    return str


def integer(text: str) -> int:
    """An integer (``1e3`` and ``2.5`` are refused)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def number(text: str) -> float:
    """A number (``nan`` is refused: it compares false with every bound and every value)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def _checked(convert: Callable[[str], Any], option: Option) -> Callable[[str], Any]:
    """``convert`` followed by the option's range check (argparse reports either error)."""
    if (option.minimum, option.maximum, option.above, option.below) == (None,) * 4 and (
            convert is not names):
        return convert

    def typed(text: str):
        value = convert(text)
        if isinstance(value, list):
            bad = [v for v in value if option.choices and v not in option.choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))}; choose "
                                                 f"from {', '.join(option.choices)}")
            return value
        return option.check_range(value)

    typed.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return typed


def lower(text: str) -> str:
    return text.lower()


def names(text: str) -> List[str]:
    """A comma-separated list (``a, b,`` -> ``["a", "b"]``); with ``choices``, each item
    must be one of them."""
    return [item.strip() for item in text.split(",") if item.strip()]


# --------------------------------------------------------------------------- commands

@dataclass
class Command:
    """A ``quasar`` subcommand.

    Args:
        name: the word after ``quasar``.
        summary: one line for ``quasar --help``; the first line of ``quasar NAME --help``.
        target: ``"module:function"`` doing the work; imported only after a clean parse.
            Its parameters are the command's options; their defaults are shown in help.
            It may return an int (the exit code) or a string (printed).
        options: one :class:`Option` per parameter of ``target`` (a test checks both ways).
        description: more help text after the summary.
        examples: command lines shown in help.
        extra: the pip extra the command needs (``"export"``), with ``requires``: the
            modules checked (without importing them) before the command runs.
        user_errors: exception types (besides QuasarError) that mean bad user input:
            printed as ``quasar NAME: error: ...`` with exit 2, no traceback.
        interrupt_hint: printed after ``interrupted`` on Ctrl-C.
        setup: called with the parsed keyword arguments before ``target`` (logging etc.).
    """

    name: str
    summary: str
    target: str
    options: Sequence[Option]
    description: str = ""
    examples: Sequence[str] = ()
    extra: Optional[str] = None
    requires: Sequence[str] = ()
    user_errors: Tuple[type, ...] = ()
    interrupt_hint: str = ""
    _params: Optional[List[_Param]] = field(default=None, repr=False)

    # -- binding the options to the target's signature
    def function(self) -> Callable:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def params(self) -> List[_Param]:
        if self._params is None:
            self._params = self._bind()
        return self._params

    def _bind(self) -> List[_Param]:
        sig = inspect.signature(self.function())
        by_name = {o.name: o for o in self.options}
        if len(by_name) != len(self.options):
            raise ValueError(f"quasar {self.name}: an option is declared twice")
        missing = [n for n in sig.parameters if n not in by_name]
        unused = [n for n in by_name if n not in sig.parameters]
        if missing or unused:
            raise ValueError(f"quasar {self.name}: options and {self.target} disagree: "
                             f"undescribed parameters {missing}, options without a parameter "
                             f"{unused}")
        params = []
        for p in sig.parameters.values():
            o = by_name[p.name]
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                params.append(_Param(o, "varargs", (), False))
            elif p.default is inspect.Parameter.empty:
                params.append(_Param(o, "positional", None, True))
            elif isinstance(p.default, bool) and o.type in (None, bool):
                params.append(_Param(o, "negswitch" if p.default else "switch", p.default, False))
            else:
                params.append(_Param(o, "value", p.default, False))
        if "quiet" not in sig.parameters:  # -q works everywhere (README); see _quiet_down
            params.append(_Param(LAYER_QUIET, "switch", False, False, layer=True))
        return params

    # -- parsing
    def usage(self) -> str:
        parts = [f"quasar {self.name}"]
        for p in self.params():
            if p.kind == "positional":
                parts.append(p.metavar)
            elif p.kind == "varargs":
                parts.append(f"[{p.metavar} ...]")
        return " ".join(parts + ["[options]"])

    def long_flags(self) -> Dict[str, _Param]:
        flags = {}
        for p in self.params():
            if p.kind == "varargs":
                continue
            flags[p.flag] = p
            for a in p.option.aliases:
                flags[a] = p
        return flags

    def _parser(self) -> argparse.ArgumentParser:
        parser = _Parser(prog=f"quasar {self.name}", add_help=False, allow_abbrev=False)
        for p in self.params():
            o = p.option
            if p.kind == "varargs":
                parser.add_argument(p.name, nargs="*", default=[], metavar=p.metavar)
                continue
            flags = [p.flag, *o.aliases] + ([o.short] if o.short else [])
            if p.kind == "positional":  # MODEL or --model MODEL
                parser.add_argument("_pos_" + p.name, nargs="?", default=None,
                                    metavar=p.metavar)
            if p.kind == "switch":
                parser.add_argument(*flags, dest=p.name, action="store_true", default=False)
            elif p.kind == "negswitch":
                parser.add_argument(*flags, dest=p.name, action="store_false", default=True)
            else:
                convert = o.type or _infer_type(p.default)
                parser.add_argument(*flags, dest=p.name, metavar=p.metavar,
                                    default=p.default, type=_checked(convert, o),
                                    choices=None if convert is names else o.choices)
        return parser

    def _normalise(self, argv: Sequence[str]) -> List[str]:
        """``--batch_size`` -> ``--batch-size`` where that is an option (snake_case is
        accepted silently); everything after a lone ``--`` is left alone."""
        flags = self.long_flags()
        out, rest = [], False
        for tok in argv:
            if not rest and tok == "--":
                rest = True
            elif not rest and tok.startswith("--") and "_" in tok:
                head, eq, value = tok.partition("=")
                kebab = head.replace("_", "-")
                if kebab in flags:
                    tok = kebab + eq + value
            out.append(tok)
        return out

    def parse(self, argv: Sequence[str]) -> Dict[str, Any]:
        """Keyword arguments for ``target`` from command-line tokens; raises
        CommandLineError for anything unknown, extra, missing or malformed."""
        argv = self._normalise(argv)
        ns, extra = self._parser().parse_known_intermixed_args(argv)
        if extra:
            raise CommandLineError(self._explain_extra(extra))
        kw = vars(ns)
        for p in self.params():
            if p.kind == "positional":
                pos, named = kw.pop("_pos_" + p.name), kw.get(p.name)
                if pos is not None and named is not None:
                    raise CommandLineError(f"{p.metavar} given twice ({pos!r} and "
                                           f"{p.flag} {named!r})")
                kw[p.name] = pos if pos is not None else named
                if kw[p.name] is None:
                    raise CommandLineError(f"missing {p.metavar}: {p.option.help}")
        return kw

    def _explain_extra(self, extra: List[str]) -> str:
        flags = self.long_flags()
        for tok in extra:
            if tok.startswith("-") and len(tok) > 1 and tok != "--":
                head = tok.split("=", 1)[0]
                return f"unknown option {head}{self._did_you_mean(head, flags)}"
        takes = [p.metavar for p in self.params() if p.kind in ("positional", "varargs")]
        what = f"it takes {' '.join(takes)}" if takes else "it takes no arguments"
        return f"unexpected argument {extra[0]!r} ({what}; options start with --)"

    @staticmethod
    def _did_you_mean(token: str, flags: Dict[str, _Param]) -> str:
        if not token.startswith("--"):
            return ""
        wanted = token.replace("_", "-").lower()
        canonical = {p.flag for p in flags.values()}
        match = difflib.get_close_matches(wanted, sorted(canonical), n=1, cutoff=0.6)
        if not match:  # an alias close to it names the real option
            alias = difflib.get_close_matches(wanted, sorted(flags), n=1, cutoff=0.6)
            match = [flags[alias[0]].flag] if alias else []
        return f" (did you mean {match[0]}?)" if match else ""

    # -- help
    def help(self, width: Optional[int] = None) -> str:
        width = width or _width()
        lines = [f"usage: {self.usage()}", "", textwrap.fill(self.summary, width)]
        if self.description:
            lines += [""] + [textwrap.fill(par, width) for par in
                             textwrap.dedent(self.description).strip().split("\n\n")]
        rows_args, rows_opts = [], []
        for p in self.params():
            o = p.option
            text = o.help.rstrip(".")
            if p.kind in ("positional", "varargs"):
                alt = f" (or {p.flag} {p.metavar})" if p.kind == "positional" else ""
                rows_args.append((p.metavar, text + alt))
                continue
            left = (f"{o.short}, " if o.short else "    ") + p.flag
            if p.kind == "value":
                left += f" {p.metavar}"
                notes = [" | ".join(o.choices)] if o.choices else []
                if o.range_text:
                    notes.append(o.range_text)
                if o.default_text:
                    notes.append(f"default: {o.default_text}")
                elif p.default is not None:
                    notes.append(f"default: {p.default}")
                if notes:
                    text += f" ({'; '.join(notes)})"
            rows_opts.append((left, text))
        rows_opts.append(("-h, --help", "show this help and exit"))
        col = min(32, max(len(a) for a, _ in rows_args + rows_opts) + 2)
        if rows_args:
            lines += ["", "arguments:"] + _rows(rows_args, col, width)
        lines += ["", "options:"] + _rows(rows_opts, col, width)
        if self.examples:
            lines += ["", "examples:"] + [f"  {e}" for e in self.examples]
        lines += ["", textwrap.fill(EXIT_CODES_HELP, width)]
        return "\n".join(lines) + "\n"

    # -- running
    def missing_extra(self) -> Optional[str]:
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                if mod in RUNTIME_MODULES:
                    return EXTRA_OF[mod]
                return self.extra or EXTRA_OF.get(mod, mod)
        return None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and exit; we explain ourselves
        if message.startswith("argument "):  # "argument -o/--out: expected one argument"
            message = message[len("argument "):]
        raise CommandLineError(message)


def _width() -> int:
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def _rows(rows, col: int, width: int) -> List[str]:
    out = []
    for left, text in rows:
        wrapped = textwrap.wrap(text, max(20, width - col - 2), break_on_hyphens=False) or [""]
        if len(left) + 2 > col:
            out.append(f"  {left}")
        else:
            out.append(f"  {left:<{col}}{wrapped.pop(0)}")
        out += [" " * (col + 2) + w for w in wrapped]
    return out


# --------------------------------------------------------------------------- errors

exit_code_for = exit_code_of  # every error class of quasar/errors.py carries its exit code


def extra_hint(command: str, extra: str) -> str:
    alt = f" (or {install_hint('gpu')} for CUDA)" if extra == "cpu" else ""
    return f"quasar {command} needs the {extra} extra: {install_hint(extra)}{alt}"


def run_command(cmd: Command, argv: Sequence[str]) -> int:
    """Parse, check the extra, run; every outcome becomes an exit code (see the table)."""
    from quasar.errors import QuasarError

    def err(msg: str) -> None:
        print(f"quasar {cmd.name}: error: {msg}", file=sys.stderr)

    if any(a in ("-h", "--help") for a in _before_dashdash(argv)):
        return _print(cmd.help())
    try:
        kwargs = cmd.parse(argv)
    except CommandLineError as exc:
        err(str(exc))
        print(f"usage: {cmd.usage()}\n(quasar {cmd.name} --help lists every option)",
              file=sys.stderr)
        return EXIT_USAGE
    extra = cmd.missing_extra()
    if extra:
        print(extra_hint(cmd.name, extra), file=sys.stderr)
        return EXIT_USAGE
    restore = None
    for p in cmd.params():
        if p.layer and kwargs.pop(p.name) and p.name == "quiet":
            restore = _quiet_down()
    if kwargs.get("quiet") is True:
        restore = quiet_progress_bars()
    try:
        return _call(cmd, kwargs, err)
    finally:
        if restore is not None:
            restore()


def _call(cmd: "Command", kwargs: Dict[str, Any], err: Callable[[str], None]) -> int:
    """The command's function with its parsed options; its result or error as the exit code."""
    from quasar.errors import QuasarError

    varargs = [p.name for p in cmd.params() if p.kind == "varargs"]
    args = kwargs.pop(varargs[0]) if varargs else []
    try:
        result = cmd.function()(*args, **kwargs)
        if isinstance(result, str):
            sys.stdout.write(result if result.endswith("\n") else result + "\n")
        sys.stdout.flush()
        return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK
    except BrokenPipeError:
        silence_stdout()
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"quasar {cmd.name}: interrupted" + (f" ({cmd.interrupt_hint})"
                                                  if cmd.interrupt_hint else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in EXTRA_OF:
            print(extra_hint(cmd.name, EXTRA_OF[top]) + f" ({top} is not installed)",
                  file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, cmd.user_errors):
            err(str(exc))
            return EXIT_USAGE
        raise
    except QuasarError as exc:
        err(str(exc))
        return exit_code_for(exc)
    except cmd.user_errors as exc:
        err(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # a body that exits by itself
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return EXIT_ERROR


_BAR_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")


def quiet_progress_bars() -> Callable[[], None]:
    """No progress bars from the libraries a command drives (huggingface_hub's downloads
    and uploads of ``hf://`` bundles, tqdm's): ``-q`` of every command. Returns the function
    that puts the settings back (a command run inside a longer-lived process: tests, a
    notebook calling ``quasar.cli.run``)."""
    before = {k: os.environ.get(k) for k in _BAR_ENV}
    for k in _BAR_ENV:
        os.environ[k] = "1"
    hub_was_on = False
    if "huggingface_hub" in sys.modules:  # the flag is read at its import; set it directly
        try:
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
            hub_was_on = not are_progress_bars_disabled()
            disable_progress_bars()
        except ImportError:  # pragma: no cover - a version without them
            pass

    def restore() -> None:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_was_on:
            from huggingface_hub.utils import enable_progress_bars
            enable_progress_bars()

    return restore


def _quiet_down() -> Callable[[], None]:
    """``-q`` of a command whose function has no ``quiet`` parameter: no progress bars
    (tqdm reads ``TQDM_DISABLE``), no log records below ERROR, no Python warnings (from
    libraries such as NNCF). What the command prints as its result, and errors, still show."""
    import logging
    import warnings

    restore = quiet_progress_bars()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    return restore


def _before_dashdash(argv: Sequence[str]) -> List[str]:
    argv = list(argv)
    return argv[:argv.index("--")] if "--" in argv else argv


def _print(text: str) -> int:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return EXIT_ERROR
    return EXIT_OK
