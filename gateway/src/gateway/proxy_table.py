"""The proxy's table: which upstream serves which public path prefix.

A path no rule takes is the gateway's own (its OpenAPI document and docs, the probes).
What a caller needs to call each route is another table, gateway/rbac.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProxyRule:
    prefix: str
    upstream: str
    # A rule for "/v1/models" also takes "/v1/models/..." but not "/v1/modelsx".
    exact_or_children: bool = True

    def matches(self, path: str) -> bool:
        if self.exact_or_children:
            return path == self.prefix or path.startswith(self.prefix + "/")
        return path.startswith(self.prefix)


PROXY_RULES: tuple[ProxyRule, ...] = (
    ProxyRule("/auth", "auth"),
    ProxyRule("/v1/chat", "inference"),
    ProxyRule("/v1/models", "inference"),
    ProxyRule("/v1/embeddings", "inference"),
    ProxyRule("/v1/providers", "inference"),
    ProxyRule("/v1/hub", "inference"),
    ProxyRule("/v1/cache", "inference"),
    ProxyRule("/v1/collections", "embeddings"),
    ProxyRule("/v1/usage", "telemetry"),
    ProxyRule("/v1/calls", "telemetry"),
    ProxyRule("/v1/events", "telemetry"),
)


def proxy_rule_for(path: str) -> ProxyRule | None:
    """The rule whose upstream serves `path`; None for the gateway's own paths."""
    return next((rule for rule in PROXY_RULES if rule.matches(path)), None)
