"""LatentVAE and the Hub: the folder layout, a cached hub id offline, and an unreachable Hub reported in one
line within seconds (before diffusers is even imported)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from fm_latent import HubUnreachableError, LatentVAE, LatentVAEError, small_autoencoder_kl

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from fm_latent import HubUnreachableError, LatentVAE
    import huggingface_hub._snapshot_download  # imported before the clock: the access is timed, not imports
    start = time.monotonic()
    try:
        LatentVAE.from_pretrained(sys.argv[1])
    except HubUnreachableError as e:
        print(f"{time.monotonic() - start:.3f}")
        print("diffusers imported" if "diffusers" in sys.modules else "diffusers not imported")
        print(e)
    else:
        print("loaded")
    """
)


def _run(tmp_path, monkeypatch, env, repo="fm-toolkit-test/no-such-vae"):
    for key in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return subprocess.run([sys.executable, "-c", SCRIPT, repo], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["offline", "closed-port"]
)
def test_unreachable_hub_is_one_line_within_seconds(tmp_path, monkeypatch, env):
    done = _run(tmp_path, monkeypatch, env)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout + done.stderr
    assert float(lines[0]) < 5.0
    assert lines[1] == "diffusers not imported"
    msg = lines[2]
    assert msg.startswith("cannot load the VAE 'fm-toolkit-test/no-such-vae': ")
    assert "local folder" in msg and "HF_HUB_OFFLINE" in msg
    assert ("could not be reached" in msg) == ("HF_ENDPOINT" in env)
    assert done.stderr.strip() == "", done.stderr  # no retry warnings, no traceback


@pytest.mark.slow  # the subprocess imports diffusers (about a minute on a busy 2-core machine)
def test_a_cached_hub_id_loads_offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with the files in the Hub cache: the VAE loads from there."""
    snapshot = tmp_path / "hf" / "hub" / "models--fm-toolkit-test--tiny-vae" / "snapshots" / ("0" * 40)
    LatentVAE(small_autoencoder_kl()).save_pretrained(snapshot)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    done = _run(tmp_path, monkeypatch, {"HF_HUB_OFFLINE": "1"}, repo="fm-toolkit-test/tiny-vae")
    assert done.stdout.strip() == "loaded", done.stdout + done.stderr


def test_the_folder_layout(tmp_path):
    vae = LatentVAE(small_autoencoder_kl(), image_size=28)
    vae.set_scale_shift(2.0, 0.25)
    folder = vae.save_pretrained(tmp_path / "vae")
    assert {p.name for p in folder.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    back = LatentVAE.from_pretrained(folder, image_size=28)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(back.encode(x), vae.encode(x)) and (back.scale, back.shift) == (2.0, 0.25)


def test_error_types():
    assert issubclass(HubUnreachableError, LatentVAEError) and issubclass(HubUnreachableError, ConnectionError)
