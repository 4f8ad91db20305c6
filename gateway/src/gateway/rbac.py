"""Who may call what: one table, method + path template -> what the caller needs.

Every public route is listed; a route missing here is not served (404). `PUBLIC` needs no
credentials, `SIGNED_IN` any session or API key, `SESSION_ONLY` a browser session (not an
API key); anything else is a permission the caller must hold. `model=True` routes count
against the tighter model-call rate limit and the rpm limits of the caller's policies;
`holds=True` routes (inference's own model calls, which settle what the gateway holds) are
also admitted against the budgets of an API key's policies in the same step
(common.budgets.GATEWAY_HOLD_LUA).
Services still check object ownership (and, for teams, who owns or belongs to one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PUBLIC = "public"
SIGNED_IN = "signed-in"
SESSION_ONLY = "session-only"


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    needs: str
    model: bool = False
    holds: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{[a-z_]+:path\}", r"[^?#]+", self.template)
        regex = re.sub(r"\{[a-z_]+\}", r"[^/?#]+", regex)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    def matches(self, method: str, path: str) -> bool:
        return self.method == method and bool(self.pattern.match(path))


# fmt: off
ROUTES: tuple[Route, ...] = (
    # auth
    Route("POST",   "/auth/register",                         PUBLIC),
    Route("POST",   "/auth/login",                            PUBLIC),
    Route("POST",   "/auth/logout",                           SESSION_ONLY),
    Route("GET",    "/auth/me",                               SIGNED_IN),
    Route("GET",    "/auth/sessions",                         SESSION_ONLY),
    Route("DELETE", "/auth/sessions/{id}",                    SESSION_ONLY),
    Route("POST",   "/auth/password",                         SESSION_ONLY),
    Route("POST",   "/auth/api-keys",                         "api_keys:manage"),
    Route("GET",    "/auth/api-keys",                         SIGNED_IN),
    Route("PATCH",  "/auth/api-keys/{id}",                    "api_keys:manage"),
    Route("DELETE", "/auth/api-keys/{id}",                    "api_keys:manage"),
    Route("GET",    "/auth/users",                            "users:manage"),
    Route("GET",    "/auth/users/{id}",                       "users:manage"),
    Route("PATCH",  "/auth/users/{id}",                       "users:manage"),
    Route("GET",    "/auth/audit",                            "audit:read"),
    # teams: anyone signed in may ask; auth answers by the caller's part in the team
    # (admin, owner, member: 404 to everyone else)
    Route("POST",   "/auth/teams",                            "teams:manage"),
    Route("GET",    "/auth/teams",                            SIGNED_IN),
    Route("GET",    "/auth/teams/{id}",                       SIGNED_IN),
    Route("PATCH",  "/auth/teams/{id}",                       SIGNED_IN),
    Route("DELETE", "/auth/teams/{id}",                       "teams:manage"),
    Route("GET",    "/auth/teams/{id}/members",               SIGNED_IN),
    Route("PUT",    "/auth/teams/{id}/members/{user_id}",     SIGNED_IN),
    Route("DELETE", "/auth/teams/{id}/members/{user_id}",     SIGNED_IN),
    # inference (OpenAI-compatible)
    Route("GET",    "/v1/models",                             "models:read"),
    Route("GET",    "/v1/models/{model:path}",                "models:read"),
    Route("POST",   "/v1/chat/completions",                   "inference:invoke", model=True,
          holds=True),
    Route("POST",   "/v1/embeddings",                         "inference:invoke", model=True,
          holds=True),
    Route("POST",   "/v1/providers/credentials",              "providers:manage"),
    Route("GET",    "/v1/providers/credentials",              "providers:manage"),
    Route("DELETE", "/v1/providers/credentials/{id}",         "providers:manage"),
    Route("POST",   "/v1/providers/aliases",                  "providers:manage"),
    Route("GET",    "/v1/providers/aliases",                  "models:read"),
    Route("DELETE", "/v1/providers/aliases/{alias}",          "providers:manage"),
    Route("GET",    "/v1/providers/prices",                   "models:read"),
    Route("GET",    "/v1/providers/prices/changes",           "providers:manage_shared"),
    Route("PUT",    "/v1/providers/prices/{model:path}",      "providers:manage_shared"),
    Route("DELETE", "/v1/providers/prices/{model:path}",      "providers:manage_shared"),
    Route("DELETE", "/v1/cache",                              "inference:invoke"),
    Route("GET",    "/v1/hub/models",                         "models:read"),
    Route("GET",    "/v1/hub/models/{repo_id:path}",          "models:read"),
    # embeddings
    Route("POST",   "/v1/collections",                        "embeddings:write"),
    Route("GET",    "/v1/collections",                        "embeddings:read"),
    Route("GET",    "/v1/collections/{id}",                   "embeddings:read"),
    Route("PATCH",  "/v1/collections/{id}",                   "embeddings:write"),
    Route("DELETE", "/v1/collections/{id}",                   "embeddings:write"),
    Route("POST",   "/v1/collections/{id}/documents",         "embeddings:write"),
    Route("GET",    "/v1/collections/{id}/documents/{doc_id}", "embeddings:read"),
    Route("DELETE", "/v1/collections/{id}/documents/{doc_id}", "embeddings:write"),
    Route("POST",   "/v1/collections/{id}/query",             "embeddings:read", model=True),
    # telemetry
    Route("GET",    "/v1/usage",                              "telemetry:read_own"),
    Route("GET",    "/v1/calls",                              "telemetry:read_own"),
    Route("POST",   "/v1/events",                             "telemetry:write"),
)
# fmt: on


def route_for(method: str, path: str) -> Route | None:
    """The entry of ROUTES a request calls (what it needs); HEAD is checked as GET."""
    method = "GET" if method == "HEAD" else method
    return next((route for route in ROUTES if route.matches(method, path)), None)


def allowed_methods(path: str) -> list[str]:
    return sorted({route.method for route in ROUTES if route.pattern.match(path)})
