#!/usr/bin/env bash
# The GPU check of issue 21: one prepared script, under 10 minutes on a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ${OUT:-gpu-check}
#
# Steps (each under its own time limit; a failed step is recorded and the next one runs):
#   1. the machine: nvidia-smi, torch and its CUDA view
#   2. CUDA tests: pytest -m "not slow" on the test files that exercise CUDA (skipped without it elsewhere),
#      the precision / bf16 tests and the compile test (slow-marked, run here explicitly)
#   3. NCCL DDP with one process: torchrun --nproc-per-node 1 on a tiny fm-pixel train (fm-toy2d without MNIST)
#   4. bf16 and compile through the CLI: --precision bf16 --compile, and --precision auto (the decision is printed)
#   5. benchmarks/throughput.py on the GPU (fp32 / bf16 / bf16+compile, all four networks, not written)
#   6. a 2-minute fm-pixel run (conditional Fashion-MNIST, --precision auto) with sample and eval
# Everything goes to OUT_DIR: one log per step and summary.txt (one line per step: ok / FAILED / skipped,
# seconds, and the figures). The exit status is the number of failed steps.
#
# Python: the project's .venv if there is one, else python3 with the workspace's src folders on
# PYTHONPATH (its torch, timm, einops, safetensors, torchdiffeq, scipy, pytest must be installed).
# Data: MNIST / Fashion-MNIST from $FM_DATA_DIR, else ./shared/data (copy ../shared/data/{mnist,fashion-mnist}
# there so that it travels with the checkout); without them the pixel steps fall back or are skipped.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
FAILED=0
START=$(date +%s)

if [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python3
    SRC=$(ls -d "$ROOT"/packages/*/src "$ROOT"/apps/*/src | tr '\n' ':')
    export PYTHONPATH="${SRC}${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
if [ -z "${FM_DATA_DIR:-}" ] && [ -d "$ROOT/shared/data" ]; then
    export FM_DATA_DIR="$ROOT/shared/data"
fi
HAVE_MNIST=0
if [ -n "${FM_DATA_DIR:-}" ] && [ -d "$FM_DATA_DIR/mnist" ]; then HAVE_MNIST=1; fi
HAVE_FASHION=0
if [ -n "${FM_DATA_DIR:-}" ] && [ -d "$FM_DATA_DIR/fashion-mnist" ]; then HAVE_FASHION=1; fi

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, one summary line
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$? dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        note "ok      $name (${dt}s)"
    else
        FAILED=$((FAILED + 1))
        note "FAILED  $name (${dt}s, exit $rc; see $name.log): $(tail -n 3 "$OUT_DIR/$name.log" | tr '\n' ' ' | cut -c1-400)"
    fi
    return $rc
}

skip() { note "skipped $1: $2"; }

# a metrics.json field, for the summary: metric RUN_DIR SECTION KEY...
metric() {
    "$PY" - "$@" <<'EOF'
import json, sys
run, keys = sys.argv[1], sys.argv[2:]
try:
    v = json.load(open(f"{run}/metrics.json"))
    for k in keys:
        v = v[-1][k] if isinstance(v, list) else v[k]
    print(v)
except Exception as e:  # noqa: BLE001 - the summary says what is missing
    print(f"n/a ({type(e).__name__}: {e})")
EOF
}

# ----------------------------------------------------------------------------- 1. the machine
note "gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $ROOT -> $OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$SUMMARY"
if ! "$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); sys.exit(0 if torch.cuda.is_available() else 1)" 2>&1 | tee -a "$SUMMARY"; then
    note "no CUDA device visible to $PY: nothing to check"
    exit 1
fi
note "data: FM_DATA_DIR=${FM_DATA_DIR:-unset} (mnist: $HAVE_MNIST, fashion-mnist: $HAVE_FASHION)"

# ----------------------------------------------------------------------------- 2. CUDA tests
step cuda-tests 180 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" -x \
    packages/fm-core/tests/test_core_time_samplers.py packages/fm-core/tests/test_core_coupling.py \
    packages/fm-core/tests/test_core_sampling.py packages/fm-cli/tests/test_cli_argtypes.py \
    packages/fm-cli/tests/test_cli_train.py packages/fm-train/tests/test_train_devices.py \
    packages/fm-train/tests/test_train_precision.py packages/fm-nets/tests/test_nets_bf16.py \
    tests/test_bf16_training.py
grep -E "passed|failed|skipped" "$OUT_DIR/cuda-tests.log" | tail -n 1 | sed 's/^/  pytest: /' | tee -a "$SUMMARY"
step compile-test 120 "$PY" -m pytest -q -p no:cacheprovider -m slow \
    packages/fm-train/tests/test_train_precision.py -k compile

# ----------------------------------------------------------------------------- 3. NCCL, one process
TINY="--conditional --channels 8,16 --patch-size 2 --batch-size 32 --sample-every 1000 --quiet --device cuda"
if [ $HAVE_MNIST -eq 1 ]; then
    step nccl-ddp 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m fm_pixel.cli train \
        --dataset mnist $TINY --steps 50 --out "$OUT_DIR/ddp"
    note "  processes $(metric "$OUT_DIR/ddp" train processes), $(metric "$OUT_DIR/ddp" train images_per_s) images/s"
else
    step nccl-ddp-toy 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m fm_toy2d.cli train \
        --steps 100 --device cuda --no-pictures --quiet --out "$OUT_DIR/ddp-toy"
fi

# ----------------------------------------------------------------------------- 4. bf16 and compile
if [ $HAVE_MNIST -eq 1 ]; then
    step bf16-compile 180 "$PY" -m fm_pixel.cli train --dataset mnist $TINY --steps 100 --precision bf16 --compile \
        --out "$OUT_DIR/bf16-compile"
    note "  bf16+compile: compile $(metric "$OUT_DIR/bf16-compile" train compile_seconds) s, $(metric "$OUT_DIR/bf16-compile" train images_per_s) images/s"
    step precision-auto 120 "$PY" -m fm_pixel.cli train --dataset mnist $TINY --steps 50 --precision auto \
        --out "$OUT_DIR/auto"
    note "  auto: $(metric "$OUT_DIR/auto" precision chosen) ($(metric "$OUT_DIR/auto" precision reason); rates $(metric "$OUT_DIR/auto" precision rates))"
else
    skip bf16-compile-pixel "no MNIST under FM_DATA_DIR"
fi
step toy-auto-compile 150 "$PY" -m fm_toy2d.cli train --steps 200 --device cuda --precision auto --compile \
    --no-pictures --quiet --out "$OUT_DIR/toy-auto"
note "  toy2d auto: $(metric "$OUT_DIR/toy-auto" precision chosen), compile $(metric "$OUT_DIR/toy-auto" precision compile_seconds) s"

# ----------------------------------------------------------------------------- 5. throughput
step throughput 300 "$PY" benchmarks/throughput.py --device cuda --no-write --seconds 2 --min-steps 5
sed -n '/^Matrix product/p;/^| /p' "$OUT_DIR/throughput.log" | tee -a "$SUMMARY"

# ----------------------------------------------------------------------------- 6. two minutes of fm-pixel
if [ $HAVE_FASHION -eq 1 ]; then
    RUN="$OUT_DIR/pixel-2min"
    if step pixel-train-2min 200 "$PY" -m fm_pixel.cli train --dataset fashion-mnist --conditional --minutes 2 \
        --precision auto --device cuda --quiet --out "$RUN"; then
        note "  $(metric "$RUN" train steps) steps, $(metric "$RUN" train images_per_s) images/s, precision $(metric "$RUN" train precision)"
        step pixel-sample 60 "$PY" -m fm_pixel.cli sample --run "$RUN" --n 1000 --out "$RUN/samples.npz" \
            --grid "$RUN/grid.png" --device cuda --quiet
        step pixel-eval 120 "$PY" -m fm_pixel.cli eval --run "$RUN" --n 2000 --device cuda --quiet
        note "  FID $(metric "$RUN" eval fid), label accuracy $(metric "$RUN" eval label_accuracy) (NFE $(metric "$RUN" eval nfe))"
    fi
else
    skip pixel-2min "no Fashion-MNIST under FM_DATA_DIR"
fi

note "done in $(($(date +%s) - START)) s, $FAILED step(s) failed"
exit $FAILED
