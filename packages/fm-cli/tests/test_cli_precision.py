"""--precision, the deprecated --bf16, and the printed precision decision (fm_cli.flags)."""

from __future__ import annotations

import argparse
import logging

import pytest

from fm_cli import flags


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-x")
    flags.add_precision(p)
    flags.add_compile(p)
    return p


def test_precision_flag_values_and_help():
    p = parser()
    given = [flags.precision_given(p, p.parse_args(a), "fm-x") for a in ([], ["--precision", "auto"],
             ["--precision", "fp32"], ["--precision", "bf16"])]  # fmt: skip
    assert given == [None, "auto", "fp32", "bf16"]
    text = p.format_help()
    assert "--precision {auto,fp32,bf16}" in text and "--bf16" not in text  # the old flag is hidden
    assert "(CPU or CUDA)" in text
    assert p.parse_args(["--compile"]).compile is True


def test_old_bf16_flag_means_precision_bf16_with_a_note(capsys):
    p = parser()
    assert flags.precision_given(p, p.parse_args(["--bf16"]), "fm-x") == "bf16"
    assert capsys.readouterr().err.strip() == "fm-x: note: --bf16 is deprecated; use --precision bf16"
    assert flags.precision_given(p, p.parse_args(["--bf16", "--precision", "bf16"]), "fm-x") == "bf16"


def test_old_bf16_flag_contradicting_precision_is_a_usage_error(capsys):
    p = parser()
    with pytest.raises(SystemExit) as e:
        flags.precision_given(p, p.parse_args(["--bf16", "--precision", "auto"]), "fm-x")
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "fm-x: error: --bf16 is the old spelling of --precision bf16 and contradicts --precision auto"
    )


def test_precision_notes_print_fm_train_precision_lines_only_while_inside(capsys):
    log = logging.getLogger("fm_train.precision")
    with flags.precision_notes("fm-x"):
        log.info("precision auto -> fp32 on cpu: bf16 is 20% slower")
        logging.getLogger("fm_train").info("step 100 loss 0.5")  # the loop's own rows stay quiet
    log.info("after")
    assert capsys.readouterr().out == "fm-x: precision auto -> fp32 on cpu: bf16 is 20% slower\n"
    assert not log.handlers
