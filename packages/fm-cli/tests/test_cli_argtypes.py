"""Every argument type: what it accepts (and returns), what it refuses, and the exact message.

The messages are the apps' wording before fm-cli existed ("must be WHAT, got 'TEXT'"), written
out here by hand so that a change of wording fails a test.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from fm_cli import argtypes as at

HUGE = "100000000000000000000000"

# type, accepted text -> value, refused texts, the "must be ..." part of the message
CASES = [
    (
        at.positive_int,
        {"1": 1, "7": 7, HUGE: int(HUGE)},
        ["0", "-1", "2.5", "abc", "", "nan", "1e3"],
        "a positive integer",
    ),
    (at.nonneg_int, {"0": 0, "3": 3}, ["-1", "0.5", "x", ""], "an integer >= 0"),
    (at.batch_int, {"2": 2, "65536": 65536}, ["1", "0", "65537", "-4", "2.0"], "an integer >= 2 up to 65,536"),
    (at.seed_int, {"0": 0, str(2**32 - 1): 2**32 - 1}, ["-1", str(2**32), "s"], "an integer >= 0 up to 4,294,967,295"),
    (at.count_int, {"1": 1, "1000000": 10**6}, ["0", "1000001", HUGE, "1e3"], "a positive integer up to 1,000,000"),
    (at.threads_int, {"1": 1, "1024": 1024}, ["0", "1025", "-2"], "a positive integer up to 1,024"),
    (at.width_int, {"1": 1, "16384": 16384}, ["0", "16385"], "a positive integer up to 16,384"),
    (
        at.positive_float,
        {"2.5": 2.5, "1e23": 1e23, "3": 3.0},
        ["0", "-1", "nan", "inf", "-inf", "", "x"],
        "a positive number",
    ),
    (at.nonneg_float, {"0": 0.0, "0.1": 0.1, "1e23": 1e23}, ["-1", "-1e-9", "nan", "inf", "x"], "a number >= 0"),
    (at.unit_float, {"0": 0.0, "0.999": 0.999}, ["1", "1.5", "-0.1", "nan", "inf"], "a number in [0, 1)"),
    (at.finite_float, {"-1": -1.0, "0": 0.0, "1e23": 1e23}, ["nan", "inf", "-inf", "", "x"], "a finite number"),
]
IDS = [c[3] for c in CASES]


@pytest.mark.parametrize("parse, good, bad, what", CASES, ids=IDS)
def test_accepted_values(parse, good, bad, what):
    for text, value in good.items():
        got = parse(text)
        assert got == value and type(got) is type(value), (text, got)


@pytest.mark.parametrize("parse, good, bad, what", CASES, ids=IDS)
def test_refused_values_and_message(parse, good, bad, what):
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert str(e.value) == f"must be {what}, got {text!r}"


def test_usage_error_names_the_flag_and_value(capsys):
    p = argparse.ArgumentParser(prog="fm-x")
    p.add_argument("--steps", type=at.positive_int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--steps", "0"])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1] == "fm-x: error: argument --steps: must be a positive integer, got '0'"
    )


def test_int_at_least_and_float_in_build_new_types():
    odd = at.int_at_least(3, "an integer >= 3", 9)
    assert odd("3") == 3 and odd("9") == 9
    for text in ("2", "10"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"^must be an integer >= 3 up to 9, got '"):
            odd(text)
    closed = at.float_in(-1.0, 1.0, "a number in [-1, 1]", high_open=False)
    assert closed("-1") == -1.0 and closed("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number in \[-1, 1\], got '1.01'"):
        closed("1.01")
    opened = at.float_in(0.0, 1.0, "a number in (0, 1)", low_open=True)
    with pytest.raises(argparse.ArgumentTypeError):
        opened("0")
    with pytest.raises(argparse.ArgumentTypeError):
        opened("1")
    assert opened("0.5") == 0.5


def test_nonempty_path():
    assert at.nonempty_path("runs/a") == Path("runs/a")
    for text in ("", "   "):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            at.nonempty_path(text)
        assert str(e.value) == f"must be a non-empty path, got {text!r}"


def test_device_spec():
    import torch

    assert at.device_spec("cpu") == "cpu" and at.device_spec("auto") == "auto"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        at.device_spec("tpu")
    assert str(e.value) == "unknown device 'tpu'; use one of auto, cpu, cuda, mps or 'cuda:N'"
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="CUDA is not available"):
            at.device_spec("cuda")


def test_channel_list():
    assert at.channel_list("32,64,128") == [32, 64, 128]
    assert at.channel_list("8") == [8]
    with pytest.raises(argparse.ArgumentTypeError) as e:
        at.channel_list("32,x")
    assert str(e.value) == "must be comma-separated widths like 32,64,128, got '32,x'"
    for text in ("0,8", "1,2,3,4,5,6,7", "16385"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            at.channel_list(text)
        assert str(e.value) == f"must be 1 to 6 comma-separated widths in 1..16384 like 32,64,128, got {text!r}"


def test_int_list():
    parse = at.int_list(2)
    assert parse("2,4,8") == (2, 4, 8) and parse("none") == () and parse("") == () and parse(" None ") == ()
    for text in ("1,4", "2,x", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert str(e.value) == f"must be comma-separated integers >= 2 (or 'none'), got {text!r}"
    strict = at.int_list(1, allow_none=False)
    assert strict("1,2,3") == (1, 2, 3)
    with pytest.raises(argparse.ArgumentTypeError) as e:
        strict("none")
    assert str(e.value) == "must be comma-separated integers >= 1, got 'none'"


def test_float_list():
    assert at.float_list("1,1.5,2") == (1.0, 1.5, 2.0)
    assert at.float_list("-3") == (-3.0,)
    for text in ("1,x", "1,nan", "inf", ""):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            at.float_list(text)
        assert str(e.value) == f"must be comma-separated finite numbers like 1,1.5,2, got {text!r}"


def test_one_of_and_subset_of():
    pick = at.one_of(("fm", "nf"))
    assert pick("nf") == "nf"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        pick("gan")
    assert str(e.value) == "must be one of fm, nf, got 'gan'"
    subset = at.subset_of(("default", "post", "mit"))
    assert subset("post, default") == ("post", "default")
    for text in ("", "post,gan", ","):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            subset(text)
        assert str(e.value) == f"must be a comma-separated subset of default, post, mit, got {text!r}"


def test_per_key_int():
    parse = at.per_key_int(2, ("default", "post"))
    assert parse("64") == {"*": 64}
    assert parse("default=256,post=32") == {"default": 256, "post": 32}
    assert parse("default=256,64") == {"default": 256, "*": 64}
    for text in ("1", "gan=4", "default=x", "default=1", ""):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert str(e.value) == f"must be an integer >= 2 or RECIPE=N pairs (recipes: default, post), got {text!r}"


def test_value_type_passes_the_message_through():
    def parse_even(text: str) -> int:
        v = int(text)
        if v % 2:
            raise ValueError(f"{v} is odd; give an even number")
        return v

    even = at.value_type(parse_even)
    assert even("4") == 4
    with pytest.raises(argparse.ArgumentTypeError) as e:
        even("3")
    assert str(e.value) == "3 is odd; give an even number"
    with pytest.raises(argparse.ArgumentTypeError, match="invalid literal"):
        even("x")


def test_huge_float_is_finite_but_inf_is_not():
    assert math.isfinite(at.positive_float("1e308"))
    with pytest.raises(argparse.ArgumentTypeError):
        at.positive_float("1e309")  # overflows to inf
