"""run_cli's exit codes and one-line errors; --version."""

from __future__ import annotations

import argparse
import errno

import pytest

import fm_cli
from fm_cli import add_version, error, run_cli


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-x")
    add_version(p, "fm-x", "1.2.3")
    sub = p.add_subparsers(dest="command")
    for name in ("ok", "disk", "stop", "bad", "multi", "usage"):
        sub.add_parser(name).add_argument("--n", type=int, default=1)
    return p


def cmd_ok(parser, args):
    print(f"ok {args.n}")
    return 0


def cmd_disk(parser, args):
    raise OSError(errno.ENOSPC, "No space left on device", "out/s.npz")


def cmd_stop(parser, args):
    raise KeyboardInterrupt


def cmd_bad(parser, args):
    raise ValueError("a broken\ncheckpoint")


def cmd_usage(parser, args):
    parser.error("--n is wrong here")


COMMANDS = {"ok": cmd_ok, "disk": cmd_disk, "stop": cmd_stop, "bad": cmd_bad, "multi": cmd_bad, "usage": cmd_usage}


def test_success(capsys):
    assert run_cli("fm-x", make_parser(), COMMANDS, ["ok", "--n", "3"]) == 0
    assert capsys.readouterr().out == "ok 3\n"


def test_oserror_is_one_line_and_exit_1(capsys):
    assert run_cli("fm-x", make_parser(), COMMANDS, ["disk"]) == 1
    cap = capsys.readouterr()
    assert cap.err == "fm-x disk: error: [Errno 28] No space left on device: 'out/s.npz'\n" and cap.out == ""


def test_extra_errors_are_one_line(capsys):
    assert run_cli("fm-x", make_parser(), COMMANDS, ["bad"], errors=(ValueError,)) == 1
    assert capsys.readouterr().err == "fm-x bad: error: a broken checkpoint\n"
    with pytest.raises(ValueError):  # not in errors: not swallowed
        run_cli("fm-x", make_parser(), COMMANDS, ["multi"])


def test_no_command_prints_help_and_exits_2(capsys):
    assert run_cli("fm-x", make_parser(), COMMANDS, []) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: fm-x") and "{ok,disk,stop,bad,multi,usage}" in out


def test_default_command(capsys):
    assert run_cli("fm-x", make_parser(), COMMANDS, [], default_command="ok") == 0
    assert capsys.readouterr().out == "ok 1\n"


def test_keyboard_interrupt_is_130(capsys):
    assert run_cli("fm-x", make_parser(), COMMANDS, ["stop"]) == 130
    assert capsys.readouterr().err == "\nfm-x stop: interrupted\n"


def test_usage_error_inside_a_command_shows_its_own_usage(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("fm-x", make_parser(), COMMANDS, ["usage"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fm-x usage [-h] [--n N]") and err.endswith("fm-x usage: error: --n is wrong here\n")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        make_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == "fm-x 1.2.3\n"


def test_version_of_the_installed_distribution(capsys):
    p = argparse.ArgumentParser(prog="fm-cli")
    add_version(p, "fm-cli")
    with pytest.raises(SystemExit):
        p.parse_args(["--version"])
    assert capsys.readouterr().out == f"fm-cli {fm_cli.__version__}\n"


def test_error_line(capsys):
    assert error("fm-x", "eval", "no run here") == 1
    assert error("fm-x", "eval", "later", code=3) == 3
    assert capsys.readouterr().err == "fm-x eval: error: no run here\nfm-x eval: error: later\n"


def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, fm_cli; print(sorted(m for m in ('torch', 'fm_train', 'fm_core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
