#!/usr/bin/env bash
# The `head` service of deploy/compose.yaml: a Ray head that owns all of the box's GPUs, plus the Serve app.
#
# 1. `ray start --head`: dashboard and job submission on :8265, GCS on :6379, node metrics on :8080 (Prometheus
#    finds them through Ray's service-discovery file in /tmp/ray, a volume it shares read-only).
# 2. Once the run directory holds a finished model, `raychat serve` deploys the chat app on this cluster
#    (:8000). Training jobs arrive meanwhile with `ray job submit -- raychat speedrun ...` and use the GPUs.
#
# Waiting for a *finished* run (default: its report.md, the speedrun's last stage) rather than the first
# checkpoint matters on one box: a Serve replica takes a GPU the training job is still using.
#
# RAYCHAT_RUN_DIR      run directory to serve            (default ~/.cache/raychat/runs/gpt2)
# RAYCHAT_SERVE_AFTER  file in the run dir to wait for   (default report.md; empty = first checkpoint)
# RAYCHAT_SERVE_STAGE  rl | sft | base | auto            (default auto: the latest stage with a checkpoint)
# RAYCHAT_SERVE_ARGS   extra `raychat serve` flags, e.g. "--replicas 2"
# RAY_METRICS_EXPORT_PORT                                (default 8080)
set -euo pipefail

run_dir="${RAYCHAT_RUN_DIR:-$HOME/.cache/raychat/runs/gpt2}"
serve_after="${RAYCHAT_SERVE_AFTER-report.md}"
serve_stage="${RAYCHAT_SERVE_STAGE:-auto}"
poll_s="${RAYCHAT_SERVE_POLL_S:-30}"

log() { echo "[head] $*" >&2; }

pick_stage() {  # prints the stage to serve, or fails when the run dir has no checkpoint for it yet
    local stage
    if [ "$serve_stage" != "auto" ]; then
        compgen -G "$run_dir/checkpoints/$serve_stage/step_*" >/dev/null || return 1
        echo "$serve_stage"
        return 0
    fi
    for stage in rl sft base; do  # later stages are better chat models
        if compgen -G "$run_dir/checkpoints/$stage/step_*" >/dev/null; then
            echo "$stage"
            return 0
        fi
    done
    return 1
}

serve_when_ready() {
    local stage announced=0
    while :; do
        if { [ -z "$serve_after" ] || [ -e "$run_dir/$serve_after" ]; } && stage="$(pick_stage)"; then
            log "serving $run_dir (stage $stage) on :8000"
            # --address auto: the app joins this Ray cluster instead of starting an embedded one. It blocks
            # while serving; RAYCHAT_API_KEY (compose environment) protects it when set.
            # shellcheck disable=SC2086  # RAYCHAT_SERVE_ARGS is a list of flags
            if raychat serve --address auto --run-dir "$run_dir" --stage "$stage" --host 0.0.0.0 --port 8000 \
                ${RAYCHAT_SERVE_ARGS:-}; then
                return 0
            fi
            log "raychat serve exited with an error; retrying in ${poll_s}s"
        elif [ "$announced" -eq 0 ]; then
            log "waiting for a trained model in $run_dir (${serve_after:-a checkpoint}); submit one with:"
            log "  ray job submit --address http://127.0.0.1:8265 -- raychat speedrun --preset gpt2_8xh100 --run-dir $run_dir"
            announced=1
        fi
        sleep "$poll_s"
    done
}

main() {
    ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
        --metrics-export-port="${RAY_METRICS_EXPORT_PORT:-8080}" --disable-usage-stats --block &
    local ray_pid=$!
    # `docker stop` sends SIGTERM to this script (PID 1 behind compose's init): stop Ray cleanly so running
    # jobs are told, instead of being SIGKILLed 10 s later.
    trap 'log "stopping Ray"; ray stop >/dev/null 2>&1 || true' TERM INT
    serve_when_ready &
    # The container lives as long as the Ray head does; the serve loop is a side job.
    wait "$ray_pid"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
