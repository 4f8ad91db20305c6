"""`python -m auth`: serve the auth service; `python -m auth create-admin`: make an admin.

python -m auth create-admin --email admin@example.com   # password: ADMIN_PASSWORD or a prompt
python -m auth create-admin --email ada@example.com --promote-existing   # make ada an admin
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from auth.settings import AuthSettings
from common.serve import serve


async def _create_admin(email: str, password: str, *, promote_existing: bool) -> bool:
    from auth import background, service
    from auth.runtime import Runtime
    from common.db import command_line_database
    from common.redis import create_redis

    settings = AuthSettings()
    database = command_line_database(settings.database_url, application_name="auth-cli")
    redis = create_redis(settings.redis_url)
    try:
        async with database as sessions:
            runtime = Runtime.create(settings, sessionmaker=sessions, redis=redis)
            try:
                return await background.create_admin(
                    runtime,
                    email=service.normalize_email(email),
                    password=password,
                    promote_existing=promote_existing or settings.admin_promote_existing,
                    via="cli",
                )
            finally:
                await runtime.aclose()
    finally:
        await redis.aclose()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m auth")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the auth service (the default)")
    admin = commands.add_parser("create-admin", help="create an admin, or make a user admin")
    admin.add_argument("--email", default=os.environ.get("ADMIN_EMAIL"))
    admin.add_argument(
        "--promote-existing",
        action="store_true",
        help="make an existing account admin, its own password kept (ADMIN_PROMOTE_EXISTING)",
    )
    args = parser.parse_args(argv)
    if args.command in (None, "serve"):
        serve("auth.main:create_app", AuthSettings())
        return 0
    if not args.email:
        parser.error("--email (or ADMIN_EMAIL) is required")
    password = os.environ.get("ADMIN_PASSWORD") or getpass.getpass("Password: ")
    from auth.errors import AdminRefused

    try:
        changed = asyncio.run(
            _create_admin(args.email, password, promote_existing=args.promote_existing)
        )
    except AdminRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print("admin created or promoted" if changed else "already an admin", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
