"""``fm-toy2d train --resume``: a stopped run continues to the weights of an uninterrupted one; a run
whose budget is used says so in one line and changes nothing; options that disagree with the
stored run are refused."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from fm_toy2d.cli import main
from fm_toy2d.config import make_config
from fm_toy2d.training import train

pytestmark = pytest.mark.usefixtures("one_thread")
OPTS = ["--cells", "4", "--steps", "20", "--hidden", "16", "--depth", "1", "--batch-size", "64", "--device", "cpu"]
QUIET = ["--quiet", "--no-pictures"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished 20-step run."""
    run = tmp_path_factory.mktemp("resume") / "done"
    assert main(["train", *OPTS, *QUIET, "--out", str(run)]) == 0
    return run


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(done, tmp_path):
    cfg = make_config(
        "checkerboard", grid=4, steps=20, net={"hidden": 16, "depth": 1}, batch_size=64, seed=0, device="cpu"
    )  # what the options above give
    stopped = tmp_path / "stopped"
    r = train(
        cfg, stopped, progress=False, callback=lambda *a: None, callback_every=10, stop_fn=lambda info: info.step >= 10
    )
    assert r.steps == 10 and r.stopped_by == "callback"
    assert main(["train", "--out", str(stopped), "--resume", *QUIET]) == 0
    for name in ("model", "ema"):
        a, b = (
            load_file(stopped / "checkpoint" / f"{name}.safetensors"),
            load_file(done / "checkpoint" / f"{name}.safetensors"),
        )
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name


def test_resume_with_the_budget_used_changes_nothing(done, capsys):
    assert main(["eval", "--run", str(done), "--n", "500", "--no-nll", "--device", "cpu"]) == 0
    before = (done / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", str(done), "--resume", "--quiet"]) == 0  # pictures on: none may be drawn
    out = capsys.readouterr().out.strip().splitlines()
    assert "nothing to do" in out[-1] and "20 steps" in out[-1] and str(done) in out[-1]
    assert not any("nothing to do" in line for line in out[:-1])
    assert (done / "metrics.json").read_bytes() == before
    assert not (done / "samples.png").exists()


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--lr", "0.5"], ["--resume keeps the run's settings", "--lr 0.5", "the run has 0.002"]),
        (["--steps", "40"], ["--steps 40", "the run has 20"]),
        (["--hidden", "32"], ["network options --hidden"]),
        (["--model", "nf"], ["--model 'nf'", "the run has 'fm'"]),
    ],
)
def test_resume_refuses_other_settings(done, capsys, extra, needles):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(done), "--resume", *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and all(n in err for n in needles), err


def test_resume_needs_out(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume"])
    assert exc.value.code == 2 and "--resume needs --out" in capsys.readouterr().err


def test_nf_run_with_the_budget_used_changes_nothing(tmp_path, capsys):
    run = tmp_path / "nf"
    assert main(["train", "--model", "nf", "--steps", "10", "--hidden", "8", "--depth", "2", "--batch-size", "64",
                 *QUIET, "--out", str(run)]) == 0  # fmt: skip
    terms = (run / "nll_terms.csv").read_bytes()
    flow = (run / "flow" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out.strip().splitlines()[-1]
    assert (run / "nll_terms.csv").read_bytes() == terms and (run / "flow" / "model.safetensors").read_bytes() == flow
    assert not (run / "metrics.json").exists() and not (run / "samples.png").exists()
