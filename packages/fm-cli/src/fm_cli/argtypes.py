"""argparse ``type=`` functions with bounds and one wording.

Every refusal raises ``argparse.ArgumentTypeError("must be WHAT, got 'TEXT'")``, so argparse
prints ``argument --flag: must be a positive integer, got '0'`` and exits with status 2 before
any data or weights are loaded. Upper bounds catch typos such as ``10**20`` that would otherwise
crash a run after its data and model are built.

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--steps", type=positive_int)
    >>> p.parse_args(["--steps", "5"]).steps
    5

Nothing here imports torch; :func:`device_spec` imports fm-train only when it parses a value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "MAX_BATCH",
    "MAX_COUNT",
    "MAX_LABEL",
    "MAX_NFE",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_WIDTH",
    "batch_int",
    "channel_list",
    "check_config_bounds",
    "count_int",
    "device_spec",
    "finite_float",
    "float_in",
    "float_list",
    "int_at_least",
    "int_list",
    "label_int",
    "nfe_int",
    "nonempty_path",
    "nonempty_str",
    "nonneg_float",
    "nonneg_int",
    "one_of",
    "per_key_int",
    "positive_float",
    "positive_int",
    "sample_batch_int",
    "seed_int",
    "steps_int",
    "subset_of",
    "threads_int",
    "unit_float",
    "value_type",
    "warmup_int",
    "width_int",
]

T = TypeVar("T")

#: The widest layer a command line accepts (network widths, channels).
MAX_WIDTH = 16384
#: Upper bounds of the apps' integer flags, and of the same values read back from a run's config.json
#: (fm_cli.images.config, fm_toy2d.config): far beyond any real run, far below int64 overflow.
MAX_STEPS = 10**9  # optimizer steps, warm-up steps, steps between pictures or evaluations
MAX_NFE = 10**4  # velocity evaluations per sample
MAX_BATCH = 65536  # samples per batch (training or sampling)
MAX_COUNT = 10**6  # images or points drawn or scored
MAX_SEED = 2**32 - 1
MAX_LABEL = 65535  # a class id (the run itself says which it has)


def int_at_least(low: int, what: str, high: int | None = None) -> Callable[[str], int]:
    """An integer >= ``low`` (and <= ``high`` when given); ``what`` names it in the message.

    With ``high`` the wording becomes ``"{what} up to {high:,}"``, e.g. "a positive integer up to 1,024".
    """
    if high is not None:
        what = f"{what} up to {high:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def float_in(
    low: float, high: float, what: str, low_open: bool = False, high_open: bool = True
) -> Callable[[str], float]:
    """A number in the interval from ``low`` to ``high`` (open or closed at each end); NaN is refused
    always, and so are infinities unless the interval is closed at that end."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if math.isnan(value) or not (above and below):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


# unbounded building blocks; the apps' flags use the bounded types below them
positive_int = int_at_least(1, "a positive integer")
nonneg_int = int_at_least(0, "an integer >= 0")
batch_int = int_at_least(2, "an integer >= 2", MAX_BATCH)  # a training batch
sample_batch_int = int_at_least(1, "a positive integer", MAX_BATCH)  # a solver batch
seed_int = int_at_least(0, "an integer >= 0", MAX_SEED)
count_int = int_at_least(1, "a positive integer", MAX_COUNT)  # images, evaluations
steps_int = int_at_least(1, "a positive integer", MAX_STEPS)  # --steps, --sample-every
warmup_int = int_at_least(0, "an integer >= 0", MAX_STEPS)  # --warmup-steps
nfe_int = int_at_least(1, "a positive integer", MAX_NFE)  # --nfe
label_int = int_at_least(0, "an integer >= 0", MAX_LABEL)  # --label
threads_int = int_at_least(1, "a positive integer", 1024)
width_int = int_at_least(1, "a positive integer", MAX_WIDTH)  # layer widths
positive_float = float_in(0.0, math.inf, "a positive number", low_open=True)
nonneg_float = float_in(0.0, math.inf, "a number >= 0")
unit_float = float_in(0.0, 1.0, "a number in [0, 1)")
finite_float = float_in(-math.inf, math.inf, "a finite number", low_open=True)


def check_config_bounds(cfg: Any, bounds: Mapping[str, int]) -> None:
    """The command line's upper bounds for the same values read back from a run's config.json: a
    ValueError in ``cfg``'s own wording (a fm_train ``StrictConfig``: ``name=VALUE is invalid: must be
    an integer up to N``) for an integer field above its bound in ``bounds``. None and non-integers
    pass (types and lower bounds are the config's own checks)."""
    for name, high in bounds.items():
        v = getattr(cfg, name)
        if isinstance(v, int) and not isinstance(v, bool) and v > high:
            raise cfg._invalid(name, f"an integer up to {high:,}")


def nonempty_path(text: str) -> Path:
    """A path that is not empty or blank (existence is the command's business)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty path, got {text!r}")
    return Path(text)


def nonempty_str(text: str) -> str:
    """A path or a hub id ("org/name") that is not empty or blank, kept as the string given."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty path or hub id, got {text!r}")
    return text


def device_spec(text: str) -> str:
    """A device this machine has: auto, cpu, cuda, cuda:N, mps (checked by ``fm_train.resolve_device``);
    returns the text unchanged."""
    from fm_train import resolve_device

    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def channel_list(text: str) -> list[int]:
    """1 to 6 comma-separated widths in 1..MAX_WIDTH, e.g. ``32,64,128`` -> [32, 64, 128]."""
    try:
        values = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated widths like 32,64,128, got {text!r}") from None
    if not values or len(values) > 6 or any(not 1 <= v <= MAX_WIDTH for v in values):
        raise argparse.ArgumentTypeError(
            f"must be 1 to 6 comma-separated widths in 1..{MAX_WIDTH} like 32,64,128, got {text!r}"
        )
    return values


def int_list(low: int, *, allow_none: bool = True, high: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers >= ``low`` (and <= ``high`` when given), e.g. ``2,4,8`` -> (2, 4, 8).

    With ``allow_none`` (the default) an empty value or ``none`` gives ``()`` (a sweep dropped).
    """
    hint = (f" up to {high:,}" if high is not None else "") + (" (or 'none')" if allow_none else "")

    def parse(text: str) -> tuple[int, ...]:
        if allow_none and text.strip().lower() in ("", "none"):
            return ()
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= {low}{hint}, got {text!r}") from None
        if any(v < low or (high is not None and v > high) for v in values):
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= {low}{hint}, got {text!r}")
        return values

    parse.__name__ = f"list of integers >= {low}"
    return parse


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers, e.g. ``1,1.5,2`` -> (1.0, 1.5, 2.0)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers like 1,1.5,2, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers like 1,1.5,2, got {text!r}")
    return values


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """Exactly one of ``choices`` (for a type that argparse's ``choices=`` cannot express, e.g. inside
    a list); the message lists them."""
    allowed = tuple(choices)

    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    parse.__name__ = f"one of {', '.join(allowed)}"
    return parse


def subset_of(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A non-empty comma-separated subset of ``choices``, e.g. ``default,post`` -> ("default", "post")."""
    allowed = tuple(choices)

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {', '.join(allowed)}, got {text!r}")
        return values

    parse.__name__ = f"subset of {', '.join(allowed)}"
    return parse


def per_key_int(
    low: int, keys: Sequence[str], key_name: str = "RECIPE", plural: str = "recipes", high: int | None = None
) -> Callable[[str], dict[str, int]]:
    """``N`` (every key) or ``KEY=N,KEY=N`` pairs -> {key or "*": N}, every N >= ``low`` (and <= ``high``
    when given).

    ``per_key_int(2, ("default", "post"))("default=256,64")`` gives {"default": 256, "*": 64}.
    """
    allowed = tuple(keys)

    def parse(text: str) -> dict[str, int]:
        upto = f" up to {high:,}" if high is not None else ""
        msg = f"must be an integer >= {low}{upto} or {key_name}=N pairs ({plural}: {', '.join(allowed)}), got {text!r}"
        out: dict[str, int] = {}
        try:
            for part in text.split(","):
                key, _, val = part.rpartition("=")
                key = key.strip() or "*"
                if key != "*" and key not in allowed:
                    raise ValueError
                out[key] = int(val)
        except ValueError:
            raise argparse.ArgumentTypeError(msg) from None
        if any(v < low or (high is not None and v > high) for v in out.values()):
            raise argparse.ArgumentTypeError(msg)
        return out

    parse.__name__ = f"per-{key_name.lower()} integer"
    return parse


def value_type(parse: Callable[[str], T], name: str | None = None) -> Callable[[str], T]:
    """Turn a parser that raises ``ValueError`` (e.g. a config's ``parse_classes``) into an argparse
    type: its message becomes the usage error as it is."""

    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    wrapped.__name__ = name or str(getattr(parse, "__name__", "value"))
    return wrapped
