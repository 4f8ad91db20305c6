#!/bin/sh
# Entry point of every platform image (deploy/docker/Dockerfile).
#
#   serve (the default)  run the app: python -m "$SERVICE"
#   migrate              apply the app's migrations: alembic upgrade head
#   wait-migrated        wait until the database is at this image's head (what migrate
#                        brings it to), for up to MIGRATION_WAIT_SECONDS (default 600)
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
    wait-migrated)
        [ -f /app/alembic.ini ] || exit 0
        waited=0
        # `alembic current` marks the revision "(head)" once it is this image's head.
        until alembic -c /app/alembic.ini current 2>/dev/null | grep -q '(head)'; do
            if [ "$waited" -ge "${MIGRATION_WAIT_SECONDS:-600}" ]; then
                echo "$SERVICE: the database is not at this image's migration head" >&2
                exit 1
            fi
            sleep 5
            waited=$((waited + 5))
        done
        ;;
    *)
        exec "$@"
        ;;
esac
