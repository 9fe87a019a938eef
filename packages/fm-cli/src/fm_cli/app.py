"""The skeleton of an fm-* command line: sub-command dispatch, ``--version``, exit codes.

Exit codes, the same in every app:

- 0: done;
- 1: a runtime failure (missing data, a broken checkpoint, a full disk), printed as one line
  ``PROG COMMAND: error: MESSAGE`` on stderr, no traceback;
- 2: a usage error (argparse's, naming the bad value), or no command given (help is printed);
- 130: interrupted with Ctrl-C (SIGINT); 143: stopped by SIGTERM.

    import argparse
    from fm_cli import add_version, run_cli

    def cmd_hello(parser, args):
        print("hello", args.name)
        return 0

    parser = argparse.ArgumentParser(prog="fm-demo")
    add_version(parser, "fm-demo", "1.0.0")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("hello").add_argument("--name", default="world")
    run_cli("fm-demo", parser, {"hello": cmd_hello}, ["hello"])   # prints "hello world", returns 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["Command", "add_version", "error", "interrupted", "one_line", "run_cli", "subparser"]

#: A sub-command: ``command(its_own_sub_parser, args) -> exit status``.
Command = Callable[[argparse.ArgumentParser, argparse.Namespace], int]


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (newlines become spaces; its type name when empty)."""
    return " ".join(str(e).split("\n")) or type(e).__name__


def error(prog: str, command: str, message: str, code: int = 1) -> int:
    """Print ``PROG COMMAND: error: MESSAGE`` to stderr and return ``code``."""
    print(f"{prog} {command}: error: {message}", file=sys.stderr)
    return code


def interrupted(
    prog: str, command: str, out: str | Path | None = None, *, code: int = 130, what: str = "interrupted"
) -> int:
    """Ctrl-C (``code`` 130) or SIGTERM (143): say ``what`` happened in one line (with ``out``: how to
    continue, ``PROG COMMAND --out OUT --resume``) and return ``code``.

    Under torchrun only rank 0 speaks (every rank gets the signal)."""
    from fm_train.distributed import checks_files

    if checks_files():
        hint = f"; continue with: {prog} {command} --out {out} --resume" if out is not None else ""
        print(f"\n{prog} {command}: {what}{hint}", file=sys.stderr)
    return code


def add_version(parser: argparse.ArgumentParser, prog: str, version: str | None = None) -> argparse.Action:
    """``--version`` printing ``PROG X.Y.Z``; without ``version`` the installed distribution ``prog``'s."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed(prog)
        except PackageNotFoundError:
            version = "unknown"
    return parser.add_argument("--version", action="version", version=f"{prog} {version}")


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``command`` (its usage line is the one a usage error should print)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    raise KeyError(f"{parser.prog} has no sub-command {command!r}")


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    commands: Mapping[str, Command],
    argv: Sequence[str] | None = None,
    *,
    default_command: str | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run its sub-command; returns the exit status.

    ``parser`` must have sub-parsers with ``dest="command"``. Without a command: run
    ``default_command`` if given, else print the help and return 2. The command gets its own
    sub-parser, so ``parser.error`` prints its usage line. ``OSError`` and the exceptions in
    ``errors`` become one line ``PROG COMMAND: error: MESSAGE`` and status 1; Ctrl-C gives 130, SIGTERM 143.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        if default_command is None:
            parser.print_help()
            return 2
        args = parser.parse_args([*argv, default_command])
        command = default_command
    from fm_train.signals import raise_on_signals

    caught: tuple[type[BaseException], ...] = (OSError, *errors)
    try:
        with raise_on_signals():  # SIGTERM as Ctrl-C: one line and 143 (fm_train.signals)
            return commands[command](subparser(parser, command), args)
    except caught as e:  # full disk, unwritable output: one line naming the file, not a traceback
        return error(prog, command, one_line(e))
    except KeyboardInterrupt as e:
        return interrupted(prog, command, code=getattr(e, "exit_code", 130))
    finally:
        from .train import release_run_locks

        release_run_locks()  # the run directories a train command locked
