"""The auth service, asked what role a user has in a team: signed as us (common.http)."""

from __future__ import annotations

import uuid
from typing import Literal

import httpx

from common.http import peer_client
from telemetry.errors import AuthUnavailable
from telemetry.settings import TelemetrySettings

Role = Literal["owner", "member"]
ROLES: tuple[Role, ...] = ("owner", "member")
# A usage query waits this long for auth at most; then 503, never a wider view.
TIMEOUT_SECONDS = 5.0


class Auth:
    """GET /internal/teams/{team_id}/members/{user_id} on auth (service callers only):
    `{"role": "owner" | "member"}`, or 404 when the user is not in the team."""

    def __init__(self, settings: TelemetrySettings, client: httpx.AsyncClient | None = None):
        self.client = client or peer_client(
            settings.auth_url, settings, peer="auth", timeout=TIMEOUT_SECONDS
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def team_role(self, team_id: uuid.UUID, user_id: uuid.UUID) -> Role | None:
        """The user's role in the team; None if they are not in it. AuthUnavailable (503)
        when auth cannot say: not answering, or answering anything but those two."""
        try:
            response = await self.client.get(f"/internal/teams/{team_id}/members/{user_id}")
        except httpx.HTTPError as exc:
            raise AuthUnavailable(
                f"Team membership cannot be checked: auth did not answer ({type(exc).__name__})."
            ) from None
        if response.status_code == 404:
            return None
        if response.status_code == 200:
            try:
                body: object = response.json()
            except ValueError:
                body = None
            role = body.get("role") if isinstance(body, dict) else None
            for known in ROLES:
                if role == known:
                    return known
        raise AuthUnavailable(
            f"Team membership cannot be checked: auth answered {response.status_code}."
        )
