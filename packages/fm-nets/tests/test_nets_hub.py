"""save_pretrained / from_pretrained on every network: same outputs, config.json = constructor arguments,
untrusted folders refused in one line, an unreachable Hub reported in one line within seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from fm_nets import NETS, DiT, MLPVelocity, UNet, build_net
from fm_nets.hub import HubUnreachableError

#: (class, constructor arguments as a user passes them, input shape); tuples on purpose (JSON has lists)
CASES = [
    (MLPVelocity, dict(dim=2, hidden=32, depth=2, num_classes=3), (5, 2)),
    (
        MLPVelocity,
        dict(
            dim=2,
            hidden=32,
            depth=2,
            time_dim=16,
            activation="relu",
            time_embedding="raw",
            residual=False,
            fourier_features=0,
        ),
        (5, 2),
    ),  # fmt: skip
    (UNet, dict(in_channels=1, channels=(16, 32), num_classes=3, groups=8, num_heads=2), (5, 1, 28, 28)),
    (
        UNet,
        dict(in_channels=2, channels=(8, 16, 16), attention=False, patch_size=1, conditioning="additive"),
        (5, 2, 16, 16),
    ),  # fmt: skip
    (
        DiT,
        dict(in_channels=1, input_size=(28, 28), patch_size=4, hidden_size=32, depth=2, num_classes=3),
        (5, 1, 28, 28),
    ),
    (DiT, dict(in_channels=4, input_size=(8, 4), patch_size=2, hidden_size=16, depth=1, num_heads=2), (5, 4, 8, 4)),
]
IDS = ["mlp", "mlp-post", "unet", "unet-3-levels", "dit", "dit-rect"]


def _random_weights(net: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (the zero-initialised output layers too), so equal outputs mean equal weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


@pytest.mark.parametrize(("cls", "kwargs", "shape"), CASES, ids=IDS)
def test_round_trip_gives_identical_outputs(tmp_path, cls, kwargs, shape):
    net = cls(**kwargs)
    _random_weights(net)
    net.eval()
    net.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    back = cls.from_pretrained(tmp_path)
    assert type(back) is cls and not back.training
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(shape, generator=g), torch.rand(shape[0], generator=g)
    y = torch.tensor([0, 1, 2, 3, 3]) if kwargs.get("num_classes") == 3 else None
    with torch.no_grad():
        assert torch.equal(back(x, t, y), net(x, t, y))
    # the weights file is the state_dict itself (readable without this package)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert state.keys() == net.state_dict().keys()


@pytest.mark.parametrize(("cls", "kwargs", "shape"), CASES, ids=IDS)
def test_config_json_holds_the_constructor_arguments(tmp_path, cls, kwargs, shape):
    net = cls(**kwargs)
    net.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in kwargs.items():  # what the user passed, tuples as JSON lists
        if key == "input_size" and len(set(value)) == 1:
            continue
        assert saved[key] == _jsonable(value), key
    # and nothing else than constructor arguments: they rebuild the same architecture through build_net
    name = {MLPVelocity: "mlp", UNet: "unet", DiT: "dit"}[cls]
    assert name in NETS
    rebuilt = build_net(name, **saved)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_existing_run_checkpoints_still_build_through_build_net(tmp_path):
    """A run's config.json keeps {"net": {"name", "config"}}; build_net + the safetensors file still load it."""
    net = UNet(channels=(16, 32), num_classes=3)
    _random_weights(net)
    save_file(net.state_dict(), str(tmp_path / "ema.safetensors"))
    back = build_net("unet", **json.loads(json.dumps(net.config)))
    back.load_state_dict(load_file(str(tmp_path / "ema.safetensors")))
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    assert torch.equal(back.eval()(x, t), net.eval()(x, t))


def test_from_pretrained_overrides_and_device(tmp_path):
    UNet(channels=(16, 32), dropout=0.1).save_pretrained(tmp_path)
    back = UNet.from_pretrained(tmp_path, dropout=0.0, map_location="cpu")
    assert back.config["dropout"] == 0.0
    assert next(back.parameters()).device.type == "cpu"


def _write(tmp_path, config, state=None):
    (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if state is not None:
        save_file(state, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"dim": 2, "hidden": 32, "evil": 1}, r"unknown keys \['evil'\]; MLPVelocity takes dim, hidden"),
        ({"dim": "2"}, r"dim='2' is not a valid MLPVelocity dim"),
        ({"dim": 2, "depth": True}, r"depth=True is not a valid"),
        ({"dim": 2, "num_classes": 2.5}, r"num_classes=2.5 is not a valid"),
        ({"dim": 2, "activation": "tanh"}, r"MLPVelocity refuses this config: unknown activation 'tanh'"),
        ({"hidden": 32}, r"missing dim"),
        ([1, 2], r"expected a JSON object"),
        ("{not json", r"not valid JSON"),
    ],
)
def test_bad_config_is_one_line_value_error(tmp_path, config, match):
    state = MLPVelocity(dim=2, hidden=32).state_dict()
    _write(tmp_path, config, state)
    with pytest.raises(ValueError, match=match) as info:
        MLPVelocity.from_pretrained(tmp_path)
    assert "\n" not in str(info.value) and "config.json" in str(info.value)


def test_bad_values_of_other_nets_are_one_line(tmp_path):
    state = UNet(channels=(16, 32)).state_dict()
    _write(tmp_path, {"channels": [16, "x"]}, state)
    with pytest.raises(ValueError, match=r"channels=\[16, 'x'\] is not a valid UNet channels"):
        UNet.from_pretrained(tmp_path)
    _write(tmp_path, {"channels": [16, 32], "groups": 5}, state)
    with pytest.raises(ValueError, match="UNet refuses this config: every width"):
        UNet.from_pretrained(tmp_path)
    _write(tmp_path, {"input_size": 7, "patch_size": 2}, DiT(input_size=8).state_dict())
    with pytest.raises(ValueError, match="DiT refuses this config: patch_size 2 does not divide"):
        DiT.from_pretrained(tmp_path)


def test_weights_that_do_not_fit_are_refused_before_building(tmp_path):
    small = MLPVelocity(dim=2, hidden=32).state_dict()
    # a config asking for a huge net with small weights: refused from the meta-device probe, nothing allocated
    _write(tmp_path, {"dim": 2, "hidden": 200_000}, small)
    with pytest.raises(ValueError, match=r"does not fit the config.*shape"):
        MLPVelocity.from_pretrained(tmp_path)
    _write(tmp_path, {"dim": 2, "hidden": 32, "depth": 5}, small)
    with pytest.raises(ValueError, match=r"does not fit the config.*missing \['blocks.4"):
        MLPVelocity.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        MLPVelocity.from_pretrained(tmp_path)


def test_missing_files_and_folders(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a save_pretrained folder: no model.safetensors"):
        UNet.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        UNet.from_pretrained(tmp_path / "nowhere")


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from fm_nets import UNet
    from fm_nets.hub import HubUnreachableError
    import huggingface_hub._snapshot_download  # imported before the clock: the access is timed, not imports
    start = time.monotonic()
    try:
        UNet.from_pretrained("fm-toolkit-test/no-such-model")
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
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert float(lines[0]) < 5.0
    message = lines[1]
    assert "fm-toolkit-test/no-such-model" in message and "local folder" in message and "HF_HUB_OFFLINE" in message
    if "HF_ENDPOINT" in env:
        assert "could not be reached" in message and "127.0.0.1:9" in message
    assert done.stderr.strip() == "", done.stderr  # no retry warnings


def test_hub_unreachable_error_is_a_value_error():
    assert issubclass(HubUnreachableError, ValueError) and issubclass(HubUnreachableError, ConnectionError)


def test_save_pretrained_keeps_an_existing_model_card(tmp_path):
    (tmp_path / "README.md").write_text("my card")
    MLPVelocity(dim=2, hidden=16, depth=1).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my card"
    # and the generated card carries the library's Hub metadata
    other = tmp_path / "other"
    MLPVelocity(dim=2, hidden=16, depth=1).save_pretrained(other)
    assert "library_name: fm-nets" in (other / "README.md").read_text()
