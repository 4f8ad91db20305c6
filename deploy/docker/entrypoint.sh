#!/bin/sh
# Entry point of every platform image (deploy/docker/Dockerfile).
#
#   serve (the default)  run the app: python -m "$SERVICE"
#   migrate              apply the app's migrations: alembic upgrade head
#   anything else        run it as given, e.g. `alembic -c /app/alembic.ini current`
set -eu

: "${SERVICE:?SERVICE is not set; build the image from deploy/docker/Dockerfile}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve)
        exec python -m "$SERVICE"
        ;;
    migrate)
        if [ ! -f /app/alembic.ini ]; then
            echo "$SERVICE has no migrations; nothing to do" >&2
            exit 0
        fi
        exec alembic -c /app/alembic.ini upgrade head
        ;;
    *)
        exec "$@"
        ;;
esac
