#!/usr/bin/env bash
# Every open GPU check of the project in one device run (~9 min on one H200; no network, no Ray there), so a
# session that is lent a GPU spends one call. Build the bundle here first (repository root, with ../shared):
#
#   echo /.gpu/ >> .git/info/exclude
#   mkdir -p .gpu/data .gpu/whl && cp ../shared/data/pretrain/shard_0000{0,1,5}.parquet .gpu/data/
#   cp -r ../shared/data/eval_bundle .gpu/ && raychat tok-train --vocab-size 32768 --out .gpu/run/tokenizer
#   PYTHONPATH=libs:services python tests/hub_server.py build --shared ../shared/data --out .gpu/hub
#   pip download rustbpe --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .gpu/whl
#
# then on the device (carry .gpu):   bash benchmarks/gpu_all.sh        # logs under $OUT
# Steps, each under its own time limit, in this order (issue): recipe (#16: attention backend and why others
# failed, bench_train d12/d20/d24 record recipe, bf16 CUDA-graph decode == eager), engine (#20: KV capacity from
# free GPU memory, prefix reuse, chunked-prefill ITL), smoke (#15: the smoke speedrun from a local hub, no
# ../shared), device (device_check.sh: selftest, a real pretraining run, CORE, chat). ONLY="recipe engine" picks.
set -uo pipefail
OUT="${OUT:-/tmp/raychat-gpu-all}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/libs:$PWD/services${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ONLY=" ${ONLY:-recipe engine smoke device} "
want() { [[ "$ONLY" == *" $1 "* ]]; }
run() {  # run NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "##### $name: rc=$? in $((SECONDS - t0)) s (log $OUT/$name.log)"
    tail -n "${TAIL:-30}" "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
want recipe && run recipe 240 env OUT="$OUT/recipe" WHEELS=.gpu/whl bash benchmarks/gpu_recipe_check.sh
want engine && run engine 120 python3 benchmarks/bench_engine.py --models d12 --scenarios capacity,turns,itl \
    --repeats 1 --chunks 0,512
want smoke && run smoke 150 env WHEELS=.gpu/whl PYTHON=python3 bash benchmarks/gpu_smoke_hub.sh .gpu/hub "$OUT/smoke"
want device && run device 200 env OUT="$OUT/device" STEPS="selftest pretrain eval_base chat" ITERS=60 \
    bash benchmarks/device_check.sh .gpu
exit 0  # each step printed its own rc
