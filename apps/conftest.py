"""Fixtures and markers shared by the apps' tests (pytest finds this file above apps/*/tests).

- ``@pytest.mark.needs_mnist``: skip the test, with the reason, when the MNIST IDX files are not found
  (set ``FM_DATA_DIR``, e.g. ``FM_DATA_DIR=../shared/data``).
- ``one_thread``: torch on one thread for the test (tests run beside each other on 2 cores).
"""

from __future__ import annotations

import functools

import pytest


@functools.cache
def why_no_mnist() -> str | None:
    """None when the MNIST files are found, else the reason to skip."""
    from fm_data.images import DataError, find_dataset_dir

    try:
        find_dataset_dir("mnist", download=False)
    except DataError:
        return "MNIST files not found (set FM_DATA_DIR, e.g. FM_DATA_DIR=../shared/data)"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_mnist: skipped (with the reason) when the MNIST files are not found")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("needs_mnist") is not None and why_no_mnist() is not None:
            item.add_marker(pytest.mark.skip(reason=why_no_mnist()))


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CliFuzz:
    """The apps' command-line fuzz harness (``cli_fuzz`` fixture).

    ``stop_at(module, name, ...)`` patches the work functions so that a command that gets past its
    argument checks raises :attr:`Reached`; ``call(main, argv)`` runs a command and returns its exit
    code (or "reached") and the seconds it took; ``value_flags(parser)`` lists every sub-command's
    value-taking flags; ``check_flag(main, base, flag, values, legal)`` feeds each value to ``flag``
    and returns the problems: a legal value that did not reach the work, or a bad one that was not a
    usage error (exit 2, usage line, the flag named, no traceback) within two seconds.
    """

    class Reached(Exception):
        """The command got past argument checking into real work."""

    def __init__(self, monkeypatch, capsys):
        self.monkeypatch, self.capsys = monkeypatch, capsys

    def stop_at(self, *targets) -> None:
        def reached(*a, **k):
            raise self.Reached

        for module, name in zip(targets[::2], targets[1::2]):
            self.monkeypatch.setattr(module, name, reached)

    def call(self, main, argv) -> tuple[int | str, float]:
        import time

        t0 = time.perf_counter()
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except self.Reached:
            code = "reached"
        return code, time.perf_counter() - t0

    @staticmethod
    def value_flags(parser) -> dict[str, set[str]]:
        subs = parser._subparsers._group_actions[0].choices
        return {
            command: {a.option_strings[0] for a in sub._actions
                      if a.option_strings and a.nargs != 0 and a.option_strings[0] != "-h"}
            for command, sub in subs.items()
        }  # fmt: skip

    def check_flag(self, main, base: list[str], flag: str, values, legal) -> list[str]:
        if flag in base:  # the flag replaces the base value
            i = base.index(flag)
            base = base[:i] + base[i + 2 :]
        problems = []
        for value in values:
            code, seconds = self.call(main, [*base, flag, value])
            err = self.capsys.readouterr().err
            if value in legal:
                if code != "reached":
                    problems.append(f"{flag} {value!r}: legal value refused ({code}): {err.strip()[-200:]}")
                continue
            named = (flag, flag.lstrip("-").replace("-", "_"), flag.lstrip("-"))
            if code != 2 or "usage:" not in err or "Traceback" in err or not any(n in err for n in named):
                problems.append(f"{flag} {value!r}: exit {code}, stderr {err.strip()[-200:]!r}")
            elif seconds > 2.0:
                problems.append(f"{flag} {value!r}: refused only after {seconds:.1f} s")
        return problems


@pytest.fixture
def cli_fuzz(monkeypatch, capsys) -> CliFuzz:
    return CliFuzz(monkeypatch, capsys)
