"""Unit tests of fm-toy2d's wiring: recipes, the block/per-class OT coupling the recipe builds
(fm_core.ExactOTCoupling), held-out data, the normalizing-flow seam of the CLI."""

from __future__ import annotations

import importlib.machinery
import itertools
import json
import sys
import types

import numpy as np
import pytest
import torch

from fm_core import ExactOTCoupling
from fm_toy2d.cli import NF_MISSING, main
from fm_toy2d.config import DEFAULT_STEPS, RunConfig, make_config
from fm_toy2d.evaluation import heldout_data
from fm_toy2d.training import build_distribution, build_loss, build_model


def test_post_recipe_is_the_blog_posts():
    cfg = make_config("checkerboard", "post")
    assert cfg.net == dict(
        hidden=512, depth=5, time_dim=128, activation="relu", time_embedding="raw", residual=False, fourier_features=0
    )
    assert (cfg.coupling, cfg.time, cfg.batch_size, cfg.lr, cfg.steps, cfg.solver) == (
        "independent",
        "uniform",
        256,
        1e-3,
        2000,
        "euler",
    )
    assert cfg.schedule == "constant" and cfg.ema_decay == 0.0 and cfg.grad_clip is None
    net = build_model(cfg)
    ref = type(net).post_recipe(2)  # fm-nets' own constructor of the post's net
    assert net.config == ref.config
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())


def test_target_follows_the_coupling():
    assert make_config("checkerboard").target == "batch-marginal"
    assert make_config("checkerboard", coupling="ot").target == "conditional"  # OT breaks the posterior weights
    assert make_config("checkerboard", "post").target == "conditional"
    assert build_loss(make_config("checkerboard")).target == "batch-marginal"
    old = make_config("checkerboard", coupling="ot").to_dict()
    del old["target"]  # a run written before the field existed
    assert RunConfig.from_dict(old).target == "conditional"


def test_default_budget_and_overrides():
    cfg = make_config("olympic-rings", conditional=True, steps=None, net={"hidden": 32})
    assert cfg.steps == DEFAULT_STEPS["olympic-rings"] and cfg.conditional and cfg.net["hidden"] == 32
    assert make_config("checkerboard", minutes=1.5).steps is None
    with pytest.raises(ValueError, match="dim=3"):
        make_config("moons", dim=3)
    with pytest.raises(ValueError, match="swissroll"):
        make_config("swissroll")


def test_run_config_json_round_trip_and_unknown_keys():
    cfg = make_config("checkerboard", grid=4, seed=3)
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(ValueError, match="colour"):
        RunConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def _brute_force_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    return min(float(((x0[list(p)] - x1) ** 2).sum()) for p in itertools.permutations(range(len(x0))))


def test_block_ot_is_optimal_per_block_and_a_permutation():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(12, 2, generator=g), torch.rand(12, 2, generator=g) * 8 - 4
    coupling = build_loss(make_config("checkerboard", coupling="ot", ot_block=6)).coupling
    assert isinstance(coupling, ExactOTCoupling) and coupling.block == 6 and not coupling.by_label
    out = coupling(x0, x1)
    assert sorted(out.x0_index.tolist()) == list(range(12))
    assert torch.equal(out.x1, x1) and torch.equal(out.x0, x0[out.x0_index])
    for blk in (slice(0, 6), slice(6, 12)):
        assert sorted(out.x0_index[blk].tolist()) == list(range(12))[blk]  # stays inside its block
        cost = float(((out.x0[blk] - x1[blk]) ** 2).sum())
        assert cost == pytest.approx(_brute_force_cost(x0[blk], x1[blk]), rel=1e-9)


def test_block_ot_couples_within_labels():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    coupling = build_loss(make_config("olympic-rings", conditional=True, coupling="ot")).coupling
    assert isinstance(coupling, ExactOTCoupling) and coupling.block == 256 and coupling.by_label
    out = coupling(x0, x1, y)
    assert torch.equal(out.y, y)
    assert torch.equal(y[out.x0_index], y)  # every point got noise from its own class's slots
    assert sorted(out.x0_index.tolist()) == list(range(40))


def test_heldout_data_is_not_the_training_stream():
    cfg = make_config("checkerboard", grid=4, seed=0)
    dist = build_distribution(cfg)
    held, _ = heldout_data(cfg, dist, 256)
    first_batch = dist.sample(256, generator=torch.Generator().manual_seed(cfg.seed))  # Trainer's stream
    assert held.shape == (256, 2)
    assert not torch.isclose(held[:, None, :], first_batch[None], atol=1e-6).all(-1).any()


def test_model_nf_without_backend_is_a_clear_usage_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "fm_toy2d.nf", None)  # make sure no backend is importable
    monkeypatch.setattr("fm_toy2d.cli._nf_module", lambda: None)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "nf", "--dataset", "olympic-rings"])
    assert exc.value.code == 2
    assert NF_MISSING in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no work was done


def test_model_nf_delegates_to_the_nf_module(tmp_path, monkeypatch):
    calls = {}
    fake = types.ModuleType("fm_toy2d.nf")
    fake.__spec__ = importlib.machinery.ModuleSpec("fm_toy2d.nf", None)

    def train(cfg, run_dir, progress=True, resume=False):
        calls["train"] = cfg
        calls["progress"] = progress
        (run_dir / "checkpoint").mkdir(parents=True)  # the CLI refuses runs without a checkpoint
        (run_dir / "config.json").write_text(
            json.dumps({"app": "fm-toy2d", "model": "nf", "toy2d": {k: v for k, v in cfg.items() if k != "user_set"}})
        )

    def sample(run_dir, n, label, seed):
        calls["sample"] = (n, label, seed)
        return torch.zeros(n, 2), torch.full((n,), label)

    fake.train, fake.sample = train, sample
    fake.evaluate = lambda run_dir, n, seed, n_nll, nll: (
        calls.setdefault("evaluate", (n, seed, n_nll, nll)) and {"nll": None}
    )
    fake.pictures = lambda run_dir: calls.setdefault("pictures", []) or []
    monkeypatch.setitem(sys.modules, "fm_toy2d.nf", fake)

    run = tmp_path / "nf"
    assert (
        main(
            [
                "train",
                "--model",
                "nf",
                "--dataset",
                "olympic-rings",
                "--conditional",
                "--steps",
                "7",
                "--quiet",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    cfg = calls["train"]
    assert calls["progress"] is False  # --quiet
    assert cfg["model"] == "nf" and cfg["dataset"] == "olympic-rings" and cfg["conditional"] and cfg["steps"] == 7
    assert {"conditional", "steps"} <= set(cfg["user_set"]) and "batch_size" not in cfg["user_set"]
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run), "--n", "5", "--label", "2", "--seed", "4", "--out", str(out)]) == 0
    assert calls["sample"] == (5, 2, 4)
    assert np.load(out)["y"].tolist() == [2] * 5
    with pytest.raises(SystemExit) as exc:  # flows have no ODE solver
        main(["sample", "--run", str(run), "--n", "5", "--nfe", "8", "--out", str(out)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # the CLI checks the label range before delegating
        main(["sample", "--run", str(run), "--n", "5", "--label", "5", "--out", str(out)])
    assert exc.value.code == 2 and calls["sample"] == (5, 2, 4)
    assert main(["eval", "--run", str(run), "--n", "9", "--n-nll", "11", "--no-nll"]) == 0
    assert calls["evaluate"] == (9, None, 11, False)  # seed None: the backend derives it from the run's


def test_model_nf_uses_the_real_backend():
    from fm_toy2d import nf
    from fm_toy2d.cli import _nf_module

    assert _nf_module() is nf
    for name in ("train", "sample", "evaluate", "pictures"):
        assert callable(getattr(nf, name)), name
