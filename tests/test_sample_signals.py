"""Sampling commands of the three apps under SIGINT / SIGTERM and failing writes.

Signals: a real ``fm-* sample`` / ``eval`` process is started on a tiny run built here, the signal is
sent once its sampling has begun (the process itself marks the moment: ``fm_core.sample`` is wrapped
to touch a file first), and the command must end with exactly one line on stderr, no traceback, the
shell's status (130 for SIGINT, 143 for SIGTERM) and no file (partial or temporary) in the output
folder or the run directory.

Failing writes (in-process): a full disk or an unwritable folder while the ``.npz`` is written, or an
encoder error half-way through it, is one line naming the final path (never the temporary one) and
leaves no temporary file behind.

fm-toy2d needs no data; fm-pixel and fm-latentgen need the MNIST files (FM_DATA_DIR, skipped without
them). Each subprocess imports torch: seconds on an idle machine, 30 s or more on a loaded one, so
only fm-toy2d's sample runs by default and the others are marked slow.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

SIGNALS = [signal.SIGINT, signal.SIGTERM]
IDS = ["SIGINT", "SIGTERM"]
# the app's main, with fm_core.sample wrapped to touch argv[1] when sampling begins
CODE = """
import pathlib, sys
import fm_core
_sample = fm_core.sample
def _marked(*a, **k):
    pathlib.Path(sys.argv[1]).touch()
    return _sample(*a, **k)
fm_core.sample = _marked
from {app}.cli import main
sys.exit(main(sys.argv[2:]))
"""


@functools.cache
def _why_no_mnist() -> str | None:
    from fm_data.images import DataError, find_dataset_dir

    try:
        find_dataset_dir("mnist", download=False)
    except DataError:
        return "MNIST files not found (set FM_DATA_DIR, e.g. FM_DATA_DIR=../shared/data)"
    return None


needs_mnist = pytest.mark.skipif(_why_no_mnist() is not None, reason=str(_why_no_mnist()))


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def signal_during_sampling(app: str, argv: list[str], sig: int, tmp: Path, timeout: float = 240) -> tuple[int, str]:
    """Run ``app`` (e.g. ``fm_pixel``) with ``argv`` in a fresh interpreter, send ``sig`` 0.5 s after its
    sampling began; returns (exit status, stderr)."""
    marker = tmp / f"started-{sig}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CODE.format(app=app), str(marker), *argv]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    if not marker.exists():
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"sampling did not start (exit {proc.returncode}): {err[-2000:]}")
    time.sleep(0.5)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{app} {argv[0]} did not stop on signal {sig}") from None
    return proc.returncode, err


def _check_stopped(prog: str, command: str, sig: int, code: int, err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 128 + sig, err
    assert lines == [f"{prog} {command}: interrupted"], err


# ----------------------------------------------------------------------------- tiny runs
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    from fm_toy2d.cli import main

    run = tmp_path_factory.mktemp("toy") / "run"
    argv = ["train", "--steps", "2", "--hidden", "8", "--depth", "1", "--batch-size", "64", "--out", str(run),
            "--quiet", "--no-pictures", "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory) -> Path:
    from fm_pixel.cli import main

    run = tmp_path_factory.mktemp("pixel") / "run"
    argv = ["train", "--dataset", "mnist", "--net", "mlp", "--hidden", "16", "--depth", "1", "--batch-size", "8",
            "--steps", "2", "--sample-every", "100000", "--quiet", "--device", "cpu", "--threads", "1", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory) -> Path:
    from fm_latentgen.cli import main

    root = tmp_path_factory.mktemp("latent")
    cpu = ["--device", "cpu", "--threads", "1"]
    assert main(["train-vae", "--dataset", "mnist", "--steps", "2", "--out", str(root / "vae"), "--channels", "8,8,8,8",
                 "--latent-channels", "4", "--batch-size", "8", "--fit-n", "64", "--eval-n", "40", "--quiet", *cpu]) == 0  # fmt: skip
    assert main(["encode", "--vae", str(root / "vae" / "vae"), "--dataset", "mnist", "--limit", "120",
                 "--out", str(root / "lat"), *cpu]) == 0  # fmt: skip
    assert main(["train", "--latents", str(root / "lat"), "--conditional", "--steps", "3", "--sample-every", "100000",
                 "--hidden", "32", "--depth", "1", "--heads", "2", "--batch-size", "8", "--quiet", "--out",
                 str(root / "run"), *cpu]) == 0  # fmt: skip
    return root / "run"


# ----------------------------------------------------------------------------- signals
# long enough to be running when the signal comes: 10,000 velocity evaluations per sample
LONG = ["--solver", "euler", "--nfe", "10000", "--device", "cpu"]


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_toy2d_sample_stops_on_a_signal_with_one_line_and_no_file(toy_run, tmp_path, sig):
    before = _listing(toy_run)
    out = tmp_path / "out" / "s.npz"
    code, err = signal_during_sampling("fm_toy2d", ["sample", "--run", str(toy_run), "--n", "100000", "--out", str(out),
                                                    "--grid", str(tmp_path / "out" / "s.png"), *LONG], sig, tmp_path)  # fmt: skip
    _check_stopped("fm-toy2d", "sample", sig, code, err)
    assert _listing(tmp_path / "out") == [] and _listing(toy_run) == before


@pytest.mark.slow  # a fresh interpreter per signal
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_toy2d_eval_stops_on_a_signal(toy_run, tmp_path, sig):
    before = _listing(toy_run)
    code, err = signal_during_sampling(
        "fm_toy2d", ["eval", "--run", str(toy_run), "--n", "100000", *LONG], sig, tmp_path
    )
    _check_stopped("fm-toy2d", "eval", sig, code, err)
    assert _listing(toy_run) == before  # no metrics.json, no temporary file


@needs_mnist
@pytest.mark.slow  # a fresh interpreter per signal (imports torch: 30 s or more on a loaded machine)
@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_pixel_sample_and_eval_stop_on_a_signal(pixel_run, tmp_path, sig, command):
    before = _listing(pixel_run)
    out = (
        ["--out", str(tmp_path / "out" / "s.npz"), "--gif", str(tmp_path / "out" / "s.gif")]
        if command == "sample"
        else []
    )
    argv = [command, "--run", str(pixel_run), "--n", "5000", "--batch-size", "500", *out, *LONG]
    if command == "eval":
        argv.remove("--batch-size"), argv.remove("500")
    code, err = signal_during_sampling("fm_pixel", argv, sig, tmp_path)
    _check_stopped("fm-pixel", command, sig, code, err)
    assert _listing(tmp_path / "out") == [] and _listing(pixel_run) == before


@needs_mnist
@pytest.mark.slow  # trains a VAE, encodes, trains a DiT, then a fresh interpreter per signal
@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_latentgen_sample_and_eval_stop_on_a_signal(latent_run, tmp_path, sig, command):
    before = _listing(latent_run)
    out = ["--out", str(tmp_path / "out" / "s.npz")] if command == "sample" else []
    argv = [command, "--run", str(latent_run), "--n", "5000", *out, *LONG]
    code, err = signal_during_sampling("fm_latentgen", argv, sig, tmp_path)
    _check_stopped("fm-latentgen", command, sig, code, err)
    assert _listing(tmp_path / "out") == [] and _listing(latent_run) == before


# ----------------------------------------------------------------------------- failing writes
def _full_disk(f, **arrays):
    """np.savez_compressed that writes part of the file, then hits a full disk (an OSError without a
    file name, as the zip writer raises it)."""
    f.write(b"PK\x03\x04 partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _encoder_error(f, **arrays):
    f.write(b"PK\x03\x04 partial")
    raise ValueError("the encoder gave up half-way")


def _unwritable(*a, **k):
    """tempfile.mkstemp in a folder that became unwritable (as root, chmod cannot show it)."""
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(k.get("dir", "."), "s.npz.tmp-x1y2"))


FAULTS = [
    (np, "savez_compressed", _full_disk, "[Errno 28] No space left on device: '{out}'"),
    (np, "savez_compressed", _encoder_error, "the encoder gave up half-way"),
    (tempfile, "mkstemp", _unwritable, "[Errno 13] Permission denied: '{out}'"),
]
FAULT_IDS = ["full-disk", "encoder-error", "unwritable-folder"]


def _check_write_fault(main, argv, out: Path, prog: str, monkeypatch, capsys, fault) -> None:
    module, name, replacement, message = fault
    monkeypatch.setattr(module, name, replacement)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"{prog} sample: error: {message.format(out=out)}"], err
    assert ".tmp" not in err
    assert _listing(out.parent) == []  # no temporary file left, no partial .npz


@pytest.mark.parametrize("fault", FAULTS, ids=FAULT_IDS)
def test_toy2d_sample_write_failure_names_the_file_and_leaves_nothing(toy_run, tmp_path, monkeypatch, capsys, fault):
    from fm_toy2d.cli import main

    out = tmp_path / "out" / "s.npz"
    argv = ["sample", "--run", str(toy_run), "--n", "16", "--out", str(out), "--device", "cpu", "--quiet"]
    _check_write_fault(main, argv, out, "fm-toy2d", monkeypatch, capsys, fault)


@needs_mnist
@pytest.mark.parametrize("fault", FAULTS, ids=FAULT_IDS)
def test_pixel_sample_write_failure_names_the_file_and_leaves_nothing(pixel_run, tmp_path, monkeypatch, capsys, fault):
    from fm_pixel.cli import main

    out = tmp_path / "out" / "s.npz"
    argv = ["sample", "--run", str(pixel_run), "--n", "8", "--out", str(out), "--device", "cpu", "--quiet"]
    _check_write_fault(main, argv, out, "fm-pixel", monkeypatch, capsys, fault)
