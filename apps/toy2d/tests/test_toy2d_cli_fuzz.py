"""Every value-taking flag of fm-toy2d demo/train/sample/eval fed wrong types, negative, zero,
huge, NaN, inf and empty values: each bad value is a usage error (exit 2, usage line, the flag
named) within a fraction of a second, before any data is drawn or model built; the values that
are legal reach the (patched) work functions, so the table cannot pass by rejecting everything.
"""

from __future__ import annotations

import json

import pytest

import fm_toy2d.cli as cli
import fm_toy2d.study as study
import fm_toy2d.training as training
from fm_toy2d.config import make_config

# wrong type, negative, zero, huge (as a float and as an integer), NaN, inf, empty, a fraction
# 10**20 and 10**23: past int64 (the "--steps 100000000000000000000"); every integer flag has an
# upper bound (fm_cli.argtypes), so a huge integer is legal only for numbers that are floats
BAD_VALUES = ("abc", "-1", "0", "1e23", "100000000000000000000000", "100000000000000000000", "nan", "inf", "", "2.5")
HUGE_INT = "100000000000000000000000"
HUGE_INTS = (HUGE_INT, "100000000000000000000")
HUGE = ("1e23", *HUGE_INTS)


@pytest.fixture(autouse=True)
def no_work(cli_fuzz, monkeypatch, tmp_path):
    cli_fuzz.stop_at(training, "train", training, "load_run", study, "resume_problem")
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
    "demo": {"--steps": INT_POS, "--out": PATH, "--device": set(), "--threads": set()},
    "train": {
        "--dataset": set(), "--cells": INT_POS, "--grid": INT_POS, "--dim": INT_POS, "--model": set(), "--recipe": set(),
        "--coupling": set(), "--time": set(), "--target": set(), "--steps": INT_POS, "--minutes": FLOAT_UNBOUNDED | {"2.5"},
        "--batch-size": set(), "--lr": FLOAT_UNBOUNDED | {"2.5"}, "--seed": INT_NONNEG, "--out": PATH,
        "--device": set(), "--threads": set(), "--hidden": INT_POS, "--depth": INT_NONNEG, "--log": set(),
        "--precision": set(), "--method": set(), "--equal-fraction": INT_NONNEG, "--init-from": set(),
        "--teacher": set(), "--pairs": INT_POS, "--teacher-solver": set(), "--teacher-nfe": INT_POS,
        "--lattice": set(), "--source": set(), "--kappa": set(), "--discrete-loss": set(),
    },
    "sample": {
        "--run": set(), "--n": INT_POS, "--solver": set(), "--nfe": INT_POS, "--guidance": set(), "--label": INT_NONNEG,
        "--seed": INT_NONNEG, "--out": set(), "--grid": set(), "--gif": set(), "--device": set(), "--threads": set(),
    },
    "eval": {"--run": set(), "--n": INT_POS, "--solver": set(), "--nfe": INT_POS, "--seed": INT_NONNEG,
             "--n-nll": INT_POS, "--device": set(), "--threads": set()},
}  # fmt: skip


#: the method flags apply only with their --method (fm_cli.flags.add_method)
MEANFLOW_ONLY = ("--equal-fraction", "--init-from")
REFLOW_ONLY = ("--teacher", "--pairs", "--teacher-solver", "--teacher-nfe")
#: the discrete flags apply only with --model discrete
DISCRETE_ONLY = ("--lattice", "--source", "--kappa", "--discrete-loss")


def method_args(flag: str, run) -> list[str]:
    if flag in DISCRETE_ONLY:
        return ["--model", "discrete"]
    if flag in MEANFLOW_ONLY:
        return ["--method", "meanflow"]
    if flag in REFLOW_ONLY:
        return ["--method", "reflow", "--teacher", str(run)]
    return []


def base_args(command: str, run, flag: str = "") -> list[str]:
    if command == "demo":
        return ["demo", "--device", "cpu"]
    if command == "train":
        return ["train", "--device", "cpu", "--quiet", "--out", "fresh-run", *method_args(flag, run)]
    if command == "sample":
        return ["sample", "--run", str(run), "--n", "4", "--out", "s.npz", "--device", "cpu"]
    if command == "study":
        return ["study", "--quick", "--out", "study-out", "--device", "cpu"]
    return ["eval", "--run", str(run), "--device", "cpu"]


#: The study's integer flags without an upper bound: fm_toy2d/study_cli.py takes fm_cli's unbounded
NONE_LIST = {""}  # an empty list drops that sweep
FLAGS["study"] = {
    "--out": PATH, "--recipes": set(), "--grids": NONE_LIST, "--dims": NONE_LIST, "--both-grids": NONE_LIST,
    "--both-dims": NONE_LIST, "--seeds": INT_POS, "--max-steps": INT_POS, "--batch-size": INT_POS,
    "--eval-every": INT_POS, "--per-cell": INT_POS, "--screen-n": INT_NONNEG, "--budget-minutes": FLOAT_UNBOUNDED | {"2.5"},
    "--futility-rate": FLOAT_UNBOUNDED | {"0", "2.5"}, "--workers": INT_POS, "--hidden": INT_POS, "--depth": INT_POS,
    "--schedule": set(), "--device": set(),
}  # fmt: skip
#: commands without a fuzz row: their flags take only paths and a hub id (checked below)
NAMES_ONLY = {"export"}


def test_every_value_flag_is_in_the_table(cli_fuzz):
    """A flag added later without a fuzz row fails here."""
    valued = cli_fuzz.value_flags(cli.build_parser())
    for command, flags in FLAGS.items():
        assert valued[command] == set(flags), command


def test_every_command_is_fuzzed_or_takes_names_only():
    """A command added later without a fuzz table fails here; export's flags are all paths or names."""
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == set(FLAGS) | NAMES_ONLY
    for command in NAMES_ONLY:
        for action in commands[command]._actions:
            if action.option_strings and action.nargs != 0 and action.option_strings[0] != "-h":
                assert action.type in (None, str) or action.type.__name__ == "nonempty_path", (command, action)


CASES = [(c, f) for c, flags in FLAGS.items() for f in flags]


@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_fuzzed_flag(command, flag, fake_run, cli_fuzz):
    problems = cli_fuzz.check_flag(cli.main, base_args(command, fake_run, flag), flag, BAD_VALUES, FLAGS[command][flag])
    assert not problems, "\n".join(problems)


def test_the_fake_run_itself_is_accepted(fake_run, cli_fuzz, capsys):
    """Control: with good values every command gets past the checks."""
    for command in FLAGS:
        code, _ = cli_fuzz.call(cli.main, base_args(command, fake_run))
        assert code == "reached", (command, capsys.readouterr().err)


# a value of config.json above the bound of its flag (fm_cli.argtypes, fm_toy2d.config): (key, value, the message)
CONFIG_HUGE = [
    ("nfe", 10**20, "nfe=100000000000000000000 is invalid: must be an integer up to 10,000"),
    ("steps", 10**20, "steps=100000000000000000000 is invalid: must be an integer up to 1,000,000,000"),
    ("batch_size", 65_537, "batch_size=65537 is invalid: must be an integer up to 65,536"),
    ("warmup_steps", 10**20, "warmup_steps=100000000000000000000 is invalid: must be an integer up to"),
    ("grid", 1001, "grid=1001 is invalid: must be an integer up to 1,000"),
    ("seed", 2**32, "seed=4294967296 is invalid: must be an integer up to 4,294,967,295"),
]


@pytest.mark.parametrize("key, value, needle", CONFIG_HUGE, ids=[f"{k}={v}" for k, v, _ in CONFIG_HUGE])
def test_config_json_values_get_the_bounds_of_their_flags(key, value, needle, fake_run, cli_fuzz, capsys):
    data = json.loads((fake_run / "config.json").read_text())
    data["toy2d"][key] = value
    (fake_run / "config.json").write_text(json.dumps(data))
    for argv in (
        base_args("sample", fake_run),
        base_args("eval", fake_run),
        ["train", "--out", str(fake_run), "--resume"],
    ):
        code, _ = cli_fuzz.call(cli.main, argv)
        err = capsys.readouterr().err
        assert code in (1, 2) and needle in err and "Traceback" not in err, (argv[0], err)
