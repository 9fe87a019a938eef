"""fm_cli.export and fm_cli.hub: the exported folder, the model card (huggingface_hub's ModelCard parses it),
the training command rebuilt from config.json, and a push without the Hub failing in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from fm_cli.export import export, training_command


class Tiny(nn.Module, PyTorchModelHubMixin):
    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x, t):
        return self.lin(x)


CONFIG = {
    "train": {"steps": 120, "batch_size": 32, "lr": 0.001},
    "toy": {"dataset": "rings", "classes": [1, 2], "conditional": True, "label_dropout": 0.1, "ema": False},
}


def test_training_command_from_config():
    cmd = training_command("fm-x", CONFIG, "toy", ("dataset", "classes", "conditional", "ema", "batch_size"),
                           {"hidden": 64})  # fmt: skip
    assert cmd == "fm-x train --dataset rings --classes 1,2 --conditional --batch-size 32 --hidden 64 --steps 120"


def test_export_writes_the_layout_and_a_card_that_parses(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"eval": {"fid": 3.25, "n": 1000}, "note": "x" * 200}))
    (run / "samples.png").write_bytes(b"\x89PNG fake")
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    model = Tiny(3)
    res = export(run, tmp_path / "out", model=model, command="fm-x train --steps 120",
                 sampling={"shape": [3], "solver": "euler", "nfe": 8, "guidance": 1.0},
                 load_lines="net = Tiny.from_pretrained('out')", library="fm-nets", tags=["fm-x"],
                 datasets=["rings"], vae_dir=vae)  # fmt: skip
    out = res.folder
    assert res.url is None
    assert res.files == ["README.md", "config.json", "model.safetensors", "samples.png", "sampling.json", "vae"]
    assert json.loads((out / "sampling.json").read_text())["nfe"] == 8
    assert (out / "vae" / "config.json").is_file()
    back = Tiny.from_pretrained(out)
    x = torch.randn(2, 3)
    assert torch.equal(back(x, None), model.eval()(x, None))
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "fm-nets" and meta["datasets"] == ["rings"]
    assert meta["tags"] == ["flow-matching", "fm-toolkit", "fm-x"]
    assert (
        "fm-x train --steps 120" in card.text
        and "| eval.fid | 3.25 |" in card.text
        and "| eval.n | 1000 |" in card.text
    )
    assert "note" not in card.text  # long strings are left out of the table
    assert "![samples](samples.png)" in card.text and "Tiny.from_pretrained('out')" in card.text
    with pytest.raises(ValueError, match="not an empty directory"):
        export(run, out, model=model, command="c", sampling={}, load_lines="", library="fm-nets")


PUSH = textwrap.dedent(
    """
    import sys, tempfile, time
    import huggingface_hub.hf_api  # imported before the clock starts: the access is timed, not the import
    from fm_cli.hub import HubError, push_folder
    start = time.monotonic()
    try:
        push_folder(tempfile.mkdtemp(), "fm-toolkit-test/x")
    except HubError as e:
        print(f"{time.monotonic() - start:.3f}")
        print(e)
    """
)


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["offline", "closed-port"]
)
def test_push_without_the_hub_is_one_line_within_seconds(tmp_path, monkeypatch, env):
    for key in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", PUSH], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and float(lines[0]) < 5.0, done.stdout + done.stderr
    assert lines[1].startswith("cannot push to 'fm-toolkit-test/x': ")
    assert ("could not be reached" in lines[1]) == ("HF_ENDPOINT" in env)
