"""``fm-latentgen encode --vae ORG/NAME`` without the Hub: one error line within seconds, not five retries
and a misleading "does not appear to have a file named config.json"."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: Times the command itself (main), not the interpreter's start and torch's import.
SCRIPT = textwrap.dedent(
    """
    import sys, time
    from fm_latentgen.cli import main
    import fm_latentgen.vae, huggingface_hub._snapshot_download  # imports before the clock: the command is timed
    start = time.monotonic()
    try:
        rc = main(["encode", "--vae", "stabilityai/sd-vae-ft-mse", "--dataset", "mnist", "--out", sys.argv[1]])
    except SystemExit as e:
        rc = e.code
    print(f"{rc} {time.monotonic() - start:.3f}")
    """
)


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["offline", "closed-port"]
)
def test_encode_with_an_unreachable_hub_is_one_line_within_seconds(tmp_path, monkeypatch, env):
    for key in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hub cache
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "out")], capture_output=True, text=True, timeout=300
    )
    rc, seconds = done.stdout.split()
    assert rc == "1" and float(seconds) < 5.0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("fm-latentgen encode: error: cannot load the VAE 'stabilityai/sd-vae-ft-mse': ")
    assert "local folder" in line and "HF_HUB_OFFLINE" in line and "config.json" not in line
    assert ("could not be reached" in line) == ("HF_ENDPOINT" in env)
    assert not (tmp_path / "out").exists()
