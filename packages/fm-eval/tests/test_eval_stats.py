"""Tests of fm_eval.stats: steps-to-target extraction, censored medians over seeds and the log-log
fits with t intervals, against closed forms. The first tests came from fm-toy2d's study tests
(apps/toy2d/tests/test_toy2d_study.py) with their assertions unchanged; the study's thresholds
(>= 0.95 in filled cells, every filled cell >= 0.8 of its share) are passed as arguments here."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest

from fm_eval.stats import (
    Fit,
    Outcome,
    fit_power_law,
    fit_two_factors,
    format_interval,
    median_steps,
    ols,
    steps_to_target,
)

#: the toy2d study's target: >= 95% of samples in filled cells and every filled cell >= 0.8 of its share
TARGET = {"in_support": 0.95, "min_cell_ratio": 0.8}


def n_filled(grid: int, dim: int) -> int:
    """Filled cells of a checkerboard with ``grid`` cells per side in ``dim`` dimensions: ceil(grid^dim / 2)."""
    return (grid**dim + 1) // 2


def _row(step=0, in_support=0.0, min_cell=None, stage="full"):
    """One evaluation row as read back from the study's CSV (strings; "" where not measured)."""
    return {"step": str(step), "stage": stage, "in_support": f"{in_support:.6g}",
            "min_cell_ratio": "" if min_cell is None else f"{min_cell:.6g}"}  # fmt: skip


# ----------------------------------------------------------------------------- extraction (from fm-toy2d)
def test_steps_to_target_is_the_first_evaluation_meeting_both_conditions():
    # in_support(s) = 1 - 0.5 exp(-s / 500) passes 0.95 at s = 500 ln 10 = 1151.3; the smallest cell
    # ratio s / 2000 passes 0.8 at s = 1600. Evaluations every 250 steps: the first one meeting both
    # is ceil(1600 / 250) * 250 = 1750.
    rows = [_row(step=s, in_support=1 - 0.5 * math.exp(-s / 500), min_cell=s / 2000) for s in range(250, 2001, 250)]
    rows.append(_row(step=2250, in_support=0.5, min_cell=0.1))  # a later dip does not undo the first crossing
    assert 500 * math.log(10) < 1250 and steps_to_target(rows[::-1], TARGET) == (1750, 2250)  # order is irrelevant
    # the cell condition alone: a run with in_support always 0.99 reaches at ceil(0.8 * 2000 / 250) * 250 as well
    assert (
        steps_to_target([_row(step=s, in_support=0.99, min_cell=s / 2000) for s in range(250, 2001, 250)], TARGET)[0]
        == 1750
    )
    # exactly at the thresholds counts as met
    assert steps_to_target([_row(step=100, in_support=0.95, min_cell=0.8)], TARGET) == (100, 100)


def test_screen_rows_never_meet_the_target_and_censoring_keeps_the_last_step():
    rows = [_row(step=s, in_support=0.99, stage="screen") for s in (100, 200, 300)]  # no cell ratio measured
    assert steps_to_target(rows, TARGET) == (None, 300)
    assert steps_to_target([], TARGET) == (None, 0)


def _outcome(steps=None, censored_at=None, seed=0):
    return Outcome(steps=steps, censored_at=censored_at)


def test_median_over_seeds_with_censoring():
    o = _outcome
    assert median_steps([o(300), o(100), o(200)]) == (200, "200")
    assert median_steps([o(100), o(200), o(None, 3000)]) == (200, "200")  # a censored run counts as the largest
    assert median_steps([o(100), o(None, 3000), o(None, 3000)]) == (None, ">3000")
    assert median_steps([o(100), o(200), o(300), o(None, 3000)]) == (250, "250")
    # stopped by the budget at 250, below a reached 300: its order is unknown, and so is the median
    assert median_steps([o(100), o(300), o(None, 250)]) == (None, "?")
    assert median_steps([]) == (None, "?")


# ----------------------------------------------------------------------------- fits (from fm-toy2d)
def test_power_law_fit_recovers_a_known_exponent():
    cells = [8, 18, 32, 50, 72]
    exact = fit_power_law(cells, [40.0 * c**1.5 for c in cells])
    assert exact.coef[0] == pytest.approx(1.5, abs=1e-10) and math.exp(exact.intercept) == pytest.approx(40.0, rel=1e-9)
    assert exact.low[0] == pytest.approx(1.5, abs=1e-6) and exact.high[0] == pytest.approx(1.5, abs=1e-6)
    # three "seeds" per setting with log-noise -0.1, 0, +0.1: balanced at every x, so least squares
    # gives exactly 1.5 again, now with an interval of positive width around it
    x, y = [], []
    for c in cells:
        for e in (-0.1, 0.0, 0.1):
            x.append(c)
            y.append(40.0 * c**1.5 * math.exp(e))
    noisy = fit_power_law(x, y)
    assert noisy.coef[0] == pytest.approx(1.5, abs=1e-10) and noisy.n == 15
    assert noisy.low[0] < 1.5 - 1e-3 and noisy.high[0] > 1.5 + 1e-3 and noisy.high[0] - noisy.low[0] < 0.5
    assert math.exp(noisy.intercept + noisy.coef[0] * math.log(32)) == pytest.approx(40.0 * 32**1.5, rel=1e-9)


def test_fits_need_identifiable_data():
    assert fit_power_law([8, 8, 8], [100, 120, 140]) is None  # one setting: no slope
    assert fit_power_law([8], [100]) is None
    two = fit_power_law([8, 32], [100, 400])  # two points: slope exactly log 4 / log 4 = 1, no interval
    assert two.coef[0] == pytest.approx(1.0) and two.low[0] is None


def test_two_factor_fit_recovers_both_coefficients():
    pts = [(g, d) for g in (2, 3, 4) for d in (2, 3, 4)]
    cells = [n_filled(g, d) for g, d in pts]
    dims = [d for _, d in pts]
    fit = fit_two_factors(cells, dims, [10.0 * c**0.7 * math.exp(0.3 * d) for c, d in zip(cells, dims)])
    assert fit.coef == pytest.approx([0.7, 0.3], abs=1e-9)
    assert fit_two_factors([2, 4, 8], [2, 3, 4], [1.0, 2.0, 3.0]) is None  # cells = 2^(d-1): not separable


# ----------------------------------------------------------------------------- closed forms
def test_noise_free_power_law_is_recovered_exactly_with_a_zero_width_interval():
    # y = 3 x^-0.5: log y = log 3 - 0.5 log x exactly, so the residuals (and the interval) are zero
    # up to floating-point rounding
    x = [1.0, 2.0, 4.0, 8.0, 16.0, 100.0]
    fit = fit_power_law(x, [3.0 * v**-0.5 for v in x])
    assert fit.n == 6 and fit.coef[0] == pytest.approx(-0.5, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log(3.0), abs=1e-12)
    assert fit.high[0] - fit.low[0] == pytest.approx(0.0, abs=1e-9)
    assert fit.low[0] == pytest.approx(-0.5, abs=1e-9) and fit.high[0] == pytest.approx(-0.5, abs=1e-9)
    assert format_interval(fit, 0) == "[-0.50, -0.50]"


def test_interval_is_the_t_interval_of_simple_regression():
    # log x = 0, 1, 2, 3 and log y = 0, 1, 1, 2: slope Sxy / Sxx = 3 / 5 = 0.6, intercept 1 - 0.6 * 1.5 = 0.1,
    # residuals -0.1, 0.3, -0.3, 0.1 (sum of squares 0.2, 2 dof: s^2 = 0.1), se = sqrt(0.1 / 5);
    # t quantiles with 2 dof: t_0.975 = 4.302652729911275, t_0.95 = 2.919985580355516
    x = [math.exp(k) for k in (0, 1, 2, 3)]
    y = [math.exp(v) for v in (0, 1, 1, 2)]
    se = math.sqrt(0.1 / 5)
    fit = fit_power_law(x, y)
    assert fit.coef[0] == pytest.approx(0.6, abs=1e-12) and fit.intercept == pytest.approx(0.1, abs=1e-12)
    assert fit.low[0] == pytest.approx(0.6 - 4.302652729911275 * se, abs=1e-9)
    assert fit.high[0] == pytest.approx(0.6 + 4.302652729911275 * se, abs=1e-9)
    f90 = fit_power_law(x, y, level=0.9)
    assert (f90.low[0], f90.high[0]) == pytest.approx(
        (0.6 - 2.919985580355516 * se, 0.6 + 2.919985580355516 * se), abs=1e-9
    )
    assert format_interval(fit, 0) == "[-0.01, 1.21]" and format_interval(fit, 0, digits=3) == "[-0.008, 1.208]"
    # the same regression through ols on log x directly
    direct = ols([[0.0], [1.0], [2.0], [3.0]], [0.0, 1.0, 1.0, 2.0])
    assert direct.coef == pytest.approx(fit.coef, abs=1e-12) and direct.low == pytest.approx(fit.low, abs=1e-12)
    assert direct.to_dict() == {"coef": direct.coef, "low": direct.low, "high": direct.high,
                                "intercept": direct.intercept, "n": 4}  # fmt: skip


def test_format_interval_without_degrees_of_freedom():
    two = Fit(coef=[1.0], low=[None], high=[None], intercept=0.0, n=2)
    assert format_interval(two, 0) == "(no interval: as many points as parameters)"
    with pytest.raises(ValueError, match="index 1"):
        format_interval(two, 1)


def test_censored_median_with_more_than_half_censored_is_not_reached():
    # 5 seeds, 3 of them censored at the cap 1000 (above every reached step): the median (3rd of 5)
    # is a censored run, known only to exceed 1000
    runs = [Outcome(400), Outcome(700), Outcome(None, 1000), Outcome(None, 1000), Outcome(None, 1000)]
    assert median_steps(runs) == (None, ">1000")
    # exactly half censored (2 of 4): the two middle runs are one reached and one censored -> not determined
    # as a number, reported as exceeding the reached one
    assert median_steps([Outcome(400), Outcome(700), Outcome(None, 1000), Outcome(None, 1000)]) == (None, ">700")
    # fewer than half censored: the censored run counts as the largest, the median is (700 + 900) / 2
    assert median_steps([Outcome(400), Outcome(700), Outcome(900), Outcome(None, 1000)]) == (800.0, "800")
    assert Outcome(400).reached and not Outcome(None, 1000).reached


def test_median_reads_any_object_with_steps_and_censored_at():
    Run = namedtuple("Run", "seed recipe steps censored_at")
    runs = [Run(0, "a", 300, None), Run(1, "a", None, 5000), Run(2, "a", 100, None)]
    assert median_steps(runs) == (300, "300")
    with pytest.raises(ValueError, match="censored_at"):
        median_steps([Outcome(None, None)])


def test_steps_to_target_generic_metrics_and_keys():
    rows = [{"it": 30, "acc": 0.99, "loss_ok": 1.0}, {"it": 10, "acc": 0.99, "loss_ok": 0.0},
            {"it": 20, "acc": None, "loss_ok": 1.0}]  # fmt: skip
    assert steps_to_target(rows, {"acc": 0.9, "loss_ok": 1.0}, step_key="it") == (30, 30)
    assert steps_to_target(rows, {"acc": 0.9}, step_key="it") == (10, 30)
    assert steps_to_target(rows, {"missing": 0.0}, step_key="it") == (None, 30)  # never measured: never met
    with pytest.raises(ValueError, match="targets is empty"):
        steps_to_target(rows, {}, step_key="it")


def test_fit_input_errors():
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 0, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2, 3], [1, -2, 3])
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="same length"):
        fit_two_factors([1, 2, 3], [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="X \\[n, k\\] and y \\[n\\]"):
        ols([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        ols([[1.0], [float("nan")], [3.0]], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="level"):
        ols([[1.0], [2.0], [3.0]], [1.0, 2.0, 3.0], level=95)
