#!/bin/sh
# Entry point of the batchq image. It execs (never forks), so the process that gets
# SIGTERM from `docker stop` is the Celery worker itself: a warm shutdown that lets
# running subtasks finish within stop_grace_period.
#
#   (no arguments)        batchq worker
#   batchq ... / celery ... / any executable on PATH: run it as given
#   anything else         a batchq subcommand: `run auth-system` = `batchq run auth-system`
set -eu

if [ "$#" -eq 0 ]; then
    set -- batchq worker
elif [ "${1#-}" != "$1" ] || ! command -v "$1" >/dev/null 2>&1; then
    set -- batchq "$@"
fi

if [ "$1" = "batchq" ] && [ "${2:-}" = "worker" ] && [ -z "${BATCHQ_REDIS_URL:-}" ]; then
    echo "entrypoint: BATCHQ_REDIS_URL is not set; a worker needs the shared Redis" >&2
    exit 2
fi

exec "$@"
