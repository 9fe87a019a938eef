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
BAD_VALUES = ("abc", "-1", "0", "1e23", "100000000000000000000000", "nan", "inf", "", "2.5")
HUGE_INT = "100000000000000000000000"
HUGE = {"1e23", HUGE_INT}
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
        "--dataset": set(), "--classes": {"0"}, "--net": set(), "--steps": {HUGE_INT}, "--minutes": HUGE | {"2.5"},
        "--batch-size": set(), "--lr": HUGE | {"2.5"}, "--seed": {"0"}, "--device": set(), "--data-dir": PATH_TO_NOWHERE,
        "--out": set(BAD_VALUES) - {""}, "--recipe": set(), "--time": set(), "--coupling": set(), "--label-dropout": {"0"},
        "--schedule": set(), "--warmup-steps": {"0", HUGE_INT}, "--ema-decay": {"0"}, "--channels": set(),
        "--res-blocks": set(), "--patch-size": set(), "--hidden": set(), "--depth": {"0"}, "--solver": set(),
        "--nfe": set(), "--guidance": ANY_FINITE, "--sample-every": {HUGE_INT}, "--threads": set(), "--log": set(),
        "--precision": set(),
    },
    "sample": {
        "--run": PATH_TO_NOWHERE, "--n": set(), "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE,
        "--label": {"0"}, "--seed": {"0"}, "--out": set(), "--grid": set(), "--gif": set(), "--batch-size": {HUGE_INT},
        "--device": set(), "--threads": set(),
    },
    "eval": {
        "--run": PATH_TO_NOWHERE, "--n": set(), "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE,
        "--seed": {"0"}, "--data-dir": PATH_TO_NOWHERE, "--device": set(), "--threads": set(),
    },
}  # fmt: skip
MLP_ONLY = ("--hidden", "--depth")


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
