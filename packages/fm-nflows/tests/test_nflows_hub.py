"""Flow.save_pretrained / from_pretrained: same outputs, config.json = build_flow's arguments, old
save_flow folders still load, untrusted folders refused in one line, an unreachable Hub in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fm_nflows import Flow, HubUnreachableError, build_flow, load_flow, save_flow

KWARGS = [
    dict(dim=2, n_layers=3, hidden=16, num_classes=3, embed_dim=4, seed=1),
    dict(
        dim=3,
        n_layers=2,
        hidden=8,
        n_hidden=1,
        mixing="random",
        actnorm=False,
        scale_bound=7.0,
        zero_init=False,
        activation="silu",
        seed=2,
    ),  # fmt: skip
    dict(dim=2, n_layers=2, hidden=8, mixing="reverse", seed=None),
]


@pytest.mark.parametrize("kwargs", KWARGS, ids=["lu-conditional", "random-silu", "reverse"])
def test_round_trip_gives_identical_outputs(tmp_path, kwargs, randomize):
    flow = randomize(build_flow(**kwargs), seed=3)
    flow.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in kwargs.items():
        assert saved[key] == value, key
    back = Flow.from_pretrained(tmp_path)
    assert not back.training and back.config == flow.config
    flow.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, kwargs["dim"], generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0]) if kwargs.get("num_classes") else None
    with torch.no_grad():
        assert torch.equal(back.log_prob(x, y), flow.log_prob(x, y))
        assert torch.equal(back.inverse(x, y)[0], flow.inverse(x, y)[0])
    # save_flow's run-directory format and the Hub format load through both entry points
    save_flow(flow, tmp_path / "legacy")
    with torch.no_grad():
        assert torch.equal(Flow.from_pretrained(tmp_path / "legacy").log_prob(x, y), flow.log_prob(x, y))
        assert torch.equal(load_flow(tmp_path).log_prob(x, y), flow.log_prob(x, y))


def _write(folder, config):
    folder.mkdir(exist_ok=True)
    flow = build_flow(dim=2, n_layers=2, hidden=8, seed=0)
    flow.save_pretrained(folder)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"dim": 2, "n_layers": 2, "hidden": 8, "layers": "evil"}, r"unknown keys \['layers'\]; build_flow takes dim"),
        ({"dim": 2, "n_layers": "2"}, r"n_layers='2' is not a valid build_flow n_layers"),
        ({"dim": 2, "actnorm": 1}, r"actnorm=1 is not a valid build_flow actnorm"),
        ({"dim": 2, "hidden": 8.0}, r"hidden=8.0 is not a valid"),
        ({"dim": 2, "mixing": "shuffle"}, r"build_flow refuses this config: mixing must be one of"),
        ({"dim": 2, "n_layers": 2, "hidden": 16}, r"do not match the config"),
        ({"model": "mlp", "config": {}}, r"not a fm-nflows checkpoint"),
        ("[1]", r"expected a JSON object"),
        ("{", r"not valid JSON"),
    ],
)
def test_bad_config_is_one_line_value_error(tmp_path, config, match):
    folder = _write(tmp_path / "f", config)
    with pytest.raises(ValueError, match=match) as info:
        Flow.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_bad_weights_file(tmp_path):
    folder = _write(tmp_path / "f", {"dim": 2, "n_layers": 2, "hidden": 8, "seed": 0})
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Flow.from_pretrained(folder)


def test_save_pretrained_needs_a_build_flow_config(tmp_path):
    from fm_nflows import ActNorm

    with pytest.raises(ValueError, match="no .config"):
        Flow([ActNorm(2)], 2).save_pretrained(tmp_path)


SCRIPT = textwrap.dedent(
    """
    import time
    from fm_nflows import Flow, HubUnreachableError
    import huggingface_hub._snapshot_download  # imported before the clock: the access is timed, not imports
    start = time.monotonic()
    try:
        Flow.from_pretrained("fm-toolkit-test/no-such-flow")
    except HubUnreachableError as e:
        print(f"{time.monotonic() - start:.3f}")
        print(e)
    """
)


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["offline", "closed-port"]
)
def test_unreachable_hub_is_one_line_within_seconds(tmp_path, monkeypatch, env):
    for key in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert float(lines[0]) < 5.0
    assert "fm-toolkit-test/no-such-flow" in lines[1] and "local folder" in lines[1] and "HF_HUB_OFFLINE" in lines[1]
    assert done.stderr.strip() == "", done.stderr
    assert issubclass(HubUnreachableError, ValueError)
