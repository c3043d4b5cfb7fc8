#!/usr/bin/env bash
# The Docker image's entry point: `raychat`, unless the command is another program.
#
#   docker run IMAGE speedrun --preset gpt2_8xh100   ->  raychat speedrun --preset gpt2_8xh100
#   docker run IMAGE --help                           ->  raychat --help
#   docker run IMAGE ray start --head --block         ->  ray start --head --block
#   docker run IMAGE bash                             ->  bash  (what Ray's cluster launcher runs)
#
# A raychat subcommand name always wins over a program of the same name on PATH (`info` is both).
set -euo pipefail

is_raychat_command() {
    # The subcommand table lives in raychat.cli (imports only argparse/importlib): ask it, don't copy it.
    python -c 'import sys; from raychat.cli import COMMANDS; sys.exit(0 if sys.argv[1] in COMMANDS else 1)' "$1" \
        2>/dev/null
}

if [ "$#" -eq 0 ]; then
    exec raychat
fi
case "$1" in
    -*) exec raychat "$@" ;;
esac
if is_raychat_command "$1" || ! command -v -- "$1" >/dev/null 2>&1; then
    exec raychat "$@"
fi
exec "$@"
