"""Every value-taking flag of fm-latentgen train-vae/encode/train/sample/eval fed wrong types, negative,
zero, huge, NaN, inf and empty values: each bad value is a usage error (exit 2, usage line, the flag
named) within two seconds, before data, latents or weights are loaded (the work functions are patched
to fail the test if reached); legal values reach them. Then the network flags in combination:
impossible DiTs are usage errors before the latents load. No data files needed.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import fm_latent
import fm_latentgen.cli as cli
import fm_latentgen.training as training
import fm_latentgen.vae as vae
from fm_cli.images import config_section
from fm_latentgen.config import make_config

# 10**20 and 10**23: past int64 (the "--steps 100000000000000000000"); every integer flag has an
# upper bound (fm_cli.argtypes), so a huge integer is legal only for numbers that are floats
BAD_VALUES = ("abc", "-1", "0", "1e23", "100000000000000000000000", "100000000000000000000", "nan", "inf", "", "2.5")
HUGE_INT = "100000000000000000000000"
HUGE = {"1e23", HUGE_INT, "100000000000000000000"}
ANY_FINITE = {"-1", "0", "2.5"} | HUGE


@pytest.fixture(autouse=True)
def no_work(cli_fuzz, monkeypatch, tmp_path):
    cli_fuzz.stop_at(vae, "train_vae", vae, "load_vae", training, "train_latent", cli, "_load")
    # a latent cache [N, 4, 8, 8] without a file: train's checks run on its shape
    cache = SimpleNamespace(latents=torch.zeros(2, 4, 8, 8), labels=torch.zeros(2, dtype=torch.long),
                            info={"dataset": "mnist"})  # fmt: skip
    monkeypatch.setattr(fm_latent, "load_latent_cache", lambda *a, **k: cache)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_run(tmp_path):
    """A conditional latent run directory: enough for the argument checks of sample and eval."""
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    cfg = make_config("mnist", [4, 8, 8], conditional=True)
    data = {"format": "fm-train-run", "train": {}, "app": vae.APP, "layout": 2, "latent": config_section(cfg),
            "net": {"name": "dit", "config": cfg.net_config}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(data))
    return run


# flag -> the values of BAD_VALUES that are legal for it (everything else must be refused)
TRAIN_COMMON = {
    "--classes": {"0"}, "--steps": set(), "--minutes": HUGE | {"2.5"}, "--batch-size": set(),
    "--lr": HUGE | {"2.5"}, "--seed": {"0"}, "--device": set(), "--out": set(BAD_VALUES) - {""}, "--threads": set(),
}  # fmt: skip
FLAGS = {
    "train-vae": {
        **TRAIN_COMMON, "--dataset": set(), "--kl-weight": {"0", "2.5"} | HUGE, "--channels": set(),
        "--latent-channels": set(), "--data-dir": set(), "--fit-n": set(), "--eval-n": set(),
    },
    "encode": {
        "--vae": set(BAD_VALUES) - {""}, "--dataset": set(), "--out": set(BAD_VALUES) - {""}, "--limit": set(),
        "--seed": {"0"}, "--data-dir": set(), "--device": set(), "--threads": set(),
    },
    "train": {
        **TRAIN_COMMON, "--latents": set(BAD_VALUES) - {""}, "--time": set(), "--coupling": set(),
        "--label-dropout": {"0"}, "--schedule": set(), "--warmup-steps": {"0"}, "--ema-decay": {"0"},
        "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE, "--sample-every": set(), "--dit": set(),
        "--patch-size": set(), "--hidden": set(), "--depth": set(), "--heads": set(), "--log": set(),
        "--precision": set(), "--method": set(), "--equal-fraction": {"0"}, "--init-from": set(), "--teacher": set(),
        "--pairs": set(), "--teacher-solver": set(), "--teacher-nfe": set(), "--train-guidance": {"2.5"},
    },
    "sample": {
        "--run": set(), "--n": set(), "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE,
        "--label": {"0"}, "--seed": {"0"}, "--out": set(), "--grid": set(), "--gif": set(), "--batch-size": set(),
        "--device": set(), "--threads": set(),
    },
    "eval": {
        "--run": set(), "--n": set(), "--solver": set(), "--nfe": set(), "--guidance": ANY_FINITE,
        "--seed": {"0"}, "--data-dir": set(), "--device": set(), "--threads": set(),
    },
}  # fmt: skip


#: the method flags apply only with their --method (fm_cli.flags.add_method)
MEANFLOW_ONLY = ("--equal-fraction", "--init-from", "--train-guidance")
REFLOW_ONLY = ("--teacher", "--pairs", "--teacher-solver", "--teacher-nfe")


def method_args(flag: str, run) -> list[str]:
    if flag in MEANFLOW_ONLY:
        return ["--method", "meanflow"]
    if flag in REFLOW_ONLY:
        return ["--method", "reflow", "--teacher", str(run)]
    return []


def base_args(command: str, run, flag: str = "") -> list[str]:
    common = ["--device", "cpu"]
    if command == "train-vae":
        return ["train-vae", "--out", "vae-run", "--quiet", *common]
    if command == "encode":
        return ["encode", "--vae", "some-vae", "--out", "enc", *common]
    if command == "train":
        return ["train", "--latents", "lat", "--conditional", "--out", "fresh-run", "--quiet", *common,
                *method_args(flag, run)]  # fmt: skip
    if command == "sample":
        return ["sample", "--run", str(run), "--n", "4", "--out", "s.npz", *common]
    return ["eval", "--run", str(run), *common]


#: flags fuzzed by their own tests (fm-cli's eval guidance sweep, issue 22)
ELSEWHERE = {"--guidance-sweep"}


def test_every_value_flag_is_in_the_table(cli_fuzz):
    valued = cli_fuzz.value_flags(cli.build_parser())
    for command, flags in FLAGS.items():
        assert valued[command] - ELSEWHERE == set(flags), (command, valued[command] ^ set(flags))


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


# network flags in combination: (flags, what the one-line usage error names)
NET_COMBOS = [
    (["--hidden", "6"], "divisible by num_heads"),
    (["--hidden", "16384", "--depth", "256"], "at most about 1e+08 parameters"),
    (["--heads", "5", "--hidden", "64"], "divisible by num_heads"),
    (["--patch-size", "3"], "patch"),
    (["--dit", "small", "--heads", "7"], "divisible by num_heads"),
]


@pytest.mark.parametrize("extra, needle", NET_COMBOS, ids=[" ".join(c) for c, _ in NET_COMBOS])
def test_impossible_networks_are_usage_errors(extra, needle, fake_run, cli_fuzz, capsys):
    code, seconds = cli_fuzz.call(cli.main, [*base_args("train", fake_run), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "usage:" in err and "Traceback" not in err, err
    assert needle in err, err


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
    (("latent", "nfe"), 10**20, "nfe=100000000000000000000 is invalid: must be an integer up to 10,000"),
    (("train", "steps"), 10**20, "steps=100000000000000000000 is invalid: must be an integer up to 1,000,000,000"),
    (("train", "batch_size"), 65_537, "batch_size=65537 is invalid: must be an integer up to 65,536"),
    (("train", "warmup_steps"), 10**20, "warmup_steps=100000000000000000000 is invalid: must be an integer up to"),
]


@pytest.mark.parametrize("keys, value, needle", CONFIG_HUGE, ids=[f"{k[-1]}={v}" for k, v, _ in CONFIG_HUGE])
def test_config_json_values_get_the_bounds_of_their_flags(keys, value, needle, fake_run, cli_fuzz, capsys):
    data = json.loads((fake_run / "config.json").read_text())
    data[keys[0]][keys[1]] = value
    (fake_run / "config.json").write_text(json.dumps(data))
    for command in ("sample", "eval"):
        code, _ = cli_fuzz.call(cli.main, base_args(command, fake_run))
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, (command, err)
