"""One trace across the platform (issue 7): the spans `make run` exports over OTLP/HTTP, as
Jaeger would receive them, for a chat call made through the gateway."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time
from typing import Any

import httpx

from devkit import devstack

from .conftest import FakeOpenAI, RunningPlatform, new_member_with_key
from .otlp import CLIENT, CONSUMER, SERVER, OtlpReceiver, ReceivedSpan

# telemetry.consumer's span names (that package is not importable from here).
INGEST_SPAN = "telemetry ingest llm_call"
BATCH_SPAN = "telemetry store llm_call"


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id]


def _descendants(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    found, frontier = [], [root]
    while frontier:
        nxt = [c for p in frontier for c in _children(spans, p)]
        found.extend(nxt)
        frontier = nxt
    return found


def _complete(spans: list[ReceivedSpan]) -> bool:
    """Every process has exported its part (each exports in its own batches)."""
    servers = {s.service for s in spans if s.kind == SERVER}
    attempts = [s for s in spans if s.name.startswith("chat openai/")]
    return (
        {"gateway", "inference"} <= servers
        and bool(attempts)
        and any(s.kind == CLIENT and s.parent_id == attempts[0].span_id for s in spans)
    )


def test_a_chat_call_is_one_trace_from_gateway_to_provider(
    platform: RunningPlatform, fake_openai: FakeOpenAI, otlp: OtlpReceiver
) -> None:
    # A new member: their credential is not cached yet, so inference reads Postgres.
    key = new_member_with_key(platform, fake_openai, f"trace-{secrets.token_hex(3)}@example.com")
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    # The caller's own trace context: the platform's spans join it.
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    _post_traced(platform, "/v1/chat/completions", body, key, trace_id, caller_span)

    spans = otlp.wait_for(_complete, trace_id)
    assert _complete(spans), [(s.service, s.name) for s in spans]

    # The gateway's server span is the root of the platform's part, under the caller's.
    (gateway,) = [s for s in spans if s.service == "gateway" and s.kind == SERVER]
    assert gateway.parent_id == caller_span
    assert gateway.name == "POST /v1/chat/completions"
    assert gateway.attributes["http.route"] == "/v1/chat/completions"
    assert gateway.attributes["http.response.status_code"] == 200
    below_gateway = _descendants(spans, gateway)
    # Its Redis work (credential check and rate count in one script) is in the trace.
    assert any(s.service == "gateway" and "EVALSHA" in s.name for s in below_gateway)

    # Inference's server span is a descendant of the gateway's (traceparent over the hop).
    (inference,) = [s for s in spans if s.service == "inference" and s.kind == SERVER]
    assert inference in below_gateway
    below_inference = _descendants(spans, inference)
    # Postgres (the credential lookup) inside inference.
    assert any(s.attributes.get("db.system") == "postgresql" for s in below_inference), [
        s.name for s in below_inference
    ]

    # One span per provider attempt, with the GenAI attributes ...
    (attempt,) = [s for s in below_inference if s.name == "chat openai/gpt-4o-mini"]
    assert attempt.attributes["gen_ai.system"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attempt.attributes["gen_ai.usage.input_tokens"] > 0
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    # ... and the provider's HTTP client span under it.
    http_calls = [s for s in _children(spans, attempt) if s.kind == CLIENT]
    assert http_calls, [s.name for s in _children(spans, attempt)]
    call = http_calls[0].attributes
    assert call.get("http.request.method", call.get("http.method")) == "POST", call

    # Telemetry stored the call: its span in this trace, under the inference span that the
    # call event names (gateway -> inference -> telemetry, one trace) ...
    def stored(spans: list[ReceivedSpan]) -> bool:
        return any(s.service == "telemetry" and s.name == INGEST_SPAN for s in spans)

    spans = otlp.wait_for(stored, trace_id)
    (ingest,) = [s for s in spans if s.service == "telemetry"]
    assert ingest.name == INGEST_SPAN
    assert ingest.kind == CONSUMER
    assert ingest.parent_id == inference.span_id
    # ... and the batch that stored it, a trace of its own, links to that same span.
    batches = otlp.wait_for_span(
        lambda s: s.name == BATCH_SPAN and (trace_id, inference.span_id) in s.links
    )
    assert len(batches) == 1, [(s.name, s.links) for s in otlp.spans if s.service == "telemetry"]
    (batch,) = batches
    assert batch.service == "telemetry"
    assert batch.kind == CONSUMER
    assert batch.trace_id != trace_id
    assert ingest.links == ((batch.trace_id, batch.span_id),)
    assert batch.attributes["telemetry.batch.inserted"] >= 1

    # Every process's resource: OTEL_RESOURCE_ATTRIBUTES, and each service's own name.
    assert {"gateway", "inference", "telemetry"} <= {s.service for s in spans}
    for span in spans:
        assert span.resource["service.name"] == span.service
        assert span.resource["deployment.environment"] == "e2e", span
        assert span.resource["service.version"] == "0.0.0-e2e", span


def _post_traced(
    platform: RunningPlatform,
    path: str,
    body: object,
    key: str,
    trace_id: str,
    parent: str,
    *,
    expect: int = 200,
) -> tuple[bytes, dict[str, str]]:
    """POST through the gateway with the caller's trace context: the body and headers.
    (http.client: an httpx instrumented by other tests in this process would replace the
    traceparent.)"""
    connection = http.client.HTTPConnection("127.0.0.1", platform.ports["gateway"], timeout=120)
    connection.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "traceparent": f"00-{trace_id}-{parent}-01",
        },
    )
    response = connection.getresponse()
    data = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    connection.close()
    assert response.status == expect, data
    return data, headers


def test_an_embeddings_query_is_one_trace_down_to_the_local_model(
    platform: RunningPlatform, fake_openai: FakeOpenAI, otlp: OtlpReceiver
) -> None:
    key = new_member_with_key(platform, fake_openai, f"vec-{secrets.token_hex(3)}@example.com")
    auth = {"Authorization": f"Bearer {key}"}
    created = httpx.post(
        f"{platform.gateway}/v1/collections",
        headers=auth,
        json={"name": "traced", "model": "local/all-MiniLM-L6-v2"},
        timeout=120,
    )
    assert created.status_code == 201, created.text
    path = f"/v1/collections/{created.json()['id']}"
    upserted = httpx.post(
        f"{platform.gateway}{path}/documents",
        headers=auth,
        json={"documents": [{"text": "a cat asleep on the sofa"}, {"text": "bond yields rose"}]},
        timeout=120,
    )
    assert upserted.status_code == 200, upserted.text

    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    _post_traced(
        platform, f"{path}/query", {"text": "pets", "top_k": 1}, key, trace_id, caller_span
    )

    def complete(spans: list[ReceivedSpan]) -> bool:
        servers = {s.service for s in spans if s.kind == SERVER}
        local = any(s.attributes.get("gen_ai.system") == "local" for s in spans)
        return {"gateway", "embeddings", "inference"} <= servers and local

    spans = otlp.wait_for(complete, trace_id)
    assert complete(spans), [(s.service, s.name) for s in spans]
    servers = {s.service: s for s in spans if s.kind == SERVER}
    assert servers["gateway"].parent_id == caller_span
    assert servers["embeddings"] in _descendants(spans, servers["gateway"])
    assert servers["inference"] in _descendants(spans, servers["embeddings"])
    (model_call,) = [s for s in spans if s.attributes.get("gen_ai.system") == "local"]
    assert model_call in _descendants(spans, servers["inference"])
    assert model_call.attributes["gen_ai.request.model"] == "all-MiniLM-L6-v2"


def _log_record(line: str) -> dict[str, Any]:
    """A JSON log line as `make run` prints it (`time process | {...}`)."""
    record: dict[str, Any] = json.loads(line.split("|", 1)[1])
    return record


def test_an_error_body_and_each_services_log_line_lead_to_the_callers_trace(
    platform: RunningPlatform, fake_openai: FakeOpenAI, otlp: OtlpReceiver
) -> None:
    key = new_member_with_key(platform, fake_openai, f"err-{secrets.token_hex(3)}@example.com")
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    body = {"model": "openai-nope/gpt", "messages": [{"role": "user", "content": "hi"}]}
    data, headers = _post_traced(
        platform, "/v1/chat/completions", body, key, trace_id, caller_span, expect=404
    )
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(data)["trace_id"] == trace_id  # the user's error report names the trace

    # One access line per process the request went through, each naming its server span.
    lines = platform.lines_with(headers["x-request-id"], at_least=2)
    records = {r["service"]: r for r in map(_log_record, lines) if r.get("event") == "request"}
    assert set(records) == {"gateway", "inference"}, lines

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {"gateway", "inference"} <= {s.service for s in spans if s.kind == SERVER}

    spans = otlp.wait_for(complete, trace_id)
    servers = {s.service: s for s in spans if s.kind == SERVER}
    for service, record in records.items():
        assert record["trace_id"] == trace_id, record
        assert record["span_id"] == servers[service].span_id, record
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f-]{27}", record["user_id"]), record
        assert record["route"] == "/v1/chat/completions", record
        assert record["status"] == 404, record
        assert isinstance(record["duration_ms"], float | int), record


def test_probes_leave_no_trace(platform: RunningPlatform, otlp: OtlpReceiver) -> None:
    """Neither the probes nor what readiness checks (Postgres, Redis, the gateway's peers) are
    exported: Jaeger would fill with a root trace of each, every few seconds per pod."""
    for name in ("gateway", *devstack.SERVICES):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{platform.url(name)}{path}").status_code == 200
    # A traced request after them: once its span is in, the probes' would be too (every
    # process exports each 200 ms; a little margin for the others than the gateway's).
    # (http.client: see _post_traced.)
    marker = secrets.token_hex(16)
    connection = http.client.HTTPConnection("127.0.0.1", platform.ports["gateway"], timeout=30)
    connection.request(
        "GET", "/v1/models", headers={"traceparent": f"00-{marker}-{secrets.token_hex(8)}-01"}
    )
    assert connection.getresponse().status == 401
    connection.close()
    assert otlp.wait_for(bool, marker)
    time.sleep(0.6)

    def from_a_probe(span: ReceivedSpan) -> bool:
        urls = ("http.route", "url.full", "http.url")
        where = " ".join(str(span.attributes.get(k, "")) for k in urls)
        statement = span.attributes.get("db.statement", span.attributes.get("db.query.text"))
        return any(p in where for p in ("/healthz", "/readyz", "/metrics")) or (
            span.parent_id == "" and (statement == "SELECT 1" or span.name == "PING")
        )

    with otlp.lock:
        probes = [(s.service, s.name, s.attributes) for s in otlp.spans if from_a_probe(s)]
    assert probes == []
