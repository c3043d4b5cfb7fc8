#!/usr/bin/env bash
# The record recipe on one GPU, ~5 min (issue 16, item 4): training step MFU for d12/d20/d24 and the bf16
# CUDA-graph decode check. Needs torch with CUDA; no Ray, no network, nothing of raychat installed (libs/ on
# PYTHONPATH). Optional wheels in $WHEELS (default .gpu/whl): torchao for FP8, flash-attn-4 / flash_attn_interface
# if ever carried; they are installed into /tmp/rc-site without dependencies or network.
#
#   bash benchmarks/gpu_recipe_check.sh            # logs and JSON under $OUT (default /tmp/raychat-recipe-check)
#   STEPS="decode" bash benchmarks/gpu_recipe_check.sh   # a subset: env train_fp8 train_bf16 decode
#
# Steps:
#   env         GPU, torch, which attention backend loads and why the others did not (load_errors)
#   train_fp8   bench_train d12,d20,d24: compiled bf16 + FP8 tensorwise blocks (torchao), window pattern L,
#               8 timed steps -> tokens/s, MFU vs the bf16 datasheet peak, peak memory, attention backend
#               (skipped with a message when torchao is missing)
#   train_bf16  bench_train d20 without FP8: comparable with the 41.6% of 2026-11-30 (same shapes, SDPA)
#   train_sssl  bench_train d20 with the record's SSSL windows (512 of 2048): only fast on a flash backend
#   decode      gpu_decode_check.py: bf16 model, CUDA graphs vs eager: greedy tokens equal, logits within atol
set -uo pipefail
OUT="${OUT:-/tmp/raychat-recipe-check}"
WHEELS="${WHEELS:-.gpu/whl}"
PY="${PY:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/libs:$PWD/services${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rc-site \
        "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/rc-site"
fi
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s (log $OUT/$name.log)"
    tail -n "${TAIL:-24}" "$OUT/$name.log"
}
STEPS=" ${STEPS:-env train_fp8 train_bf16 train_sssl decode} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
BT="$PY benchmarks/bench_train.py --steps ${TRAIN_STEPS:-8} --warmup 2"
want env && step env 60 "$PY" -c "
import torch
from raychat.model.attention import load_errors, select_backend
print('gpu', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability(), 'torch', torch.__version__)
print('attention', select_backend('cuda'))
print('load errors', load_errors() or 'none')
try:
    import torchao; print('torchao', torchao.__version__)
except ImportError as e:
    print('torchao missing:', e)
"
if want train_fp8; then
    if "$PY" -c "import torchao.float8" 2>/dev/null; then
        step train_fp8 170 $BT --configs d12,d20,d24 --fp8 tensorwise --json "$OUT/train_fp8.json"
    else
        echo "=== train_fp8: skipped (no torchao: carry its wheel in $WHEELS)"
    fi
fi
want train_bf16 && step train_bf16 80 $BT --configs d20 --json "$OUT/train_bf16.json"
want train_sssl && step train_sssl 80 $BT --configs d20 --window-pattern SSSL --json "$OUT/train_sssl.json"
want decode && step decode 90 "$PY" benchmarks/gpu_decode_check.py --json "$OUT/decode.json"
exit 0  # each step printed its own rc above
