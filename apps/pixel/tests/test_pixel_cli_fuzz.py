"""Every value-taking flag of fm-pixel train/sample/eval fed wrong types, negative, zero, huge,
NaN, inf and empty values: each bad value is a usage error (exit 2, usage line, the flag named)
within a fraction of a second, before data is loaded or a model built (the work functions are
patched to fail the test if reached). Legal values must reach them, so the table cannot pass by
rejecting everything. No data files needed.
"""

from __future__ import annotations

import json
import time

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


class Reached(Exception):
    """The command got past argument checking into real work."""


@pytest.fixture(autouse=True)
def no_work(monkeypatch, tmp_path):
    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(training, "train", reached)
    monkeypatch.setattr(images, "load_images", reached)
    monkeypatch.setattr(cli, "_load_model", reached)
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
        "--nfe": set(), "--guidance": ANY_FINITE, "--sample-every": {HUGE_INT}, "--threads": set(),
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


def call(argv) -> tuple[int | str, float]:
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    except Reached:
        code = "reached"
    return code, time.perf_counter() - t0


def test_every_value_flag_is_in_the_table():
    """A flag added later without a fuzz row fails here."""
    subs = cli.build_parser()._subparsers._group_actions[0].choices
    for command, flags in FLAGS.items():
        valued = {
            a.option_strings[0]
            for a in subs[command]._actions
            if a.option_strings and a.nargs != 0 and a.option_strings[0] != "-h"
        }
        assert valued == set(flags), command


CASES = [(c, f) for c, flags in FLAGS.items() for f in flags]


@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_fuzzed_flag(command, flag, fake_run, capsys):
    base = base_args(command, flag, fake_run)
    if flag in base:  # the flag replaces the base value
        i = base.index(flag)
        base = base[:i] + base[i + 2 :]
    problems = []
    for value in BAD_VALUES:
        code, seconds = call(base + [flag, value])
        err = capsys.readouterr().err
        if value in FLAGS[command][flag]:
            if code != "reached":
                problems.append(f"{flag} {value!r}: legal value refused ({code}): {err.strip()[-200:]}")
            continue
        named = (flag, flag.lstrip("-").replace("-", "_"), flag.lstrip("-"))
        if code != 2 or "usage:" not in err or "Traceback" in err or not any(n in err for n in named):
            problems.append(f"{flag} {value!r}: exit {code}, stderr {err.strip()[-200:]!r}")
        elif seconds > 2.0:
            problems.append(f"{flag} {value!r}: refused only after {seconds:.1f} s")
    assert not problems, "\n".join(problems)


def test_the_fake_run_itself_is_accepted(fake_run, capsys):
    """Control: with good values every command gets past the checks."""
    for command in FLAGS:
        code, _ = call(base_args(command, "", fake_run))
        assert code == "reached", (command, capsys.readouterr().err)
