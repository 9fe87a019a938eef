"""The three registries (schedulers, time samplers, couplings) share one lookup: names and aliases
are case-insensitive with "_" read as "-", and errors name the bad value and the allowed names."""

import pytest

from fm_core import (
    COUPLINGS,
    SCHEDULERS,
    TIME_SAMPLERS,
    CondOTScheduler,
    ExactOTCoupling,
    LogitNormalTime,
    PolynomialScheduler,
    get_coupling,
    get_scheduler,
    get_time_sampler,
)

GETTERS = [
    ("scheduler", get_scheduler, SCHEDULERS),
    ("time sampler", get_time_sampler, TIME_SAMPLERS),
    ("coupling", get_coupling, COUPLINGS),
]


@pytest.mark.parametrize("kind, get, names", GETTERS)
def test_every_listed_name_builds(kind, get, names):
    for name in names:
        assert get(name) is not None
        assert type(get(name.upper())) is type(get(name))


@pytest.mark.parametrize("kind, get, names", GETTERS)
@pytest.mark.parametrize("bad", ["nope", 3, None])
def test_unknown_names_list_the_allowed_ones(kind, get, names, bad):
    with pytest.raises(ValueError) as info:
        get(bad)
    assert str(info.value) == f"unknown {kind} {bad!r}; choose one of {', '.join(names)}"


@pytest.mark.parametrize("kind, get, names", GETTERS)
def test_bad_keyword_arguments(kind, get, names):
    with pytest.raises(ValueError, match=f"bad arguments {{'wrong': 1}} for {kind} '{names[0]}'"):
        get(names[0], wrong=1)


def test_aliases():
    for name in ("condot", "Cond-OT", "cond_ot", "linear", "ot"):
        assert isinstance(get_scheduler(name), CondOTScheduler)
    assert isinstance(get_scheduler("poly", n=2), PolynomialScheduler)
    for name in ("logit-normal", "logit_normal", "LogitNormal"):
        assert isinstance(get_time_sampler(name), LogitNormalTime)
    assert isinstance(get_coupling("exact-ot"), ExactOTCoupling)
