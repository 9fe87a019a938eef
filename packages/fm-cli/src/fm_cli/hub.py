"""The Hugging Face Hub as the command lines use it: upload a folder, in one line when it fails.

Loading from the Hub goes through the packages that load (``fm_nets`` networks, ``fm_nflows``
flows, ``fm_latent``'s VAE): each fetches a Hub id with one metadata request and no retries, and
raises its ``HubUnreachableError`` (a ConnectionError and a ValueError) with one line saying the Hub
could not be reached and to give a local folder (or set HF_HUB_OFFLINE=1). This module does the
same for uploads (``export --push``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HubError", "push_folder"]


class HubError(ValueError):
    """A Hub operation failed; the message is one line that says why and what to do."""


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Upload ``folder`` to the model repository ``repo_id`` (created if missing); returns the commit URL.

    Offline (HF_HUB_OFFLINE=1), an unreachable Hub, a missing or refused token, or a bad repository
    id raise :class:`HubError` with one line, without retries.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"cannot push to {repo_id!r}: HF_HUB_OFFLINE=1 is set; unset it to upload (the folder is {folder})"
        )
    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                   commit_message="Upload a model exported by the fm toolkit")  # fmt: skip
    except HFValidationError as exc:
        raise HubError(f"{repo_id!r} is not a valid Hub repository id ('org/name'): {exc}") from None
    except OfflineModeIsEnabled:
        raise HubError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE=1 is set; unset it to upload") from None
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubError(f"the Hub refused the upload to {repo_id!r} ({first}); log in with `hf auth login`") from None
    except Exception as exc:  # connection errors are httpx's TransportError family (or OSErrors)
        names = {t.__name__ for t in type(exc).__mro__}
        if not (names & {"TransportError", "ConnectionError", "TimeoutError", "OSError"}):
            raise
        raise HubError(
            f"cannot push to {repo_id!r}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached "
            f"({type(exc).__name__}); the exported folder {folder} is complete, upload it later"
        ) from None
    return str(commit)
