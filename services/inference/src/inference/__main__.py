"""`python -m inference`: serve; `python -m inference rotate-keys`: re-encrypt credentials.

Key rotation without downtime: put a new key first in INFERENCE_ENCRYPTION_KEYS (keep the
old one after it) on every replica, run `rotate-keys`, then drop the old key.
`python -m inference new-key` prints a fresh key to paste there.
"""

from __future__ import annotations

import asyncio
import sys

from common.serve import serve
from inference.settings import InferenceSettings


async def _rotate() -> tuple[int, int]:
    from common.db import command_line_database, transaction
    from inference.crypto import Keyring
    from inference.service import rotate_keys

    settings = InferenceSettings()
    keyring = Keyring(settings.encryption_keys.get_secret_value())
    database = command_line_database(settings.database_url, application_name="inference-cli")
    async with database as sessions, transaction(sessions) as db:
        return await rotate_keys(db, keyring)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    if command == "serve":
        serve("inference.main:create_app", InferenceSettings())
        return 0
    if command == "rotate-keys":
        rotated, total = asyncio.run(_rotate())
        print(f"re-encrypted {rotated} of {total} credentials under the first key", file=sys.stderr)
        return 0
    if command == "new-key":
        from inference.crypto import Keyring

        print(Keyring.generate_key())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
