"""What `make bench` sends: each scenario's request to the bare upstream, to our gateway, to
LiteLLM and to Portkey, the same request in each one's model names and credentials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from _common import DELAYED_ALIAS, UPSTREAM_KEY
from peers import CHAT_MODEL, DELAYED_MODEL, EMBEDDING_MODEL, MASTER_KEY, portkey_headers

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


# Each row is 3 windows of 8 s (bench/suite.py), so a scenario costs ~2 minutes with the
# four targets. To keep `make bench` under 20 minutes, chat and streamed chat at c=10 and
# the delayed upstream at c=1 were dropped (chat at c=1 and c=50 bracket them; the delayed
# upstream matters most under load).
SCENARIOS = (
    Scenario("chat c=1", "chat", 1),
    Scenario("chat c=50", "chat", 50),
    Scenario("stream c=1", "stream", 1),
    Scenario("embeddings c=10", "embed", 10),
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


TARGETS = ("bare", "ours", "litellm", "portkey")


def model_for(scenario: Scenario, target: str) -> str:
    """The model name `target` (one of TARGETS) is asked for in `scenario`."""
    if scenario.delayed:  # ours: an alias to the delayed upstream's credential
        delayed = {"ours": DELAYED_ALIAS, "litellm": DELAYED_MODEL}
        return delayed.get(target, CHAT_MODEL)  # Portkey: the custom host says where
    name = EMBEDDING_MODEL if scenario.kind == "embed" else CHAT_MODEL
    return f"openai/{name}" if target == "ours" else name


def request_for(
    scenario: Scenario, target: str, urls: dict[str, str], keys: dict[str, str]
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(url, JSON body, headers) of `scenario` sent to `target`: the same request, in each
    one's model names and credentials. `urls`: bare, delayed (the delayed upstream), ours,
    litellm, portkey; `keys`: our API keys, `plain` and `governed` (GOVERNED_POLICY)."""
    body: dict[str, Any] = {"model": model_for(scenario, target)}
    if scenario.kind == "embed":
        body["input"] = "hello there"
        path = "/v1/embeddings"
    else:
        body["messages"] = PROMPT
        if scenario.kind == "stream":
            body["stream"] = True
        path = "/v1/chat/completions"
    upstream = urls["delayed" if scenario.delayed else "bare"]
    if target == "portkey":  # routed per request: its OpenAI provider, a custom host
        return urls["portkey"] + path, body, portkey_headers(upstream + "/v1")
    base = upstream if target == "bare" else urls[target]
    key = keys["governed" if scenario.governed else "plain"]
    token = {"bare": UPSTREAM_KEY, "ours": key, "litellm": MASTER_KEY}[target]
    return base + path, body, {"Authorization": f"Bearer {token}"}
