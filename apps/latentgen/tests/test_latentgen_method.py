"""``fm-latentgen train --method meanflow|reflow`` and one- and two-step sampling, on tiny budgets.

Closed facts, not the app's own output: a two-time DiT fine-tuned from a flow-matching run
(--init-from) has u(x, r, t) = v(x, r) at step 0, so its Euler samples are the teacher's bit for bit;
reflow pairs are the teacher's latents and are generated once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm_latentgen.cli import main

torch.set_num_threads(1)

pytestmark = [pytest.mark.needs_mnist, pytest.mark.filterwarnings("ignore:FID on .* samples")]

TINY_VAE = ["--channels", "8,8,8,8", "--latent-channels", "4", "--batch-size", "8", "--fit-n", "64", "--eval-n", "40",
            "--quiet", "--device", "cpu"]  # fmt: skip
TINY_DIT = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latentgen-method")
    assert main(["train-vae", "--dataset", "mnist", "--steps", "2", "--out", str(root / "vae"), *TINY_VAE]) == 0
    assert main(["encode", "--vae", str(root / "vae" / "vae"), "--dataset", "mnist", "--limit", "120",
                 "--out", str(root / "lat"), "--device", "cpu"]) == 0  # fmt: skip
    base = ["train", "--latents", str(root / "lat"), "--conditional", "--classes", "3,5", "--steps", "3", *TINY_DIT]
    assert main([*base, "--out", str(root / "fm")]) == 0
    assert main([*base, "--method", "meanflow", "--init-from", str(root / "fm"), "--out", str(root / "mf")]) == 0
    assert main([*base, "--method", "reflow", "--teacher", str(root / "fm"), "--pairs", "16", "--teacher-nfe", "2",
                 "--out", str(root / "rf")]) == 0  # fmt: skip
    return root


def test_methods_are_stored(runs):
    mf = json.loads((runs / "mf" / "config.json").read_text())
    assert mf["method"] == {"name": "meanflow", "init_from": str(runs / "fm")}
    assert mf["net"]["config"]["two_time"] is True
    rf = json.loads((runs / "rf" / "config.json").read_text())
    assert rf["method"]["name"] == "reflow" and rf["latent"]["guidance"] == 1.0
    manifest = json.loads((runs / "rf" / "reflow" / "manifest.json").read_text())
    assert manifest["n"] == 16


@pytest.mark.parametrize("nfe", [1, 2])
def test_meanflow_samples_at_nfe_1_and_2(runs, tmp_path, capsys, nfe):
    out = tmp_path / "s.npz"
    code, stdout, _ = run(["sample", "--run", str(runs / "mf"), "--n", "4", "--nfe", str(nfe), "--out", str(out),
                           "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0 and f"flow-map, NFE {nfe}" in stdout
    z = np.load(out)
    assert z["images"].shape == (4, 28, 28) and z["images"].dtype == np.uint8


@pytest.mark.parametrize("nfe", [1, 2])
def test_reflow_samples_at_nfe_1_and_2(runs, tmp_path, capsys, nfe):
    code, stdout, _ = run(["sample", "--run", str(runs / "rf"), "--n", "4", "--solver", "euler", "--nfe", str(nfe),
                           "--out", str(tmp_path / "s.npz"), "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0 and f"euler, NFE {nfe}" in stdout


def test_init_from_gives_the_teachers_samples_at_step_0(runs):
    from fm_latentgen.training import generate, init_from, load_run
    from fm_nets import build_net

    teacher, cfg, vae = load_run(runs / "fm")
    student = build_net(cfg.net, num_classes=cfg.num_classes, **cfg.net_config, two_time=True).eval()
    init_from(student, cfg, runs / "fm")
    for nfe in (1, 2):
        want = generate(teacher, vae, cfg, 4, solver="euler", nfe=nfe, seed=2)
        assert torch.equal(generate(student, vae, cfg, 4, solver="euler", nfe=nfe, seed=2).x, want.x)


def test_eval_reports_straightness(runs, capsys):
    from fm_eval.classifier import weights_path

    if not weights_path("mnist").is_file():
        pytest.skip(f"fm-eval's classifier weights are not there yet ({weights_path('mnist')})")
    code, stdout, _ = run(["eval", "--run", str(runs / "mf"), "--n", "40", "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and "straightness" in stdout
    rec = json.loads((runs / "mf" / "metrics.json").read_text())["eval"][-1]
    assert rec["straightness"]["solver"] == "flow-map" and rec["straightness"]["value"] >= 0


def test_distill_starts_at_zero_loss_on_r_equal_t_rows(runs, capsys, tmp_path):
    """--distill with every row at r = t from the teacher's weights: u(z, r, r) = v_teacher(z, r), loss 0."""
    code, _, err = run(["train", "--latents", str(runs / "lat"), "--conditional", "--classes", "3,5", "--steps", "2",
                        *TINY_DIT, "--method", "meanflow", "--init-from", str(runs / "fm"), "--distill",
                        "--equal-fraction", "1", "--out", str(tmp_path / "d")], capsys)  # fmt: skip
    assert code == 0, err
    assert float((tmp_path / "d" / "loss.csv").read_text().splitlines()[-1].split(",")[1]) == 0.0
    assert json.loads((tmp_path / "d" / "config.json").read_text())["method"]["distill"] is True


def test_bad_method_combinations_exit_2(runs, capsys, tmp_path):
    base = ["train", "--latents", str(runs / "lat"), "--steps", "1", "--out", str(tmp_path / "r")]
    code, _, err = run([*base, "--teacher", str(runs / "fm")], capsys)
    assert code == 2 and "--teacher only with --method reflow" in err
    code, _, err = run([*base, "--method", "meanflow", "--init-from", str(runs / "mf")], capsys)
    assert code == 2 and "is a two-time (meanflow) run" in err
    code, _, err = run([*base, "--method", "meanflow", "--distill"], capsys)
    assert code == 2 and "--distill needs --init-from" in err
    code, _, err = run(["sample", "--run", str(runs / "rf"), "--n", "2", "--solver", "flow-map",
                        "--out", str(tmp_path / "s.npz")], capsys)  # fmt: skip
    assert code == 2 and "--solver flow-map needs a two-time run" in err
