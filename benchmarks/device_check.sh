#!/usr/bin/env bash
# GPU checks in one go, for a GPU box that has torch but not the whole raychat install (no Ray, no pydantic):
# everything here goes through libs/ and the Ray-free commands (`--no-ray`), as a user on one GPU would.
#
#   bash benchmarks/device_check.sh BUNDLE      # BUNDLE holds data/ (parquet shards, last = val),
#                                               # run/tokenizer/ (from `raychat tok-train`), eval_bundle/, whl/ (optional)
#
# Steps (each with its own time limit; logs to $OUT/<step>.log, the tail printed):
#   info, selftest --quick (attention backends, bf16 step, FP8, compile, engine), bench_train on the GPU configs
#   (d12/d20 compiled: tokens/s, MFU, peak memory), a real pretraining run (--no-ray, compiled, bf16, Wikipedia
#   shards) with a checkpoint, CORE + bpb eval of that checkpoint, a chat one-shot through the CUDA engine, and
#   the engine benchmark at d12. STEPS="selftest bench_engine ..." runs a subset, in the order above.
set -uo pipefail
B="${1:-.gpu}"
OUT="${OUT:-/tmp/raychat-device-check}"
mkdir -p "$OUT"
PY="${PY:-python3}"
export PYTHONPATH="$PWD/libs:$PWD/services${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G "$B/whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rc-site "$B"/whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/rc-site"
fi
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
    grep -v -E "^\s*$|it/s\]|^(read|train|eval) +[0-9]+%" "$OUT/$name.log" | tail -n "${TAIL:-22}"
}
RC="$PY -m raychat.cli"
STEPS=" ${STEPS:-info sdpa selftest bench_train pretrain eval_base chat bench_engine} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
RUN="$B/${RUN_NAME:-run}"
[ -d "$RUN/tokenizer" ] || { mkdir -p "$RUN" && cp -r "$B/run/tokenizer" "$RUN/"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
want info && step info 30 $RC info
want sdpa && step sdpa 60 $PY benchmarks/bench_sdpa_shapes.py
want selftest && step selftest 150 $RC selftest --quick
want bench_train && step bench_train 200 $PY benchmarks/bench_train.py --steps 10 --warmup 3 ${TRAIN_CONFIGS:+--configs $TRAIN_CONFIGS}
want pretrain && step pretrain 150 $RC pretrain --no-ray --run-dir "$RUN" --data-dir "$B/data" --depth "${DEPTH:-8}" \
    --seq-len 1024 --device-batch-size 32 --total-batch-size 65536 --num-iterations "${ITERS:-150}" \
    --eval-every 50 --eval-tokens 262144 --sample-every -1 --compile --metrics-port 0 --scale-lr false ${PRETRAIN_ARGS:-}
want eval_base && step eval_base 90 $RC eval base --run-dir "$RUN" --eval-bundle "$B/eval_bundle" --max-per-task "${CORE_N:-100}"
want chat && step chat 45 $RC chat --run-dir "$RUN" --stage base --raw -p "The capital of France is" --max-tokens 32 \
    --temperature 0 --stats
want bench_engine && step bench_engine 240 $PY benchmarks/bench_engine.py --models "${ENGINE_MODELS:-d12}" --repeats "${ENGINE_REPEATS:-1}"
exit 0  # each step printed its own rc above
