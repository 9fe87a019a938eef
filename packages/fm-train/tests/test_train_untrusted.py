"""A checkpoint is untrusted input: a seeded fuzz of its contents (train_state.pt, the safetensors
files, config.json) must end every case in a one-line CheckpointError (or a diverged-run error) or
in a clean run; never a crash, a hang or a traceback. Targeted cases pin the most severe ones:
AdamW moments of the wrong size (the fused CPU kernel corrupted the heap), NaN EMA, NaN elapsed.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fm_train import CheckpointError, TrainConfig, Trainer, TrainingDivergedError, load_model_for_sampling
from fm_train.statecheck import check_optimizer_state

torch.set_num_threads(1)

N_CASES = 200
ALLOWED = (CheckpointError, TrainingDivergedError)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))


def _batch(step: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(8, 3, generator=gen)


def _loss(model: nn.Module, batch: torch.Tensor, ctx) -> torch.Tensor:
    return ((model(batch) - batch.flip(1)) ** 2).mean()


def _trainer(run: Path, steps: int, minutes: float | None = None) -> Trainer:
    budget = {"steps": None, "minutes": minutes} if minutes is not None else {"steps": steps}
    cfg = TrainConfig(**budget, batch_size=8, lr=1e-2, log_every=2, ckpt_every=2, progress=False, device="cpu")
    return Trainer(_model(), _loss, _batch, cfg, run, extra_config={"net": "tiny"})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("untrusted") / "run"
    _trainer(run, 4).train()
    return run


def _copy(base: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(base, dst)
    return dst


# ----------------------------------------------------------------------------- the mutations

DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
)


def _random_tensor(rng: random.Random, like: torch.Tensor | None = None) -> torch.Tensor:
    kind = rng.choice(("shape", "dtype", "nan", "inf", "huge", "bytes"))
    base = like if isinstance(like, torch.Tensor) else torch.zeros(rng.randint(0, 5))
    shape = list(base.shape)
    if kind == "shape" or not shape and kind in ("nan", "inf"):
        shape = [rng.randint(0, 7) for _ in range(rng.randint(0, 3))]
        if shape == list(base.shape):
            shape.append(2)
        t = torch.randn(shape, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        return t.to(rng.choice(DTYPES)) if rng.random() < 0.5 else t.to(base.dtype)
    if kind == "dtype":
        others = [d for d in DTYPES if d != base.dtype]
        return base.to(rng.choice(others))
    t = base.clone()
    if kind == "bytes" or not t.is_floating_point():
        if t.numel():
            flat = t.view(-1)
            flat[rng.randrange(t.numel())] = rng.choice((0, 1, 255, -1, 2**31 - 1)) if t.dtype != torch.bool else True
        return t.to(rng.choice((t.dtype, torch.float32)))
    value = {"nan": math.nan, "inf": rng.choice((math.inf, -math.inf)), "huge": rng.choice((1e38, -3e38, 1e30))}[kind]
    if t.numel():
        if rng.random() < 0.3:
            t.fill_(value)
        else:
            t.view(-1)[rng.randrange(t.numel())] = value
    return t


def _random_value(rng: random.Random, old):
    if isinstance(old, torch.Tensor) or rng.random() < 0.3:
        return _random_tensor(rng, old if isinstance(old, torch.Tensor) else None)
    return rng.choice(
        (math.nan, math.inf, -math.inf, 1e308, -1, -1.5, 2**63, 10**20, 0, True, "abc", None, [], {}, [1.0, math.nan])
    )


def _leaves(obj, path=()):
    """Every (path, value) of a nested dict/list structure, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))


def _set(obj, path, value, delete=False):
    *head, last = path
    for k in head:
        obj = obj[k]
    if isinstance(obj, tuple):
        return False
    if delete:
        if isinstance(obj, dict):
            del obj[last]
        else:
            obj.pop(last)
    else:
        obj[last] = value
    return True


def _mutate_state(rng: random.Random, run: Path) -> str:
    f = run / "checkpoint" / "train_state.pt"
    ts = torch.load(f, weights_only=True)
    leaves = [(p, v) for p, v in _leaves(ts) if p]
    # AdamW's moments and step first: the case that corrupted memory
    if rng.random() < 0.35:
        leaves = [(p, v) for p, v in leaves if p[0] == "optimizer"] or leaves
    path, old = rng.choice(leaves)
    op = rng.choice(("replace", "replace", "replace", "delete", "extra"))
    if op == "delete":
        done = _set(ts, path, None, delete=True)
    elif op == "extra":
        parent = ts
        for k in path[:-1]:
            parent = parent[k]
        done = isinstance(parent, dict)
        if done:
            parent[rng.choice(("extra", 99, "exp_avg_x", "max_exp_avg_sq"))] = _random_value(rng, None)
    else:
        done = _set(ts, path, _random_value(rng, old))
    torch.save(ts, f)
    return f"train_state.pt {op} {'.'.join(map(str, path))}" + ("" if done else " (no-op)")


def _mutate_weights(rng: random.Random, run: Path) -> str:
    name = rng.choice(("model.safetensors", "ema.safetensors"))
    f = run / "checkpoint" / name
    sd = load_file(str(f))
    key = rng.choice(sorted(sd))
    op = rng.choice(("replace", "replace", "replace", "delete", "extra"))
    if op == "delete":
        del sd[key]
    elif op == "extra":
        sd["extra." + key] = _random_tensor(rng, sd[key])
    else:
        sd[key] = _random_tensor(rng, sd[key]).contiguous()
    save_file(sd, str(f))
    return f"{name} {op} {key}"


def _mutate_config(rng: random.Random, run: Path) -> str:
    f = run / "checkpoint" / "config.json"
    cfg = json.loads(f.read_text())
    leaves = [(p, v) for p, v in _leaves(cfg) if p]
    path, _ = rng.choice(leaves)
    op = rng.choice(("replace", "replace", "delete", "extra"))
    if op == "delete":
        _set(cfg, path, None, delete=True)
    elif op == "extra":
        cfg[rng.choice(("extra", "net2", "train"))] = rng.choice((1, "x", None, {"a": 1}))
    else:
        value = rng.choice((-1, 0, 1, 3, 4, 10**20, 1e308, "x", None, True, [], {}, 2.5))
        _set(cfg, path, value)
    f.write_text(json.dumps(cfg))
    return f"config.json {op} {'.'.join(map(str, path))}"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def test_checkpoint_fuzz_ends_in_one_line_or_a_clean_run(base_run, tmp_path, monkeypatch):
    """>= 200 seeded cases: each resume ends in a one-line CheckpointError / TrainingDivergedError or
    trains to the end with finite weights (never another exception, a signal or a hang)."""
    monkeypatch.setattr("os.fsync", lambda fd: None)  # durability is not what this test checks: speed
    outcomes: dict[str, int] = {"error": 0, "clean": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(N_CASES):
            rng = random.Random(1000 + i)
            run = _copy(base_run, tmp_path, f"c{i}")
            what = rng.choice((_mutate_state, _mutate_state, _mutate_weights, _mutate_config))(rng, run)
            signal.alarm(20)
            try:
                result = _trainer(run, 5).train(resume=True)
            except ALLOWED as e:
                msg = str(e)
                assert "\n" not in msg.strip() and len(msg) < 600, f"case {i} ({what}): {msg!r}"
                outcomes["error"] += 1
            except _Hang:
                pytest.fail(f"case {i} ({what}): no end after 20 s")
            except Exception as e:  # noqa: BLE001 - any other exception is the failure this test looks for
                pytest.fail(f"case {i} ({what}): {type(e).__name__}: {e}")
            else:
                assert result.steps == 5, what
                outcomes["clean"] += 1
            finally:
                signal.alarm(0)
            shutil.rmtree(run)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert outcomes["error"] > N_CASES // 2, outcomes  # most mutations must be caught, not trained through
    assert outcomes["clean"] > 0, outcomes


# ----------------------------------------------------------------------------- targeted cases


def _edit_state(run: Path, edit) -> None:
    f = run / "checkpoint" / "train_state.pt"
    ts = torch.load(f, weights_only=True)
    edit(ts)
    torch.save(ts, f)


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq"])
def test_wrong_size_adam_moments_are_refused_before_the_optimizer_sees_them(base_run, tmp_path, key):
    run = _copy(base_run, tmp_path, "r")
    _edit_state(run, lambda ts: ts["optimizer"]["state"][0].__setitem__(key, torch.zeros(1000)))
    with pytest.raises(CheckpointError, match=rf"train_state.pt: .*optimizer.state.0.{key} must have shape \[8, 3\]"):
        _trainer(run, 6).train(resume=True)


def test_negative_second_moment_and_fractional_step_are_refused(base_run, tmp_path):
    run = _copy(base_run, tmp_path, "a")
    _edit_state(run, lambda ts: ts["optimizer"]["state"][1]["exp_avg_sq"].fill_(-1.0))
    with pytest.raises(CheckpointError, match=r"exp_avg_sq holds values in \[-1.0, -1.0\], allowed \[0.0, None\]"):
        _trainer(run, 6).train(resume=True)
    run = _copy(base_run, tmp_path, "b")
    _edit_state(run, lambda ts: ts["optimizer"]["state"][1].__setitem__("step", torch.tensor(2.5)))
    with pytest.raises(CheckpointError, match=r"optimizer.state.1.step must be an integer in \[0, 4\], found 2.5"):
        _trainer(run, 6).train(resume=True)


@pytest.mark.slow  # a fresh interpreter imports torch: ~20-50 s on the 2-core machine
def test_the_fused_optimizer_never_runs_on_bad_moments_in_a_fresh_process(base_run, tmp_path):
    """Before the check the fused CPU AdamW corrupted the heap here (SIGSEGV / SIGABRT / a hang)."""
    run = _copy(base_run, tmp_path, "p")
    _edit_state(run, lambda ts: ts["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(3)))
    here = Path(__file__).resolve()
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("t", {str(here)!r})
        t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
        try:
            t._trainer(__import__("pathlib").Path({str(run)!r}), 6).train(resume=True)
        except t.CheckpointError as e:
            print("ERR", e); sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "optimizer.state.0.exp_avg must have shape [8, 3]" in proc.stdout


def test_nan_ema_is_refused_for_sampling_and_resume(base_run, tmp_path):
    run = _copy(base_run, tmp_path, "e")
    f = run / "checkpoint" / "ema.safetensors"
    sd = load_file(str(f))
    sd = {k: torch.full_like(v, math.nan) for k, v in sd.items()}
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"ema.safetensors: does not fit the model \(NaN or infinite values in"):
        load_model_for_sampling(run, lambda cfg: _model())
    with pytest.raises(CheckpointError, match=r"ema.safetensors: .*NaN or infinite values in"):
        _trainer(run, 6).train(resume=True)
    assert load_file(str(f))["0.weight"].isnan().all()  # nothing rewritten


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_bad_elapsed_with_a_minutes_budget_is_refused(base_run, tmp_path, value):
    """A NaN elapsed used to make a minutes budget run for ever."""
    run = _copy(base_run, tmp_path, "m")
    _edit_state(run, lambda ts: ts.__setitem__("elapsed", value))
    with pytest.raises(CheckpointError, match=r"train_state.pt: does not fit this run .*elapsed must be a finite"):
        _trainer(run, 0, minutes=0.05).train(resume=True)


def test_check_optimizer_state_accepts_what_adamw_writes_and_is_independent_of_it():
    """A real AdamW state passes unchanged (tensor for tensor); the checked copy does not share memory."""
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.ones(2, 3)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    out = check_optimizer_state(sd, opt, max_step=1)
    for pid, entry in sd["state"].items():
        for k, v in entry.items():
            assert torch.equal(out["state"][pid][k], v)
            assert out["state"][pid][k].data_ptr() != v.data_ptr()
    with pytest.raises(ValueError, match=r"optimizer.state.0.step must be an integer in \[0, 0\], found 1.0"):
        check_optimizer_state(sd, opt, max_step=0)
    bad = {**sd, "param_groups": [{**sd["param_groups"][0], "betas": (0.5, 0.9)}]}
    with pytest.raises(ValueError, match=r"optimizer.param_groups.0.betas is \(0.5, 0.9\), the run has \(0.9, 0.999\)"):
        check_optimizer_state(bad, opt, max_step=1)
