"""Hub-style sharing for the networks: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

Every network of this package inherits :class:`HubMixin` (huggingface_hub's
``PyTorchModelHubMixin``), so a trained net leaves its run as a folder in the Hub's layout::

    DIR/config.json         the constructor's arguments (the net's ``.config``; JSON)
    DIR/model.safetensors   the weights (state_dict)
    DIR/README.md           a model card (written once; an existing card is kept)

``Net.from_pretrained(DIR or "org/name")`` treats both files as untrusted input: the config must
hold only the constructor's keyword arguments with values of the annotated types, and the weights
must match the architecture that config builds (names and shapes, checked before anything large is
allocated). Anything else is a one-line ``ValueError``. A Hub id is fetched with
``huggingface_hub.snapshot_download`` (no retries); when the Hub cannot be reached and the files
are not cached, :class:`HubUnreachableError` says so in one line.

Example::

    net = UNet(num_classes=10)
    net.save_pretrained("my-unet")               # config.json + model.safetensors + README.md
    same = UNet.from_pretrained("my-unet")       # eval mode, on the CPU
    # net.push_to_hub("me/my-unet")              # needs a token (hf auth login)
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "HubMixin", "HubUnreachableError", "check_config", "hub_folder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

T = TypeVar("T", bound="HubMixin")


class HubUnreachableError(ConnectionError, ValueError):
    """The Hugging Face Hub could not be reached (or HF_HUB_OFFLINE=1) and the files are not cached.

    A ``ValueError`` too, so command lines that turn ValueErrors into one-line errors show it as one.
    """


def hub_folder(repo_id: str, files: Sequence[str], *, revision: str | None = None) -> Path:
    """Local folder holding ``files`` of Hub repository ``repo_id`` (downloaded or from the cache).

    One metadata request, no retries: offline (``HF_HUB_OFFLINE=1`` or no connection) with the
    files not cached raises :class:`HubUnreachableError`; an unknown repository raises ValueError.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(files)))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubUnreachableError(
                f"cannot load {repo_id!r}: HF_HUB_OFFLINE=1 is set and it is not in the local Hub cache; give a "
                "local folder written by save_pretrained instead, or unset HF_HUB_OFFLINE to download it"
            ) from None
        raise HubUnreachableError(
            f"cannot load {repo_id!r}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached and it is "
            "not in the local cache; give a local folder written by save_pretrained instead "
            "(HF_HUB_OFFLINE=1 uses cached files without asking the Hub)"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"no model repository {repo_id!r} on the Hugging Face Hub (or it is private: log in with `hf auth login`)"
        ) from None
    except HFValidationError as exc:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a valid Hub id ('org/name'): {exc}") from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"Hub repository {repo_id!r} has no {', '.join(missing)} (is it a save_pretrained folder?)")
    return folder


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a constructor annotation (int, float, bool, str, None, Sequence[int], unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (Sequence, list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list | tuple) and (not args or all(_type_ok(v, args[0]) for v in value))
    return True  # an annotation this checker does not know: the constructor checks the value


def check_config(factory: Any, config: Any, source: str) -> dict[str, Any]:
    """``config`` checked against ``factory``'s keyword arguments (names and annotated types).

    Raises a one-line ValueError naming ``source`` (a file) and the bad key or value.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object of constructor arguments, got {type(config).__name__}")
    func = cast(Any, factory).__init__ if isinstance(factory, type) else factory
    params = {
        n: p
        for n, p in inspect.signature(func).parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; {factory.__name__} takes {', '.join(params)}")
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in config]
    if required:
        raise ValueError(f"{source}: missing {', '.join(required)} ({factory.__name__} needs them)")
    hints = typing.get_type_hints(func)
    for key, value in config.items():
        if key in hints and not _type_ok(value, hints[key]):
            raise ValueError(f"{source}: {key}={value!r} is not a valid {factory.__name__} {key} ({hints[key]})")
    return dict(config)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _state_problem(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with ``state`` as ``model``'s weights (names, shapes, floating dtypes), or None."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        return f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
    for name, ref in own.items():
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            return f"{name} has shape {tuple(got.shape)}, the config builds {tuple(ref.shape)}"
        if got.is_floating_point() != ref.is_floating_point():
            return f"{name} has dtype {got.dtype}, expected {ref.dtype}"
    return None


class HubMixin(
    PyTorchModelHubMixin,
    library_name="fm-nets",
    tags=["flow-matching", "fm-toolkit"],
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a network with a ``.config``.

    The subclass's ``.config`` must be its constructor's keyword arguments, JSON-safe (tuples as
    lists); that dict, not the raw arguments, is what config.json stores.
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write model.safetensors and config.json (each atomically: written beside, then renamed)."""
        from safetensors.torch import save_file

        wrapped = getattr(self, "module", None)  # DDP keeps the network in .module
        module = wrapped if isinstance(wrapped, nn.Module) else cast(nn.Module, self)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_directory = Path(save_directory)
        _atomic_write(save_directory / WEIGHTS_NAME, lambda p: save_file(state, p))
        text = json.dumps(cast(Any, module).config, indent=2, sort_keys=True)
        _atomic_write(save_directory / CONFIG_NAME, lambda p: Path(p).write_text(text))

    @classmethod
    def from_pretrained(
        cls: type[T],
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        **overrides: Any,
    ) -> T:
        """The net saved in a local folder or Hub repository, in eval mode on ``map_location``.

        ``overrides`` replace config.json entries (e.g. ``dropout=0.0``). A config with unknown keys or
        values of the wrong type, or weights that do not fit it, raise a one-line ValueError; an
        unreachable Hub raises :class:`HubUnreachableError`.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        where = Path(pretrained_model_name_or_path).expanduser()
        if where.is_dir():
            folder = where
            missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / f).is_file()]
            if missing:
                raise ValueError(f"{str(folder)!r} is not a save_pretrained folder: no {', '.join(missing)}")
        elif isinstance(pretrained_model_name_or_path, Path) or str(pretrained_model_name_or_path).startswith(
            ("/", ".", "~")
        ):
            raise ValueError(f"no such folder: {str(pretrained_model_name_or_path)!r}")
        else:
            folder = hub_folder(str(pretrained_model_name_or_path), (CONFIG_NAME, WEIGHTS_NAME), revision=revision)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        try:
            raw = json.loads(cfg_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
        config = check_config(cls, {**raw, **overrides} if isinstance(raw, dict) else raw, str(cfg_path))
        try:
            state = load_file(str(w_path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{w_path}: not a readable safetensors file ({exc})") from None
        try:
            with torch.device("meta"):  # the architecture without allocating it: check the weights first
                probe = cls(**config)
        except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
            raise ValueError(f"{cfg_path}: {cls.__name__} refuses this config: {exc}") from None
        problem = _state_problem(probe, state)  # type: ignore[arg-type]
        if problem is not None:
            raise ValueError(f"{w_path} does not fit the config in {cfg_path}: {problem}")
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: keep the global RNG
            model = cls(**config)
        model.load_state_dict(state, strict=True)  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        return model.to(map_location)  # type: ignore[attr-defined]
