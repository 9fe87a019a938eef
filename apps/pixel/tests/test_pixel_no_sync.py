"""No host-device synchronisation inside a training step (GPU readiness, checked on the CPU).

On a GPU, ``.item()``, ``.tolist()``, ``bool(t)``, ``float(t)``, ``int(t)`` and ``.numpy()`` on
a device tensor stall the CPU until the GPU catches up. fm-train syncs only every ``log_every``
steps (and at checkpoints and sample grids). This test counts those calls made by the project's
own code (fm_* packages and apps) during steps between two log intervals, for the real fm-pixel
pipeline (batch gather, flow-matching loss with label dropout, U-Net, AdamW, EMA), with
``torch.Tensor``'s methods wrapped. The allowed exceptions are the input checks (label range
in fm_core's loss and fm_nets' label embedding, t range in fm_core's path), which read values
only when the tensors are on the CPU, where reading costs nothing (on a GPU they are
``torch._assert_async``, checked on the device); they are counted separately and must run every
step, so the check is known to see them.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch

from fm_data.images import ImageData
from fm_pixel.config import make_config
from fm_pixel.training import build_model, make_batch_fn, make_loss_fn
from fm_train import Trainer

SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


def _ours(filename: str) -> bool:
    return "/fm_" in filename.replace("\\", "/") and "/tests/" not in filename


def test_no_sync_between_log_intervals(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = ImageData(
        images=torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g),
        labels=torch.arange(64) % 10,
        name="mnist",
        split="train",
    )
    cfg = make_config("mnist", conditional=True, net_config={"channels": [8, 16]}, batch_size=8)
    tcfg = cfg.train.replace(steps=12, device="cpu", progress=False, log_every=6)
    torch.manual_seed(0)
    model = build_model(cfg)
    trainer = Trainer(model, make_loss_fn(cfg), make_batch_fn(data, cfg, torch.device("cpu")), tcfg, tmp_path / "run")

    calls: Counter = Counter()
    input_checks: Counter = Counter()
    state = {"step": None}

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, **k):
            caller = sys._getframe(1)
            if state["step"] is not None and _ours(caller.f_code.co_filename):
                where = f"{caller.f_code.co_filename.rsplit('/', 1)[-1]}:{caller.f_lineno} ({caller.f_code.co_name})"
                host_only = caller.f_code.co_name == "device_check" or (
                    name == "__bool__" and where.startswith("embeddings.py") and caller.f_code.co_name == "forward"
                )
                (input_checks if host_only else calls)[(state["step"], name, where)] += 1
            return original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in SYNCING:
        wrap(name)
    # mark which step is running: the batch function is called first thing in each step
    batch_fn = trainer.batch_fn

    def marking_batch_fn(step, gen):
        state["step"] = step
        return batch_fn(step, gen)

    trainer.batch_fn = marking_batch_fn
    trainer.train()
    state["step"] = None

    log_steps = {6, 12}  # the flush at a log interval syncs once, by design
    inside = {k: v for k, v in calls.items() if k[0] not in log_steps}
    assert inside == {}, f"host syncs inside training steps: {inside}"
    assert any(k[0] in log_steps for k in calls), "the wrappers saw nothing: the check would be vacuous"
    assert sorted({k[0] for k in input_checks}) == list(range(1, 13))
