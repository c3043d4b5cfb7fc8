#!/usr/bin/env bash
# Docker HEALTHCHECK for the raychat image, which runs training, serving or one-off commands.
#
# Healthy means: every server this container runs answers its health endpoint.
#   - Serve app on :8000            -> GET /health must return 2xx
#   - Ray head dashboard on :8265   -> GET /api/gcs_healthz must return 2xx (the GCS is alive)
# A server that is not listening at all is skipped in `auto` mode: a container running `raychat pretrain` or
# `raychat eval` has no server and is healthy while its process lives (Docker already watches that).
#
# RAYCHAT_HEALTH=auto (default) | serve | ray | serve,ray | none   -- names listed must be up, not just skipped
# RAYCHAT_HEALTH_SERVE_URL, RAYCHAT_HEALTH_RAY_URL                  -- override the probed URLs
#
# Deliberately not `raychat selftest`: see the HEALTHCHECK comment in the Dockerfile.
set -uo pipefail

mode="${RAYCHAT_HEALTH:-auto}"
serve_url="${RAYCHAT_HEALTH_SERVE_URL:-http://127.0.0.1:8000/health}"
ray_url="${RAYCHAT_HEALTH_RAY_URL:-http://127.0.0.1:8265/api/gcs_healthz}"

[ "$mode" = "none" ] && exit 0

required() {
    case ",$mode," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

probe() {  # probe NAME URL
    local name="$1" url="$2" rc err
    err="$(curl -fsS --max-time 5 -o /dev/null "$url" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        return 0
    fi
    # curl exit 7: nothing listens there. Only a failure when this server was asked for by name.
    if [ "$rc" -eq 7 ] && ! required "$name"; then
        return 0
    fi
    echo "unhealthy: $name at $url: ${err:-curl exit $rc}" >&2
    return 1
}

status=0
probe serve "$serve_url" || status=1
probe ray "$ray_url" || status=1
exit "$status"
