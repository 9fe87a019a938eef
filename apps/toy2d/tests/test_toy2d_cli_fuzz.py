"""Every value-taking flag of fm-toy2d demo/train/sample/eval fed wrong types, negative, zero,
huge, NaN, inf and empty values: each bad value is a usage error (exit 2, usage line, the flag
named) within a fraction of a second, before any data is drawn or model built; the values that
are legal reach the (patched) work functions, so the table cannot pass by rejecting everything.
"""

from __future__ import annotations

import json

import pytest

import fm_toy2d.cli as cli
import fm_toy2d.training as training
from fm_toy2d.config import make_config

# wrong type, negative, zero, huge (as a float and as an integer), NaN, inf, empty, a fraction
BAD_VALUES = ("abc", "-1", "0", "1e23", "100000000000000000000000", "nan", "inf", "", "2.5")
HUGE_INT = "100000000000000000000000"
HUGE = ("1e23", HUGE_INT)


@pytest.fixture(autouse=True)
def no_work(cli_fuzz, monkeypatch, tmp_path):
    cli_fuzz.stop_at(training, "train", training, "load_run")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_run(tmp_path):
    """A conditional Olympic-rings run directory (config.json + an empty checkpoint folder):
    enough for the argument checks of sample/eval (5 classes, midpoint NFE 8)."""
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    cfg = make_config("olympic-rings", conditional=True, net={"hidden": 8, "depth": 1})
    (run / "config.json").write_text(json.dumps({"format": "fm-train-run", "app": "fm-toy2d", "model": "fm",
                                                 "toy2d": cfg.to_dict(), "train": {}}))  # fmt: skip
    return run


# flag -> the values of BAD_VALUES that are legal for it (everything else must be refused)
INT_POS: set[str] = set()
INT_NONNEG = {"0"}
FLOAT_UNBOUNDED = set(HUGE)  # a huge learning rate or time budget is legal (and diverges / runs long)
PATH = set(BAD_VALUES) - {""}  # any non-empty name is a path
FLAGS = {
    "demo": {"--steps": {HUGE_INT}, "--out": PATH, "--device": set(), "--threads": set()},
    "train": {
        "--dataset": set(), "--cells": INT_POS, "--grid": INT_POS, "--dim": INT_POS, "--model": set(), "--recipe": set(),
        "--coupling": set(), "--time": set(), "--target": set(), "--steps": {HUGE_INT}, "--minutes": FLOAT_UNBOUNDED | {"2.5"},
        "--batch-size": set(), "--lr": FLOAT_UNBOUNDED | {"2.5"}, "--seed": INT_NONNEG, "--out": PATH,
        "--device": set(), "--threads": set(), "--hidden": INT_POS, "--depth": INT_NONNEG, "--log": set(),
        "--precision": set(),
    },
    "sample": {
        "--run": set(), "--n": INT_POS, "--solver": set(), "--nfe": INT_POS, "--guidance": set(), "--label": INT_NONNEG,
        "--seed": INT_NONNEG, "--out": set(), "--grid": set(), "--gif": set(), "--device": set(), "--threads": set(),
    },
    "eval": {"--run": set(), "--n": INT_POS, "--solver": set(), "--nfe": INT_POS, "--seed": INT_NONNEG,
             "--n-nll": INT_POS, "--device": set(), "--threads": set()},
}  # fmt: skip


def base_args(command: str, run) -> list[str]:
    if command == "demo":
        return ["demo", "--device", "cpu"]
    if command == "train":
        return ["train", "--device", "cpu", "--quiet", "--out", "fresh-run"]
    if command == "sample":
        return ["sample", "--run", str(run), "--n", "4", "--out", "s.npz", "--device", "cpu"]
    return ["eval", "--run", str(run), "--device", "cpu"]


def test_every_value_flag_is_in_the_table(cli_fuzz):
    """A flag added later without a fuzz row fails here."""
    valued = cli_fuzz.value_flags(cli.build_parser())
    for command, flags in FLAGS.items():
        assert valued[command] == set(flags), command


CASES = [(c, f) for c, flags in FLAGS.items() for f in flags]


@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_fuzzed_flag(command, flag, fake_run, cli_fuzz):
    problems = cli_fuzz.check_flag(cli.main, base_args(command, fake_run), flag, BAD_VALUES, FLAGS[command][flag])
    assert not problems, "\n".join(problems)


def test_the_fake_run_itself_is_accepted(fake_run, cli_fuzz, capsys):
    """Control: with good values every command gets past the checks."""
    for command in FLAGS:
        code, _ = cli_fuzz.call(cli.main, base_args(command, fake_run))
        assert code == "reached", (command, capsys.readouterr().err)
