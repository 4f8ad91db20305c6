"""Which upstream serves which public path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    prefix: str
    upstream: str
    # A rule for "/v1/models" also takes "/v1/models/..." but not "/v1/modelsx".
    exact_or_children: bool = True

    def matches(self, path: str) -> bool:
        if self.exact_or_children:
            return path == self.prefix or path.startswith(self.prefix + "/")
        return path.startswith(self.prefix)

    @property
    def template(self) -> str:
        """Label for metrics and logs: the rule, never the raw path."""
        return self.prefix + "/*"


RULES: tuple[Rule, ...] = (
    Rule("/auth", "auth"),
    Rule("/v1/chat", "inference"),
    Rule("/v1/models", "inference"),
    Rule("/v1/embeddings", "inference"),
    Rule("/v1/providers", "inference"),
    Rule("/v1/hub", "inference"),
    Rule("/v1/collections", "embeddings"),
    Rule("/v1/usage", "telemetry"),
    Rule("/v1/calls", "telemetry"),
    Rule("/v1/events", "telemetry"),
)


def rule_for(path: str) -> Rule | None:
    return next((rule for rule in RULES if rule.matches(path)), None)
