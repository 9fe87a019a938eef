"""``fm-toy2d train --method meanflow|reflow`` and one- and two-step sampling, on tiny budgets.

Closed facts, not the app's own output: a two-time MLP fine-tuned from a flow-matching run
(--init-from) has u(x, r, t) = v(x, r) at step 0, so its Euler samples are the teacher's bit for bit
and one (two) flow-map steps are one (two) Euler steps of the teacher; reflow pairs are generated
once (the chunk files are not rewritten on --resume).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm_toy2d.cli import main

torch.set_num_threads(1)

TINY = ["--hidden", "16", "--depth", "1", "--batch-size", "64", "--quiet", "--device", "cpu", "--no-pictures"]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy2d-method")
    assert main(["train", "--cells", "4", "--conditional", "--steps", "20", "--out", str(root / "fm"), *TINY]) == 0
    assert main(["train", "--cells", "4", "--conditional", "--steps", "4", "--method", "meanflow",
                 "--out", str(root / "mf"), *TINY]) == 0  # fmt: skip
    return root


def test_meanflow_run_is_two_time(runs):
    cfg = json.loads((runs / "mf" / "config.json").read_text())
    assert cfg["method"] == {"name": "meanflow"} and cfg["net"]["config"]["two_time"] is True
    assert cfg["toy2d"]["target"] == "conditional"  # MeanFlow's target is built on the conditional velocity


@pytest.mark.parametrize("nfe", [1, 2])
def test_meanflow_samples_at_nfe_1_and_2(runs, tmp_path, capsys, nfe):
    out = tmp_path / "s.npz"
    code, stdout, _ = run(["sample", "--run", str(runs / "mf"), "--n", "50", "--nfe", str(nfe), "--out", str(out)],
                          capsys)  # fmt: skip
    assert code == 0 and f"flow-map, NFE {nfe}" in stdout
    z = np.load(out)
    assert z["x"].shape == (50, 2) and np.isfinite(z["x"]).all() and z["y"].shape == (50,)


def test_meanflow_eval_reports_straightness(runs, capsys):
    code, stdout, _ = run(["eval", "--run", str(runs / "mf"), "--n", "300", "--no-nll", "--quiet"], capsys)
    assert code == 0 and "straightness" in stdout
    st = json.loads((runs / "mf" / "metrics.json").read_text())["straightness"]
    assert st["solver"] == "flow-map" and st["sampler_nfe"] == 1 and st["n"] == 300 and st["value"] >= 0


def test_init_from_gives_the_teachers_samples_at_step_0(runs):
    from fm_toy2d.method_runs import init_from
    from fm_toy2d.training import build_model, load_run

    teacher = load_run(runs / "fm")
    student = build_model(teacher.config, teacher.dist, two_time=True).eval()
    init_from(student, runs / "fm")
    two = type(teacher)(**{**teacher.__dict__, "model": student})
    for nfe in (1, 2):
        want = teacher.sample(200, seed=7, solver="euler", nfe=nfe)
        assert torch.equal(two.sample(200, seed=7, solver="euler", nfe=nfe).x, want.x)  # u(x, t, t) = v(x, t)
        flow = two.sample(200, seed=7, solver="flow-map", nfe=nfe)  # x + h u(x, r, r + h) = x + h v(x, r)
        assert torch.allclose(flow.x, want.x, atol=1e-5)


def test_api_runs_record_the_target_they_train_with(tmp_path):
    """fm_toy2d.training.train with the default recipe's config (target batch-marginal) and another method:
    meanflow trains on the conditional target, and config.json says so (it used to keep the recipe's)."""
    from fm_cli.method import MethodConfig
    from fm_toy2d.config import make_config
    from fm_toy2d.training import train

    cfg = make_config("checkerboard", "default", steps=2, batch_size=64, device="cpu", net={"hidden": 16, "depth": 1})
    assert cfg.target == "batch-marginal"
    train(cfg, tmp_path / "mf", progress=False, method=MethodConfig(name="meanflow"))
    assert json.loads((tmp_path / "mf" / "config.json").read_text())["toy2d"]["target"] == "conditional"


def test_distill_starts_at_zero_loss_on_r_equal_t_rows(runs, capsys, tmp_path):
    """--distill: with every row at r = t and the teacher's weights, u(z, r, r) = v_teacher(z, r), so the
    loss is exactly 0; the conditional velocity's target is not (its noise stays in the loss)."""
    common = ["train", "--cells", "4", "--conditional", "--steps", "2", "--method", "meanflow", "--init-from",
              str(runs / "fm"), "--equal-fraction", "1", *TINY]  # fmt: skip
    losses = {}
    for name, extra in (("d", ["--distill"]), ("c", [])):
        code, _, err = run([*common, "--out", str(tmp_path / name), *extra], capsys)
        assert code == 0, err
        losses[name] = float((tmp_path / name / "loss.csv").read_text().splitlines()[-1].split(",")[1])
    assert losses["d"] == 0.0 and losses["c"] > 0.05, losses
    assert json.loads((tmp_path / "d" / "config.json").read_text())["method"]["distill"] is True


def test_reflow_pairs_are_generated_once(runs, capsys, tmp_path):
    out = tmp_path / "rf"
    argv = ["train", "--cells", "4", "--conditional", "--method", "reflow", "--teacher", str(runs / "fm"),
            "--pairs", "200", "--teacher-solver", "euler", "--teacher-nfe", "3", "--out", str(out), *TINY]  # fmt: skip
    code, _, err = run([*argv, "--steps", "3"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"]["name"] == "reflow" and cfg["method"]["pairs"] == 200
    assert cfg["toy2d"]["target"] == "conditional" and cfg["toy2d"]["coupling"] == "independent"
    assert cfg["toy2d"]["time"] == "u-shaped"  # reflow's default training times
    chunks = sorted((out / "reflow").glob("chunk-*"))
    assert chunks
    stamps = [(p.stat().st_mtime_ns, p.stat().st_ino) for p in chunks]
    from fm_cli.method import read_method
    from fm_toy2d.method_runs import reflow_batches
    from fm_toy2d.training import build_model, read_run

    data, cfg = read_run(out)  # what train(resume=True) does first: the pairs of the stored method
    again = reflow_batches(build_model(cfg), cfg, read_method(data), out, resume=True)
    assert again.n == 200
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in chunks] == stamps
    code, stdout, _ = run(["sample", "--run", str(out), "--n", "20", "--solver", "euler", "--nfe", "1",
                           "--out", str(tmp_path / "s.npz")],
                          capsys)  # fmt: skip
    assert code == 0 and "euler, NFE 1" in stdout


def test_reflow_time_flag_wins_over_its_default(runs, capsys, tmp_path):
    out = tmp_path / "rf"
    code, _, err = run(["train", "--cells", "4", "--conditional", "--method", "reflow", "--teacher", str(runs / "fm"),
                        "--pairs", "64", "--teacher-nfe", "2", "--time", "uniform", "--steps", "1", "--out", str(out),
                        *TINY], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["toy2d"]["time"] == "uniform"


def test_reflow_pairs_are_the_teachers_euler_endpoints(runs, tmp_path):
    from fm_cli.method import MethodConfig
    from fm_toy2d.method_runs import reflow_batches
    from fm_toy2d.training import build_model, load_run

    teacher = load_run(runs / "fm")
    student = build_model(teacher.config, teacher.dist)
    method = MethodConfig(name="reflow", teacher=str(runs / "fm"), pairs=64, teacher_solver="euler", teacher_nfe=1)
    b = reflow_batches(student, teacher.config.replace(batch_size=64), method, tmp_path).batch(1)
    with torch.no_grad():  # one Euler step: x1 = x0 + v(x0, 0)
        want = b.x0 + teacher.model(b.x0, torch.zeros(64), b.y)
    assert torch.allclose(b.x1, want, atol=1e-5)
    for (k, a), (_, c) in zip(student.state_dict().items(), teacher.model.state_dict().items(), strict=True):
        assert torch.equal(a, c), k  # the student starts from the teacher's (EMA) weights


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--init-from", "RUN_FM"], "--init-from only with --method meanflow"),
        (["--teacher", "RUN_FM"], "--teacher only with --method reflow"),
        (["--method", "reflow"], "--method reflow needs --teacher"),
        (["--method", "meanflow", "--distill"], "--distill needs --init-from"),
        (["--method", "meanflow", "--init-from", "RUN_MF"], "is a two-time (meanflow) run"),
        (["--method", "meanflow", "--target", "batch-marginal"], "--target batch-marginal does not apply"),
        (["--method", "reflow", "--teacher", "RUN_FM", "--coupling", "ot"], "--coupling ot does not apply"),
        (["--model", "nf", "--method", "meanflow"], "--method does not apply to --model nf"),
    ],
)
def test_bad_method_combinations_exit_2(runs, capsys, tmp_path, extra, needle):
    sub = {"RUN_FM": str(runs / "fm"), "RUN_MF": str(runs / "mf")}
    code, _, err = run(["train", "--steps", "1", "--out", str(tmp_path / "r"), *[sub.get(a, a) for a in extra]],
                       capsys)  # fmt: skip
    assert code == 2 and needle in err, err


def test_flow_map_on_a_one_time_run_is_a_usage_error(runs, capsys, tmp_path):
    code, _, err = run(["sample", "--run", str(runs / "fm"), "--n", "5", "--solver", "flow-map",
                        "--out", str(tmp_path / "s.npz")], capsys)  # fmt: skip
    assert code == 2 and "--solver flow-map needs a two-time run" in err
