"""StrictConfig: dict round trips with nested configs, unknown keys refused with the known ones,
typed validation helpers (bools are not ints), replace; TrainConfig is one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from fm_train import StrictConfig, TrainConfig


@dataclass
class Inner(StrictConfig):
    size: int = 3
    rate: float = 0.5


@dataclass
class Recipe(StrictConfig):
    name: str = "demo"
    width: int = 64
    scale: float | None = 1.0
    kind: str = "a"
    flag: bool = False
    shape: tuple[int, int] = (2, 3)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50))
    inner: Inner | None = None

    def validate(self) -> None:
        self._check_int("width", 1, 4096)
        self._check_real("scale", 0, low_open=True, optional=True)
        self._check_choice("kind", ("a", "b"))
        self._check_bool("flag")


def test_to_dict_is_plain_json_with_nested_dicts():
    r = Recipe(inner=Inner(size=5))
    d = r.to_dict()
    assert d == {"name": "demo", "width": 64, "scale": 1.0, "kind": "a", "flag": False, "shape": [2, 3],
                 "train": TrainConfig(steps=50).to_dict(), "inner": {"size": 5, "rate": 0.5}}  # fmt: skip
    assert isinstance(d["train"], dict) and d["train"]["betas"] == [0.9, 0.999]
    assert json.loads(json.dumps(d)) == d


def test_from_dict_rebuilds_nested_configs():
    r = Recipe(width=32, shape=(4, 5), train=TrainConfig(minutes=2.0, lr=3e-4), inner=Inner(rate=0.25))
    back = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    assert isinstance(back.train, TrainConfig) and back.train.minutes == 2.0 and back.train.steps is None
    assert isinstance(back.inner, Inner) and back.shape == (4, 5) and back.train.betas == (0.9, 0.999)
    # a partial nested dict takes the nested defaults; an absent nested section the field's default
    part = Recipe.from_dict({"train": {"lr": 0.01}})
    assert part.train == TrainConfig(lr=0.01) and part.train.steps == 1000 and part.inner is None


def test_unknown_keys_are_named_with_the_known_ones():
    known = "flag, inner, kind, name, scale, shape, train, width"
    with pytest.raises(ValueError) as err:
        Recipe.from_dict({"width": 8, "colour": "red", "age": 3})
    assert str(err.value) == f"unknown run config key(s) age, colour; known: {known}"
    with pytest.raises(ValueError, match=r"^unknown TrainConfig field\(s\) lrate; known: batch_size, betas, "):
        Recipe.from_dict({"train": {"lrate": 1.0}})
    with pytest.raises(ValueError, match=r"^unknown run config key\(s\) depth; known: rate, size$"):
        Recipe.from_dict({"inner": {"depth": 2}})


@pytest.mark.parametrize("data", [[1, 2], "mnist", None, 3])
def test_from_dict_refuses_a_non_dict(data):
    with pytest.raises(ValueError, match=f"^a run config must be a JSON object, got {type(data).__name__}$"):
        Recipe.from_dict(data)
    with pytest.raises(ValueError, match=f"^TrainConfig must be a JSON object, got {type(data).__name__}$"):
        TrainConfig.from_dict(data)


def test_nested_validation_errors_are_the_nested_config_ones():
    with pytest.raises(ValueError, match=r"^TrainConfig\.lr=-1 is invalid: must be a positive finite number$"):
        Recipe.from_dict({"train": {"lr": -1}})
    with pytest.raises(ValueError, match=r"^TrainConfig must be a JSON object, got list$"):
        Recipe.from_dict({"train": [1]})


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"width": True}, "width=True is invalid: must be an integer in [1, 4096]"),  # a bool is not an int
        ({"width": 4097}, "width=4097 is invalid: must be an integer in [1, 4096]"),
        ({"width": 0}, "width=0 is invalid: must be an integer in [1, 4096]"),
        ({"width": 8.0}, "width=8.0 is invalid: must be an integer in [1, 4096]"),
        ({"scale": True}, "scale=True is invalid: must be a positive finite number or None"),
        ({"scale": 0.0}, "scale=0.0 is invalid: must be a positive finite number or None"),
        ({"scale": float("nan")}, "scale=nan is invalid: must be a positive finite number or None"),
        ({"scale": float("inf")}, "scale=inf is invalid: must be a positive finite number or None"),
        ({"scale": 10**400}, f"scale={10**400!r} is invalid: must be a positive finite number or None"),
        ({"kind": "c"}, "kind='c' is invalid: must be one of a, b"),
        ({"kind": ["a"]}, "kind=['a'] is invalid: must be one of a, b"),
        ({"flag": 1}, "flag=1 is invalid: must be true or false"),
        ({"flag": None}, "flag=None is invalid: must be true or false"),
    ],
)
def test_validation_messages(kw, message):
    with pytest.raises(ValueError) as err:
        Recipe(**kw)
    assert str(err.value) == message


def test_accepted_edges():
    assert Recipe(width=1).width == 1 and Recipe(width=4096).width == 4096
    assert Recipe(scale=None).scale is None and Recipe(scale=3).scale == 3  # an int is a real number
    assert Recipe(flag=True).flag is True


@dataclass
class Bounds(StrictConfig):
    x: float = 0.5
    n: int = 0
    c: object = 1

    def validate(self) -> None:
        self._check_real("x", 0, 1, low_open=True)
        self._check_int("n", 0)
        self._check_choice("c", (0, 1, 2))


def test_bounds_open_and_closed():
    assert Bounds(x=1.0).x == 1.0
    with pytest.raises(ValueError, match=r"^x=0\.0 is invalid: must be a number in \(0, 1\]$"):
        Bounds(x=0.0)
    with pytest.raises(ValueError, match=r"^x=1\.5 is invalid: must be a number in \(0, 1\]$"):
        Bounds(x=1.5)
    with pytest.raises(ValueError, match=r"^n=-1 is invalid: must be an integer >= 0$"):
        Bounds(n=-1)
    with pytest.raises(ValueError, match=r"^n=False is invalid: must be an integer >= 0$"):
        Bounds(n=False)
    with pytest.raises(ValueError, match=r"^c=True is invalid: must be one of 0, 1, 2$"):  # True == 1, but not a choice
        Bounds(c=True)
    assert Bounds(c=2).c == 2


def test_replace_validates_and_refuses_unknown_names():
    r = Recipe()
    r2 = r.replace(width=8, train=TrainConfig(steps=5))
    assert (r2.width, r2.train.steps, r.width) == (8, 5, 64)
    assert r.replace(train={"steps": 7}).train == TrainConfig(steps=7)  # a dict for a nested config
    with pytest.raises(ValueError, match=r"^unknown run config key\(s\) height; known: "):
        r.replace(height=3)
    with pytest.raises(ValueError, match=r"^width=-3 is invalid"):
        r.replace(width=-3)


def test_train_config_is_a_strict_config():
    assert isinstance(TrainConfig(), StrictConfig)
    c = TrainConfig(betas=[0.8, 0.9])  # a list (as JSON gives it) becomes the tuple
    assert c.betas == (0.8, 0.9) and c.to_dict()["betas"] == [0.8, 0.9]
    with pytest.raises(ValueError, match=r"^unknown TrainConfig field\(s\) lrate"):
        TrainConfig().replace(lrate=1.0)
