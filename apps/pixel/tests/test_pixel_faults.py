"""fm-pixel given broken or foreign files: every failure is one line on stderr naming the file and
the problem (exit 1 for runtime failures, 2 for usage errors), never a traceback, and a pickle
that would run code is refused. One tiny MNIST run (3 steps) is shared; each test works on a copy.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fm_pixel.cli import main
from fm_train import save_checkpoint

torch.set_num_threads(1)

needs_data = pytest.mark.needs_mnist  # apps/conftest.py

BASE = [
    "train",
    "--dataset",
    "mnist",
    "--classes",
    "3,5",
    "--conditional",
    "--channels",
    "8,16",
    "--patch-size",
    "2",
    "--batch-size",
    "8",
    "--warmup-steps",
    "2",
    "--ema-decay",
    "0.9",
    "--quiet",
    "--device",
    "cpu",
    "--sample-every",
    "1000",
]


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return code, err


def one_line_error(code, err, *needles, status=1):
    assert code == status, (code, err)
    if status == 1:
        assert len(err.splitlines()) == 1 and err.startswith("fm-pixel "), err
    else:
        assert "usage:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pixel-faults") / "run"
    assert main([*BASE, "--steps", "3", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def sample(run, tmp_path, capsys, *extra):
    return run_cli(
        ["sample", "--run", str(run), "--n", "4", "--out", str(tmp_path / "s.npz"), "--device", "cpu", *extra], capsys
    )


def edit_json(path, edit):
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


@needs_data
def test_the_intact_copy_samples(run, tmp_path, capsys):
    assert sample(run, tmp_path, capsys)[0] == 0 and (tmp_path / "s.npz").exists()


@needs_data
def test_mnist_run_evaluated_as_fashion(run, tmp_path, capsys):
    """The run's config.json edited to say fashion-mnist: its MNIST checkpoint must not be scored against Fashion-MNIST."""
    edit_json(run / "config.json", lambda c: c["pixel"].update(dataset="fashion-mnist"))
    code, err = run_cli(["eval", "--run", str(run), "--n", "8", "--device", "cpu"], capsys)
    one_line_error(code, err, str(run / "checkpoint" / "config.json"), "belongs to another run",
                   "pixel.dataset='mnist' in the checkpoint but 'fashion-mnist'")  # fmt: skip
    one_line_error(*sample(run, tmp_path, capsys), "belongs to another run")
    assert not (tmp_path / "s.npz").exists()


@needs_data
def test_checkpoint_of_a_toy2d_model(run, tmp_path, capsys):
    """A checkpoint of another app's model copied into the run: refused, naming both files."""
    shutil.rmtree(run / "checkpoint")
    w = {"net.0.weight": torch.zeros(8, 2)}
    save_checkpoint(run / "checkpoint", model_state=w, ema_state=w,
                    config={"step": 5, "app": "fm-toy2d", "model": "fm", "net": {"name": "mlp", "config": {"dim": 2}}})  # fmt: skip
    code, err = sample(run, tmp_path, capsys)
    one_line_error(code, err, "belongs to another run", "app='fm-toy2d' in the checkpoint but 'fm-pixel'")


@needs_data
@pytest.mark.parametrize("which", ["missing", "extra", "shape"])
def test_checkpoint_with_missing_extra_or_misshaped_tensors(run, tmp_path, capsys, which):
    f = run / "checkpoint" / "ema.safetensors"
    state = load_file(str(f))
    key = sorted(k for k, v in state.items() if v.ndim == 4)[0]
    if which == "missing":
        del state[key]
        needle = f"missing tensors: {key}"
    elif which == "extra":
        state["head.extra"] = torch.zeros(1)
        needle = "unexpected tensors: head.extra"
    else:
        state[key] = torch.zeros(1, *state[key].shape[1:])
        needle = f"wrong shapes: {key}"
    save_file(state, str(f))
    one_line_error(*sample(run, tmp_path, capsys), str(f), needle)


@needs_data
@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["pixel"].update(nfe="ten"), "nfe='ten'"),
        (lambda c: c["pixel"].update(solver="midpoint", nfe=7), "nfe=7"),  # midpoint needs an even NFE
        (lambda c: c["pixel"].update(guidance=float("nan")), "guidance=nan"),
        (lambda c: c["pixel"].update(classes=[42]), "[42]"),
        (lambda c: c["train"].update(batch_size=True), "batch_size=True"),  # the optimisation: fm-train's section
        (lambda c: c["pixel"].update(colour="red"), "unknown run config key(s) colour"),
        (lambda c: c.update(pixel="mnist"), "must be a JSON object"),
    ],
)
def test_run_config_with_wrong_types_or_values(run, tmp_path, capsys, edit, needle):
    edit_json(run / "config.json", edit)
    code, err = sample(run, tmp_path, capsys)
    one_line_error(code, err, str(run / "config.json"), needle, status=2)
    # --resume reads the same section: a usage error naming the file, not a traceback
    code, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet", "--device", "cpu"], capsys)
    one_line_error(code, err, str(run / "config.json"), status=2)


@needs_data
def test_resume_with_a_truncated_train_state(run, capsys):
    f = run / "checkpoint" / "train_state.pt"
    f.write_bytes(f.read_bytes()[:200])
    code, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet", "--device", "cpu"], capsys)
    one_line_error(code, err, str(f), "unreadable or truncated")


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@needs_data
def test_resume_refuses_a_code_running_pickle(run, tmp_path, capsys):
    """A train_state.pt whose unpickling would run a shell command: refused, and the command never runs."""
    marker = tmp_path / "pwned"
    f = run / "checkpoint" / "train_state.pt"
    state = torch.load(f, weights_only=True)
    state["history"] = Payload(marker)
    torch.save(state, f)
    code, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet", "--device", "cpu"], capsys)
    one_line_error(code, err, str(f), "refused to load")
    assert not marker.exists()


@needs_data
def test_full_disk_while_writing_samples(run, tmp_path, capsys, monkeypatch):
    import numpy as np

    def full(file, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(np, "savez_compressed", full)
    code, err = sample(run, tmp_path, capsys)
    one_line_error(code, err, "No space left on device", str(tmp_path))
    assert not (tmp_path / "s.npz").exists()


@needs_data
def test_output_under_a_file_is_refused_before_sampling(run, tmp_path, capsys, monkeypatch):
    import fm_pixel.cli as cli

    monkeypatch.setattr(cli, "_load_model", lambda *a, **k: pytest.fail("loaded the model before checking --out"))
    (tmp_path / "file").write_text("x")
    code, err = run_cli(
        ["sample", "--run", str(run), "--n", "4", "--out", str(tmp_path / "file" / "s.npz"), "--device", "cpu"], capsys
    )
    one_line_error(code, err, "--out", str(tmp_path / "file"), status=2)
