"""``fm-pixel train --method meanflow|reflow`` and one- and two-step sampling, on tiny budgets.

Closed facts, not the app's own output: a two-time network fine-tuned from a flow-matching run
(--init-from) has u(x, r, t) = v(x, r) at step 0, so its Euler samples (through u(x, t, t)) are
the teacher's bit for bit, and one flow-map step x1 = x0 + u(x0, 0, 1) is one Euler step of the
teacher (two flow-map steps: two Euler steps).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm_pixel.cli import main

torch.set_num_threads(1)

pytestmark = pytest.mark.needs_mnist  # apps/conftest.py

TINY = ["--channels", "8,16", "--patch-size", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]
COND = ["--dataset", "mnist", "--classes", "3,5", "--conditional"]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel-method")
    assert main(["train", *COND, "--steps", "3", "--out", str(root / "fm"), *TINY]) == 0
    assert main(["train", *COND, "--steps", "3", "--method", "meanflow", "--equal-fraction", "0.5",
                 "--out", str(root / "mf"), *TINY]) == 0  # fmt: skip
    return root


def test_meanflow_run_is_stored_two_time(runs):
    cfg = json.loads((runs / "mf" / "config.json").read_text())
    assert cfg["method"] == {"name": "meanflow", "equal_fraction": 0.5}
    assert cfg["net"]["config"]["two_time"] is True
    assert json.loads((runs / "fm" / "config.json").read_text())["method"] == {"name": "fm"}


def test_train_guidance_is_stored_and_sampling_defaults_to_guidance_1(runs, tmp_path, capsys):
    out = tmp_path / "g"
    code, _, err = run(["train", *COND, "--steps", "1", "--method", "meanflow", "--train-guidance", "2",
                        "--out", str(out), *TINY], capsys)  # fmt: skip
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == {"name": "meanflow", "train_guidance": 2.0}
    assert cfg["pixel"]["guidance"] == 1.0  # the guidance is in the network: one evaluation per step


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--dataset", "mnist", "--classes", "3,5"], "--train-guidance needs --conditional"),
        ([*COND, "--label-dropout", "0"], "--train-guidance needs --label-dropout > 0"),
        ([*COND, "--method", "fm"], "--train-guidance only with --method meanflow"),
        ([*COND, "--train-guidance", "0.5"], "a guidance scale in [1, 100]"),
    ],
)
def test_train_guidance_usage_errors(extra, needle, capsys, tmp_path):
    argv = ["train", "--steps", "1", "--method", "meanflow", "--train-guidance", "2", *extra, "--out",
            str(tmp_path / "r"), *TINY]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.parametrize("nfe", [1, 2])
def test_meanflow_samples_at_nfe_1_and_2(runs, tmp_path, capsys, nfe):
    out = tmp_path / "s.npz"
    code, stdout, _ = run(["sample", "--run", str(runs / "mf"), "--n", "6", "--nfe", str(nfe), "--out", str(out),
                           "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0
    assert f"flow-map, NFE {nfe}" in stdout  # flow-map is a two-time run's default solver
    z = np.load(out)
    assert z["images"].shape == (6, 28, 28) and z["images"].dtype == np.uint8
    assert set(z["labels"].tolist()) == {3, 5}


def test_meanflow_samples_with_an_ode_solver(runs, tmp_path, capsys):
    code, stdout, _ = run(["sample", "--run", str(runs / "mf"), "--n", "2", "--solver", "midpoint", "--nfe", "4",
                           "--out", str(tmp_path / "s.npz"), "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0 and "midpoint, NFE 4" in stdout


def test_init_from_gives_the_teachers_samples_at_step_0(runs):
    from fm_pixel.sampling import generate, load_run, read_run_config
    from fm_pixel.training import build_model, init_from

    teacher, cfg = load_run(runs / "fm")
    student = build_model(cfg, two_time=True).eval()
    init_from(student, cfg, runs / "fm")
    for nfe in (1, 2):
        want = generate(teacher, cfg, 6, solver="euler", nfe=nfe, seed=3)
        got = generate(student, cfg, 6, solver="euler", nfe=nfe, seed=3)
        assert torch.equal(got.x, want.x)  # u(x, t, t) = v(x, t) exactly
        flow = generate(student, cfg, 6, solver="flow-map", nfe=nfe, seed=3)  # x + h u(x, r, r + h) = x + h v(x, r)
        assert (flow.x.int() - want.x.int()).abs().max() <= 1  # uint8 rounding of float-level differences
    assert read_run_config(runs / "fm")[1]["method"]["name"] == "fm"


def test_init_from_trains(runs, capsys, tmp_path):
    code, stdout, _ = run(["train", *COND, "--steps", "2", "--method", "meanflow", "--init-from", str(runs / "fm"),
                           "--out", str(tmp_path / "ft"), *TINY], capsys)  # fmt: skip
    assert code == 0 and "trained 2 steps" in stdout
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["method"]["init_from"] == str(runs / "fm")
    from PIL import Image

    from fm_cli.pictures import CAPTION_HEIGHT

    with Image.open(tmp_path / "ft" / "samples.png") as im:  # NFE 1, NFE 2, the teacher: 2 rows of 8 each
        assert im.size[1] == 2 * (6 * 30 + 2) + CAPTION_HEIGHT and im.size[0] > 2 * (8 * 30 + 2)


def test_distill_starts_at_zero_loss_on_r_equal_t_rows(runs, capsys, tmp_path):
    """--distill: the target is the teacher's velocity. With every row at r = t and the student starting
    from the teacher's weights, u(z, r, r) = v_teacher(z, r) row for row, so the loss is exactly 0 (no
    gradient, so it stays 0); the conditional velocity's target leaves a loss near 1 (adaptive weight)."""
    common = ["train", *COND, "--steps", "2", "--method", "meanflow", "--init-from", str(runs / "fm"),
              "--equal-fraction", "1", *TINY]  # fmt: skip
    losses = {}
    for name, extra in (("d", ["--distill"]), ("c", [])):
        code, _, err = run([*common, "--out", str(tmp_path / name), *extra], capsys)
        assert code == 0, err
        losses[name] = float((tmp_path / name / "loss.csv").read_text().splitlines()[-1].split(",")[1])
    assert losses["d"] == 0.0 and losses["c"] > 0.5, losses
    stored = json.loads((tmp_path / "d" / "config.json").read_text())["method"]
    assert stored["distill"] is True and stored["init_from"] == str(runs / "fm")
    code, stdout, _ = run(["train", "--resume", "--out", str(tmp_path / "d"), "--steps", "3", "--quiet"], capsys)
    assert code == 0 and "trained 3 steps" in stdout  # the teacher is loaded again on resume


def test_init_from_another_network_is_one_line(runs, capsys, tmp_path):
    other = [a if a != "8,16" else "8,8" for a in TINY]
    code, _, err = run(["train", *COND, "--steps", "1", "--method", "meanflow", "--init-from", str(runs / "fm"),
                        "--out", str(tmp_path / "x"), *other], capsys)  # fmt: skip
    assert code == 1 and "another network" in err and "channels" in err and len(err.strip().splitlines()) == 1


def test_resume_keeps_the_method(runs, capsys):
    code, stdout, _ = run(["train", "--resume", "--out", str(runs / "mf"), "--steps", "4", "--quiet"], capsys)
    assert code == 0 and "trained 4 steps" in stdout
    assert json.loads((runs / "mf" / "config.json").read_text())["method"]["name"] == "meanflow"
    code, _, err = run(["train", "--resume", "--out", str(runs / "mf"), "--steps", "5", "--method", "fm"], capsys)
    assert code == 2 and "--method fm (the run has meanflow)" in err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--init-from", "RUN_FM"], "--init-from only with --method meanflow"),
        (["--equal-fraction", "0.5"], "--equal-fraction only with --method meanflow"),
        (["--teacher", "RUN_FM"], "--teacher only with --method reflow"),
        (["--method", "meanflow", "--pairs", "10"], "--pairs only with --method reflow"),
        (["--method", "reflow"], "--method reflow needs --teacher"),
        (["--method", "meanflow", "--init-from", "RUN_MF"], "is a two-time (meanflow) run"),
        (["--method", "meanflow", "--init-from", "NOWHERE"], "is not a run directory"),
        (["--method", "meanflow", "--equal-fraction", "1.5"], "--equal-fraction"),
        (["--distill"], "--distill only with --method meanflow"),
        (["--method", "meanflow", "--distill"], "--distill needs --init-from"),
        (["--method", "reflow", "--teacher", "RUN_FM", "--teacher-solver", "midpoint", "--teacher-nfe", "3"],
         "not a multiple of 2"),
    ],
)  # fmt: skip
def test_bad_method_combinations_exit_2(runs, capsys, tmp_path, extra, needle):
    sub = {"RUN_FM": str(runs / "fm"), "RUN_MF": str(runs / "mf"), "NOWHERE": str(tmp_path / "none")}
    argv = ["train", "--steps", "1", "--out", str(tmp_path / "r"), *[sub.get(a, a) for a in extra], *TINY]
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "r" / "config.json").exists()


def test_flow_map_on_a_one_time_run_is_a_usage_error(runs, capsys, tmp_path):
    code, _, err = run(["sample", "--run", str(runs / "fm"), "--n", "2", "--solver", "flow-map",
                        "--out", str(tmp_path / "s.npz")], capsys)  # fmt: skip
    assert code == 2 and "--solver flow-map needs a two-time run" in err


def test_reflow_trains_on_pairs_kept_for_resume(runs, capsys, tmp_path):
    out = tmp_path / "rf"
    argv = ["train", *COND, "--method", "reflow", "--teacher", str(runs / "fm"), "--pairs", "24", "--teacher-nfe", "4",
            "--out", str(out), *TINY]  # fmt: skip
    code, stdout, _ = run([*argv, "--steps", "2"], capsys)
    assert code == 0 and "trained 2 steps" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == {"name": "reflow", "teacher": str(runs / "fm"), "pairs": 24, "teacher_solver": "midpoint",
                             "teacher_nfe": 4}  # fmt: skip
    assert cfg["pixel"]["guidance"] == 1.0  # the pairs carry the teacher's guidance
    assert cfg["pixel"]["time"] == "u-shaped"  # reflow's default training times (the recipe's: logit-normal)
    manifest = json.loads((out / "reflow" / "manifest.json").read_text())
    assert manifest["n"] == 24
    chunks = sorted((out / "reflow").glob("chunk-*"))
    stamps = [(p.stat().st_mtime_ns, p.stat().st_ino) for p in chunks]
    code, stdout, _ = run(["train", "--resume", "--out", str(out), "--steps", "3", "--quiet"], capsys)
    assert code == 0 and "trained 3 steps" in stdout
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in chunks] == stamps  # reused, not written again
    code, stdout, _ = run(["sample", "--run", str(out), "--n", "4", "--nfe", "1", "--out", str(tmp_path / "s.npz"),
                           "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0 and "euler, NFE 1" in stdout


def test_reflow_student_starts_from_the_teacher(runs):
    from fm_cli.method import MethodConfig
    from fm_pixel.sampling import load_run
    from fm_pixel.training import build_model, reflow_batches

    teacher, cfg = load_run(runs / "fm")
    student = build_model(cfg)
    method = MethodConfig(name="reflow", teacher=str(runs / "fm"), pairs=16, teacher_solver="euler", teacher_nfe=2)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        batches = reflow_batches(
            student, cfg.replace(train=cfg.train.replace(batch_size=8)), method, d, torch.device("cpu")
        )
        b = batches(1)
        assert b.x0.shape == b.x1.shape == (8, 1, cfg.model_size, cfg.model_size) and b.y is not None
    for (k, a), (_, c) in zip(student.state_dict().items(), teacher.state_dict().items(), strict=True):
        assert torch.equal(a, c), k


def test_reflow_with_ot_coupling_is_a_usage_error(runs, capsys, tmp_path):
    code, _, err = run(["train", *COND, "--steps", "1", "--method", "reflow", "--teacher", str(runs / "fm"),
                        "--coupling", "ot", "--out", str(tmp_path / "r"), *TINY], capsys)  # fmt: skip
    assert code == 2 and "--coupling ot does not apply to --method reflow" in err


def test_export_of_a_meanflow_run_says_flow_map(runs, capsys, tmp_path):
    code, _, err = run(["export", "--run", str(runs / "mf"), "--out", str(tmp_path / "x")], capsys)
    assert code == 0, err
    sampling = json.loads((tmp_path / "x" / "sampling.json").read_text())
    assert sampling["solver"] == "flow-map" and sampling["nfe"] == 1
    from fm_nets import UNet

    net = UNet.from_pretrained(str(tmp_path / "x"))
    assert net.two_time
