#!/usr/bin/env bash
# The smoke speedrun on a box with no network and no ../shared: every dataset comes from a local stand-in for the
# Hugging Face Hub (tests/hub_server.py) through HF_ENDPOINT, as on an air-gapped GPU box with a Hub mirror.
#
#   # here (with ../shared/data): build the bundle, ~9 MB, laid out as the Hub repositories
#   PYTHONPATH=libs:services python tests/hub_server.py build --shared ../shared/data --out hub_bundle
#   # on the GPU box (repository root): optional wheels for what the box lacks (e.g. rustbpe) in WHEELS
#   WHEELS=wheels bash benchmarks/gpu_smoke_hub.sh hub_bundle [OUT_DIR]
#
# Prints: the python/torch/device, the hub URL, each speedrun stage banner and its time, what the data folder
# holds, the requests the hub answered, and the report's head. Exit status: the speedrun's.
set -uo pipefail

BUNDLE=$(cd "${1:?usage: gpu_smoke_hub.sh BUNDLE_DIR [OUT_DIR]}" && pwd)
OUT=${2:-${OUT:-/tmp/gpu_smoke_hub}}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT/libs:$ROOT/services${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${WHEELS:-}" ] && ! "$PY" -c "import rustbpe" 2>/dev/null; then
    echo "== installing wheels from $WHEELS (rustbpe missing)"
    "$PY" -m pip install --no-index --find-links "$WHEELS" rustbpe 2>&1 | tail -2
fi
echo "== environment"
"$PY" -c "import sys, torch, huggingface_hub as h; print('python', sys.version.split()[0], 'torch', torch.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'huggingface_hub', h.__version__)"
"$PY" -c "import rustbpe" 2>/dev/null && echo "rustbpe: importable" || echo "rustbpe: MISSING (tokenizer stage will fail)"

# the hub: a fresh port, its URL on the first line of its output
"$PY" "$ROOT/tests/hub_server.py" serve "$BUNDLE" > "$OUT/hub.log" 2>&1 &
HUB_PID=$!
trap 'kill $HUB_PID 2>/dev/null' EXIT
for _ in $(seq 50); do [ -s "$OUT/hub.log" ] && break; sleep 0.1; done
HUB_URL=$(head -1 "$OUT/hub.log")
echo "== hub at $HUB_URL (bundle $BUNDLE)"

# a fresh HOME and working directory, no shared data, no RAYCHAT_* from the caller
rm -rf "$OUT/home" "$OUT/work"
mkdir -p "$OUT/home" "$OUT/work"
cd "$OUT/work"
START=$(date +%s)
env -u RAYCHAT_HOME -u RAYCHAT_DATA_DIR -u RAY_ADDRESS HOME="$OUT/home" HF_ENDPOINT="$HUB_URL" \
    RAYCHAT_DATA_REPO=raychat/mirror RAYCHAT_SHARED_DATA=/nonexistent HF_HUB_DISABLE_PROGRESS_BARS=1 \
    "$PY" -m raychat.cli speedrun --preset smoke --no-ray > "$OUT/speedrun.log" 2>&1
RC=$?
echo "== speedrun exit $RC after $(( $(date +%s) - START )) s (full log: $OUT/speedrun.log)"
grep -E "^\[speedrun\]|^\[data\]|raychat: error" "$OUT/speedrun.log"
RUN="$OUT/home/.cache/raychat/runs/smoke"
echo "== stage times ($RUN/speedrun.json)"
"$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['stages']; [print(f'  {k:<16}{v[\"status\"]:<9}{v[\"seconds\"]:>8.1f} s') for k, v in s.items()]" "$RUN/speedrun.json" 2>/dev/null || echo "  (no speedrun.json)"
echo "== data folder"
(cd "$OUT/home/.cache/raychat/data" 2>/dev/null && find . -type f -not -path "./*/.cache/*" -not -path "./.mirror/*" \
    -exec ls -l {} + | awk '{print "  " $9 "  " $5 " bytes"}' | sort)
echo "== hub: $(grep -c '^HEAD' "$OUT/hub.log") HEAD and $(grep -c '^GET' "$OUT/hub.log") GET requests answered"
echo "== report head"
head -40 "$RUN/report.md" 2>/dev/null || echo "  (no report: see the log)"
exit $RC
