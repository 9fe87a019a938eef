"""``--log csv|tensorboard`` (fm_cli.flags.add_log / check_log / make_loggers) and its wiring in the
three apps' train commands: TensorBoard events where the package is installed, else one usage line
before any work."""

from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch
from torch import nn

from fm_cli import flags
from fm_train import CSVLogger, TensorBoardLogger, TrainConfig, Trainer

MESSAGE = "--log tensorboard needs the tensorboard package, which is not installed: pip install tensorboard"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-x")
    flags.add_log(p)
    return p


def test_default_is_csv_and_choices_are_checked(capsys):
    p = _parser()
    assert p.parse_args([]).log == "csv"
    assert [type(lg) for lg in flags.make_loggers("csv", "r")] == [CSVLogger]
    with pytest.raises(SystemExit):
        p.parse_args(["--log", "wandb"])
    assert "invalid choice: 'wandb'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="log must be one of csv, tensorboard, got 'wandb'"):
        flags.make_loggers("wandb", "r")


def _without_tensorboard(monkeypatch):
    """Make the tensorboard package look absent (it is installed in the workspace's dev group)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))


def test_tensorboard_missing_is_one_usage_line(capsys, monkeypatch):
    _without_tensorboard(monkeypatch)
    p = _parser()
    with pytest.raises(SystemExit) as e:
        flags.check_log(p, p.parse_args(["--log", "tensorboard"]).log)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1] == f"fm-x: error: {MESSAGE} (or use --log csv)"


@pytest.mark.parametrize("app", ["fm_pixel", "fm_latentgen", "fm_toy2d"])
def test_apps_refuse_tensorboard_before_any_work(app, tmp_path, capsys, monkeypatch):
    main = pytest.importorskip(f"{app}.cli").main  # the apps are not in fm-cli's own dependencies
    _without_tensorboard(monkeypatch)
    monkeypatch.chdir(tmp_path)
    extra = ["--latents", str(tmp_path)] if app == "fm_latentgen" else []
    with pytest.raises(SystemExit) as e:
        main(["train", "--log", "tensorboard", "--out", str(tmp_path / "run"), "--steps", "1", *extra])
    assert e.value.code == 2 and MESSAGE in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_tensorboard_events_written(tmp_path):
    pytest.importorskip("tensorboard")
    flags.check_log(_parser(), "tensorboard")  # no error
    loggers = flags.make_loggers("tensorboard", tmp_path)
    assert [type(lg) for lg in loggers] == [CSVLogger, TensorBoardLogger]

    class Lin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, t, y=None):
            return self.lin(x)

    def loss_fn(model, batch, ctx):
        return model(batch, None).pow(2).mean()

    cfg = TrainConfig(steps=4, batch_size=4, log_every=2, device="cpu", progress=False)
    Trainer(Lin(), loss_fn, lambda step, g: torch.randn(4, 2, generator=g), cfg, tmp_path, loggers=loggers).train()
    assert (tmp_path / "loss.csv").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
