"""What `make bench` sends: each scenario's request to the bare upstream, to our gateway and
to LiteLLM, the same request in each one's model names and credentials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from _common import DELAYED_ALIAS, UPSTREAM_KEY
from peers import CHAT_MODEL, DELAYED_MODEL, EMBEDDING_MODEL, MASTER_KEY

PROMPT = [{"role": "user", "content": "hello there"}]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # chat, stream, embed
    concurrency: int
    delayed: bool = False
    # Ours only, with an API key under a policy (issue 18): a budget, TPM and RPM limits and
    # a model list, so every call is checked, reserved and settled.
    governed: bool = False


SCENARIOS = (
    Scenario("chat c=1", "chat", 1),
    Scenario("chat c=10", "chat", 10),
    Scenario("chat c=50", "chat", 50),
    Scenario("stream c=1", "stream", 1),
    Scenario("stream c=10", "stream", 10),
    Scenario("embeddings c=10", "embed", 10),
    Scenario("chat c=1, delayed upstream", "chat", 1, delayed=True),
    Scenario("chat c=50, delayed upstream", "chat", 50, delayed=True),
    Scenario("chat c=1, governed key", "chat", 1, governed=True),
    Scenario("chat c=50, governed key", "chat", 50, governed=True),
)
# A policy every call passes, and that still makes every check run.
GOVERNED_POLICY = {
    "max_budget_usd": "1000000",
    "budget_period": "month",
    "allowed_models": ["openai/*"],
    "rpm_limit": 1_000_000_000,
    "tpm_limit": 1_000_000_000,
}


def model_for(scenario: Scenario, target: str) -> str:
    """The model name `target` (bare, ours, litellm) is asked for in `scenario`."""
    if scenario.delayed:  # ours: an alias to the delayed upstream's credential
        return {"bare": CHAT_MODEL, "ours": DELAYED_ALIAS, "litellm": DELAYED_MODEL}[target]
    name = EMBEDDING_MODEL if scenario.kind == "embed" else CHAT_MODEL
    return f"openai/{name}" if target == "ours" else name


def request_for(
    scenario: Scenario, target: str, urls: dict[str, str], keys: dict[str, str]
) -> tuple[str, dict[str, Any], str]:
    """(url, JSON body, bearer token) of `scenario` sent to `target`: the same request, in
    each one's model names. `urls`: bare, delayed (the delayed upstream), ours, litellm;
    `keys`: our API keys, `plain` and `governed` (GOVERNED_POLICY)."""
    body: dict[str, Any] = {"model": model_for(scenario, target)}
    if scenario.kind == "embed":
        body["input"] = "hello there"
        path = "/v1/embeddings"
    else:
        body["messages"] = PROMPT
        if scenario.kind == "stream":
            body["stream"] = True
        path = "/v1/chat/completions"
    base = urls["delayed" if scenario.delayed and target == "bare" else target]
    key = keys["governed" if scenario.governed else "plain"]
    token = {"bare": UPSTREAM_KEY, "ours": key, "litellm": MASTER_KEY}[target]
    return base + path, body, token
