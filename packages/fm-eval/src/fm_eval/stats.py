"""Statistics of steps-to-target studies: when a run first meets a quality target, the median over
seeds with censored runs, and log-log least-squares growth fits with t intervals.

A *run* is evaluated every so many training steps; it either reaches the target (``steps``: the
first evaluated step that meets it) or is *censored* (``censored_at``: the last evaluated step,
the target not met by then: a step cap, a time budget or an early stop). Nothing here knows what
is trained or measured: metric names and thresholds are arguments.

- :func:`steps_to_target`: (first step meeting every threshold or None, last step) of one run's
  evaluation rows (dicts as read from a CSV).
- :func:`median_steps`: median steps over seeds when some runs are censored.
- :func:`ols`, :func:`fit_power_law` (y ~ C x^a), :func:`fit_two_factors` (y ~ C x^a exp(b z)):
  least squares on log(y) with two-sided t intervals for the coefficients (:class:`Fit`);
  :func:`format_interval` writes one interval for people.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Fit",
    "Outcome",
    "StepsOutcome",
    "fit_power_law",
    "fit_two_factors",
    "format_interval",
    "median_steps",
    "ols",
    "steps_to_target",
]


# ----------------------------------------------------------------------------- one run
def _num(v: Any) -> float | None:
    """A metric value from a row: None or "" (not measured) -> None, else float."""
    if v is None or v == "":
        return None
    return float(v)


def steps_to_target(
    rows: Iterable[Mapping[str, Any]], targets: Mapping[str, float], *, step_key: str = "step"
) -> tuple[int | None, int]:
    """(first step whose row meets every target, or None; last evaluated step) of one run's rows.

    rows: one mapping per evaluation with ``step_key`` and the metrics, numbers or strings as read
    from a CSV, in any order. targets: {metric name: threshold}; a row meets them when every named
    metric is present (not None or "") and >= its threshold, so a row that did not measure one
    (e.g. a cheap screening row) never does. A later row that falls back below a threshold does
    not undo an earlier crossing. No rows: (None, 0).

    >>> steps_to_target([{"step": "200", "acc": "0.97"}, {"step": "100", "acc": "0.9"}], {"acc": 0.95})
    (200, 200)
    """
    if not targets:
        raise ValueError("targets is empty: give at least one {metric name: threshold}")
    first, last = None, 0
    for r in sorted(rows, key=lambda r: int(float(r[step_key]))):
        step = int(float(r[step_key]))
        last = max(last, step)
        if first is None:
            values = [_num(r.get(name)) for name in targets]
            if all(v is not None and v >= thr for v, thr in zip(values, targets.values(), strict=True)):
                first = step
    return first, last


class StepsOutcome(Protocol):
    """What :func:`median_steps` reads of a run: ``steps`` (reached) or None with ``censored_at``."""

    @property
    def steps(self) -> int | None: ...

    @property
    def censored_at(self) -> int | None: ...


@dataclass
class Outcome:
    """Steps to target of one run: ``steps`` when it reached the target, else None and
    ``censored_at``, the last evaluated step (the target was not met by then)."""

    steps: int | None
    censored_at: int | None = None

    @property
    def reached(self) -> bool:
        return self.steps is not None


# ----------------------------------------------------------------------------- over seeds
def median_steps(runs: Sequence[StepsOutcome]) -> tuple[float | None, str]:
    """Median steps to target over runs (seeds), with censoring.

    A censored run counts as larger than every reached one when it was censored at or after the
    largest reached step (always true when censored at the step cap); otherwise its order is
    unknown, and so may be the median. Returns (value or None, text): the value (the mean of the
    two middle runs for an even count) when the middle runs all reached the target; None and
    ``">N"`` when a middle run is censored (the median is known only to exceed N, the lower middle
    run's step: half or more of the runs censored); None and ``"?"`` when undetermined or when
    there are no runs.
    """
    if not runs:
        return None, "?"
    for o in runs:
        if o.steps is None and o.censored_at is None:
            raise ValueError(
                f"a run that did not reach the target needs censored_at (its last evaluated step), got {o!r}"
            )
    top = max((o.steps for o in runs if o.steps is not None), default=0)
    if any(o.steps is None and o.censored_at < top for o in runs):  # type: ignore[operator]
        return None, "?"
    key = sorted(runs, key=lambda o: (o.steps is None, o.steps if o.steps is not None else o.censored_at))
    n = len(key)
    mid = key[(n - 1) // 2 : n // 2 + 1]
    if all(o.steps is not None for o in mid):
        v = sum(o.steps for o in mid) / len(mid)  # type: ignore[misc]
        return v, f"{v:g}"
    low = mid[0]
    return None, f">{low.steps if low.steps is not None else low.censored_at}"


# ----------------------------------------------------------------------------- fits
@dataclass
class Fit:
    """Least squares y = intercept + sum(coef * features) (y is log(steps) in the growth fits):
    ``coef`` [k] with two-sided t intervals ``low``/``high`` at the level asked for (n - k - 1
    degrees of freedom; None where there are none: as many points as parameters); n points."""

    coef: list[float]
    low: list[float | None]
    high: list[float | None]
    intercept: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ols(
    X: Sequence[Sequence[float]] | np.ndarray, y: Sequence[float] | np.ndarray, *, level: float = 0.95
) -> Fit | None:
    """Ordinary least squares of y [n] on the columns of X [n, k] plus an intercept.

    Intervals: coef_i +- t_{(1 + level) / 2, n - k - 1} * se_i with se from s^2 (A^T A)^-1, s^2 the
    residual variance (zero residuals: zero-width intervals). None when the coefficients are not
    identifiable: fewer than k + 1 points or [1, X] of rank below k + 1.
    """
    from scipy import stats as sps  # imported here: scipy.stats takes about a second to import

    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"ols needs X [n, k] and y [n], got shapes {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("ols: X and y must be finite (no NaN or inf)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    n, k = X.shape
    if n < k + 1:
        return None
    A = np.column_stack([np.ones(n), X])
    if np.linalg.matrix_rank(A) < k + 1:
        return None
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    dof = n - k - 1
    low: list[float | None] = [None] * k
    high: list[float | None] = [None] * k
    if dof > 0:
        resid = y - A @ beta
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.inv(A.T @ A)
        tq = float(sps.t.ppf(0.5 + level / 2.0, dof))
        for i in range(k):
            se = math.sqrt(max(cov[i + 1, i + 1], 0.0))
            low[i], high[i] = float(beta[i + 1] - tq * se), float(beta[i + 1] + tq * se)
    return Fit(coef=[float(b) for b in beta[1:]], low=low, high=high, intercept=float(beta[0]), n=n)


def _positive(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).reshape(-1)
    if not (np.isfinite(a).all() and (a > 0).all()):
        raise ValueError(f"{name} must be positive and finite (its logarithm is fitted), got {a.tolist()}")
    return a


def fit_power_law(x: Sequence[float], y: Sequence[float], *, level: float = 0.95) -> Fit | None:
    """Least squares of log(y) on log(x): y ~ C x^a with ``coef[0]`` = a, ``intercept`` = log C.

    x, y: positive, one point per run (e.g. x = modes, y = steps to target). None without at
    least two distinct x values.
    """
    lx, ly = _positive("x", x), _positive("y", y)
    if lx.shape != ly.shape:
        raise ValueError(f"x and y must have the same length, got {lx.shape[0]} and {ly.shape[0]}")
    return ols(np.log(lx)[:, None], np.log(ly), level=level)


def fit_two_factors(x: Sequence[float], z: Sequence[float], y: Sequence[float], *, level: float = 0.95) -> Fit | None:
    """log(y) = c + a log(x) + b z, i.e. y ~ C x^a exp(b z): ``coef`` = [a, b].

    x, y positive; z any finite numbers (e.g. x = modes, z = dimension, y = steps). None when a
    and b are not identifiable (fewer than 3 points, or log(x) and z collinear).
    """
    lx, ly = _positive("x", x), _positive("y", y)
    zz = np.asarray(z, dtype=float).reshape(-1)
    if not lx.shape == zz.shape == ly.shape:
        raise ValueError(f"x, z and y must have the same length, got {lx.shape[0]}, {zz.shape[0]} and {ly.shape[0]}")
    return ols(np.column_stack([np.log(lx), zz]), np.log(ly), level=level)


def format_interval(fit: Fit, i: int, digits: int = 2) -> str:
    """``[low, high]`` of coefficient ``i`` with ``digits`` decimals, or a note when it has none."""
    if not 0 <= i < len(fit.coef):
        raise ValueError(f"coefficient index {i} out of range: the fit has {len(fit.coef)}")
    lo, hi = fit.low[i], fit.high[i]
    if lo is None or hi is None:
        return "(no interval: as many points as parameters)"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"
