"""Every value-taking flag of fm-pixel train/sample/eval fed wrong types, negative, zero, huge,
NaN, inf and empty values: each bad value is a usage error (exit 2, usage line, the flag named)
within a fraction of a second, before data is loaded or a model built (the work functions are
patched to fail the test if reached). Legal values must reach them, so the table cannot pass by
rejecting everything. No data files needed.
"""

from __future__ import annotations

import json

import pytest

import fm_data.images as images
import fm_pixel.cli as cli
import fm_pixel.training as training
from fm_pixel.config import make_config

# wrong type, negative, zero, huge (as a float and as an integer), NaN, inf, empty, a fraction
# 10**20 and 10**23: past int64 (the "--steps 100000000000000000000"); every integer flag has an
# upper bound (fm_cli.argtypes), so a huge integer is legal only for numbers that are floats
BAD_VALUES = ("abc", "-1", "0", "1e23", "100000000000000000000000", "100000000000000000000", "nan", "inf", "", "2.5")
HUGE_INT = "100000000000000000000000"
HUGE = {"1e23", HUGE_INT, "100000000000000000000"}
PATH_TO_NOWHERE: set[str] = set()  # none of the values names an existing run or data folder
ANY_FINITE = {"-1", "0", "2.5"} | HUGE  # guidance scales


@pytest.fixture(autouse=True)
def no_work(cli_fuzz, monkeypatch, tmp_path):
    cli_fuzz.stop_at(training, "train", images, "load_images", cli, "_load_model")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_run(tmp_path):
    """A conditional run directory (default recipe: label dropout 0.1, Euler NFE 10, all classes):
    enough for the argument checks of sample and eval."""
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    cfg = make_config("mnist", conditional=True, net_config={"channels": [8, 16]})
    (run / "config.json").write_text(
        json.dumps({"format": "fm-train-run", "train": {}, **training.run_config(cfg, {})})
    )
    return run


# flag -> the values of BAD_VALUES that are legal for it (everything else must be refused)
FLAGS = {
    "train": {
        "--dataset": set(), "--classes": {"0"}, "--net": set(), "--steps": set(), "--minutes": HUGE | {"2.5"},
        "--batch-size": set(), "--lr": HUGE | {"2.5"}, "--seed": {"0"}, "--device": set(), "--data-dir": PATH_TO_NOWHERE,
        "--out": set(BAD_VALUES) - {""}, "--recipe": set(), "--time": set(), "--coupling": set(), "--label-dropout": {"0"},
        "--schedule": set(), "--warmup-steps": {"0"}, "--ema-decay": {"0"}, "--channels": set(),
        "--res-blocks": set(), "--patch-size": set(), "--hidden": set(), "--depth": {"0"}, "--solver": set(),
        "--nfe": set(), "--guidance": ANY_FINITE, "--sample-every": set(), "--threads": set(), "--log": set(),
        "--precision": set(), "--method": set(), "--equal-fraction": {"0"}, "--init-from": PATH_TO_NOWHERE,
        "--teacher": PATH_TO_NOWHERE, "--pairs": set(), "--teacher-solver": set(), "--teacher-nfe": set(), "--train-guidance": {"2.5"},
        "--model": set(), "--levels": set(), "--source": set(), "--kappa": set(), "--discrete-loss": set(),
    },
    "sample": {
        "--run": PATH_TO_NOWHERE, "--n": set(), "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE,
        "--label": {"0"}, "--seed": {"0"}, "--out": set(), "--grid": set(), "--gif": set(), "--batch-size": set(),
        "--device": set(), "--threads": set(),
    },
    "eval": {
        "--run": PATH_TO_NOWHERE, "--n": set(), "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE,
        "--seed": {"0"}, "--data-dir": PATH_TO_NOWHERE, "--device": set(), "--threads": set(),
    },
}  # fmt: skip
MLP_ONLY = ("--hidden", "--depth")


#: the method flags apply only with their --method (fm_cli.flags.add_method)
MEANFLOW_ONLY = ("--equal-fraction", "--init-from", "--train-guidance")
REFLOW_ONLY = ("--teacher", "--pairs", "--teacher-solver", "--teacher-nfe")
#: the discrete flags apply only with --model discrete
DISCRETE_ONLY = ("--levels", "--source", "--kappa", "--discrete-loss")


def method_args(flag: str, run) -> list[str]:
    if flag in DISCRETE_ONLY:
        return ["--model", "discrete"]
    if flag in MEANFLOW_ONLY:
        return ["--method", "meanflow"]
    if flag in REFLOW_ONLY:
        return ["--method", "reflow", "--teacher", str(run)]
    return []


def base_args(command: str, flag: str, run) -> list[str]:
    if command == "train":
        net = ["--net", "mlp"] if flag in MLP_ONLY else []
        return [
            "train",
            "--dataset",
            "mnist",
            "--conditional",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            "fresh-run",
            *net,
            *method_args(flag, run),
        ]
    if command == "sample":
        return ["sample", "--run", str(run), "--n", "4", "--out", "s.npz", "--device", "cpu"]
    return ["eval", "--run", str(run), "--device", "cpu"]


#: flags fuzzed by their own tests (fm-cli's eval guidance sweep, issue 22)
ELSEWHERE = {"--guidance-sweep"}


def test_every_value_flag_is_in_the_table(cli_fuzz):
    """A flag added later without a fuzz row fails here."""
    valued = cli_fuzz.value_flags(cli.build_parser())
    for command, flags in FLAGS.items():
        assert valued[command] - ELSEWHERE == set(flags), (command, valued[command] ^ set(flags))


CASES = [(c, f) for c, flags in FLAGS.items() for f in flags]


@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_fuzzed_flag(command, flag, fake_run, cli_fuzz):
    problems = cli_fuzz.check_flag(cli.main, base_args(command, flag, fake_run), flag, BAD_VALUES, FLAGS[command][flag])
    assert not problems, "\n".join(problems)


def test_the_fake_run_itself_is_accepted(fake_run, cli_fuzz, capsys):
    """Control: with good values every command gets past the checks."""
    for command in FLAGS:
        code, _ = cli_fuzz.call(cli.main, base_args(command, "", fake_run))
        assert code == "reached", (command, capsys.readouterr().err)


#: commands without a fuzz row above: their flags take only paths and a hub id (checked below)
NAMES_ONLY = {"export"}


def test_every_command_is_fuzzed_or_takes_names_only(cli_fuzz):
    """A command added later without a fuzz table fails here; export's flags are all paths or names."""
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(FLAGS) | NAMES_ONLY
    for command in NAMES_ONLY:
        for action in commands[command]._actions:
            if action.option_strings and action.nargs != 0 and action.option_strings[0] != "-h":
                assert action.type in (None, str) or action.type.__name__ == "nonempty_path", (command, action)


# a value of config.json above the bound of its flag (fm_cli.argtypes): (key path, value, the message)
CONFIG_HUGE = [
    (("pixel", "nfe"), 10**20, "nfe=100000000000000000000 is invalid: must be an integer up to 10,000"),
    (("pixel", "nfe"), 10_001, "must be an integer up to 10,000"),
    (("train", "steps"), 10**20, "steps=100000000000000000000 is invalid: must be an integer up to 1,000,000,000"),
    (("train", "batch_size"), 65_537, "batch_size=65537 is invalid: must be an integer up to 65,536"),
    (("train", "warmup_steps"), 10**9 + 1, "warmup_steps=1000000001 is invalid: must be an integer up to"),
    (("train", "seed"), 2**32, "seed=4294967296 is invalid: must be an integer up to 4,294,967,295"),
    (("train", "sample_every"), 10**20, "sample_every=100000000000000000000 is invalid"),
]


@pytest.mark.parametrize("keys, value, needle", CONFIG_HUGE, ids=[f"{k[-1]}={v}" for k, v, _ in CONFIG_HUGE])
def test_config_json_values_get_the_bounds_of_their_flags(keys, value, needle, fake_run, cli_fuzz, capsys):
    data = json.loads((fake_run / "config.json").read_text())
    data[keys[0]][keys[1]] = value
    (fake_run / "config.json").write_text(json.dumps(data))
    for command in ("sample", "eval"):
        code, _ = cli_fuzz.call(cli.main, base_args(command, "", fake_run))
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, (command, err)
    code, _ = cli_fuzz.call(cli.main, ["train", "--out", str(fake_run), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code in (1, 2) and needle in err and "Traceback" not in err, err
