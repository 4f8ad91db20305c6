"""schemathesis against the gateway's merged OpenAPI document, as each role.

Every generated request (valid and invalid, from the document's schemas) is sent as every
caller (conftest.py), and each answer must hold these properties:
- no 5xx;
- every error (4xx) is application/problem+json with `type`, `title` and the `status`
  answered;
- every answer conforms to the document: a documented status and content type, a body of
  the documented schema, and invalid input refused;
- RBAC as gateway/rbac.py says: a caller without the route's permission gets 403
  (missing-permission) whatever it sent, an API key on a session-only route 403
  (session-required), and a caller with the permission is never refused for it.

The stateful test chains the calls the document's schemas link (create, then read, change
and delete what was made), as one caller per run.

Left out, since they would break the run itself rather than test the platform:
POST /auth/logout (ends the fuzzing session), and any call naming a fuzzer's own user,
session, API key or provider credential (a disabled admin, a revoked key): such an id is
replaced by a random one.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from gateway.rbac import PUBLIC, ROUTES, SESSION_ONLY, SIGNED_IN, Route, route_for

from .conftest import LONG, Caller, Fuzz

# It starts the platform: with the end-to-end tests (not in `make test-fast`).
pytestmark = pytest.mark.e2e
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# And across a scenario's steps: what was created can be read, what was deleted cannot.
STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]
PROBLEM = "urn:llm-platform:problem:"
PATH_REFUSED = "Paths may not contain dot segments or encoded slashes."
PROVIDER_FAILURES = {
    PROBLEM + slug
    for slug in ("upstream-failed", "provider-auth", "provider-redirect", "answer-refused")
}
# Derandomized, with no example database: the same examples on every run, so that a failure
# is a real one and shows again on the next run (shrunk in the long run only: it takes time).
SETTINGS = hypothesis.settings(
    max_examples=100 if LONG else 8,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate]
    + ([hypothesis.Phase.shrink] if LONG else []),
)

# Every route of the RBAC table but logout (it would end the fuzzing session).
FUZZED = [r for r in ROUTES if (r.method, r.template) != ("POST", "/auth/logout")]


def _spare_the_fuzzers(case: schemathesis.Case, protected: set[str]) -> None:
    """A generated or linked id naming what a fuzzer stands on becomes a random one."""
    for name, value in (case.path_parameters or {}).items():
        if str(value) in protected:
            case.path_parameters[name] = str(uuid.uuid4())


def _path_of(response: schemathesis.Response) -> str:
    """The request's path as the gateway routed it: an error names it (`instance`; the
    client may have normalised what it sent: `/auth/sessions/.`), else the URL's path."""
    if response.status_code >= 400:
        instance = response.json().get("instance")
        if isinstance(instance, str):
            return instance
    return unquote(urlsplit(response.request.url).path)


def assert_no_server_error(response: schemathesis.Response) -> None:
    """No 5xx, but for a provider's failure: the fuzzers' provider credentials point where
    they like (a host that does not resolve), and 502 is then the answer."""
    if response.status_code >= 500:
        assert response.json().get("type") in PROVIDER_FAILURES, response.text[:500]


def assert_problem(response: schemathesis.Response) -> None:
    """Any error is RFC 9457 problem+json, with the status it was answered with."""
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (
        response.status_code,
        content_type,
        response.text[:500],
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("type"), str), body
    assert isinstance(body.get("title"), str), body
    assert body.get("status") == response.status_code, body


def assert_rbac(caller: Caller, method: str, response: schemathesis.Response) -> None:
    """The answer is one the RBAC table allows this caller."""
    route = route_for(method, _path_of(response))
    problem = response.json() if response.status_code >= 400 else {}
    # A path the gateway refuses before any route (a backslash, an encoded slash) has none.
    if route is None or route.needs == PUBLIC or problem.get("detail") == PATH_REFUSED:
        return
    refused = problem.get("type", "") if response.status_code == 403 else ""
    if route.needs == SESSION_ONLY:
        if caller.kind == "key":
            assert refused == PROBLEM + "session-required", (route, response.text)
        else:
            assert refused != PROBLEM + "session-required", (route, response.text)
        return
    if route.needs == SIGNED_IN:
        assert refused not in (PROBLEM + "missing-permission", PROBLEM + "session-required")
        return
    gateway_refusal = f"This needs the {route.needs} permission."
    if route.needs in caller.permissions:
        assert problem.get("detail") != gateway_refusal, (route, caller.name, response.text)
    else:
        assert refused == PROBLEM + "missing-permission", (route, caller.name, response.text)
        assert problem.get("detail") == gateway_refusal, (route, caller.name, response.text)


def check_answer(
    case: schemathesis.Case, caller: Caller, response: schemathesis.Response, **validate: Any
) -> None:
    """Every property: schemathesis's checks (`validate`: what they need besides), then ours."""
    case.validate_response(response, headers=caller.headers, **validate)
    assert_no_server_error(response)
    assert_problem(response)
    assert_rbac(caller, case.method.upper(), response)


def call_and_check(case: schemathesis.Case, caller: Caller, fuzz: Fuzz) -> None:
    _spare_the_fuzzers(case, fuzz.protected)
    check_answer(case, caller, case.call(**caller.call_kwargs()), checks=CHECKS)


def _operation(fuzz_schema: Any, route: Route) -> Any:
    """The document's operation the RBAC table's `route` is."""
    found = [
        operation
        for result in fuzz_schema.get_all_operations()
        if (operation := result.ok()).method.upper() == route.method
        and route.pattern.match(operation.path)
    ]
    assert len(found) == 1, (route, [operation.label for operation in found])
    return found[0]


def test_the_document_has_every_route_and_no_other(fuzz_schema: Any) -> None:
    documented = {
        (op.method.upper(), op.path)
        for op in (result.ok() for result in fuzz_schema.get_all_operations())
    }
    assert {route_for(method, path) is not None for method, path in documented} == {True}
    for route in ROUTES:
        _operation(fuzz_schema, route)


@pytest.mark.parametrize("route", FUZZED, ids=lambda route: f"{route.method} {route.template}")
def test_every_answer_as_documented_to_every_role(
    route: Route, fuzz_schema: Any, fuzz: Fuzz
) -> None:
    operation = _operation(fuzz_schema, route)
    examples = fuzz_schema.get_strategies_from_examples(operation)
    generated = st.one_of(
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    )
    # The document's examples first (the calls that succeed), then generated ones.
    runs = [(generated, SETTINGS)]
    if examples:
        once_each = hypothesis.settings(SETTINGS, max_examples=2 * len(examples))
        runs.insert(0, (st.one_of(*examples), once_each))
    for cases, settings in runs:

        @hypothesis.given(case=cases)
        @settings
        def answers(case: schemathesis.Case) -> None:
            for caller in fuzz.callers:
                call_and_check(case, caller, fuzz)

        answers()


def _stateful(fuzz_schema: Any, fuzz: Fuzz, caller: Caller) -> list[str]:
    """The failures of a run of scenarios as `caller`. They are collected, not raised: the
    platform's state changes under the scenarios (what the last one created is still there),
    so Hypothesis could not replay a failing one as it was and would report that in its
    place (FlakyStrategyDefinition), which it may also do once the run has explored all it
    can from that state: the run then ends there, with what it found."""
    found: list[str] = []

    class Scenario(fuzz_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return caller.call_kwargs()

        def before_call(self, case: schemathesis.Case) -> None:
            _spare_the_fuzzers(case, fuzz.protected)

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            # With the scenario's record, for the checks that look back at earlier steps.
            try:
                check_answer(case, caller, response, checks=STATEFUL_CHECKS, recorder=self.recorder)
            except (AssertionError, FailureGroup) as failure:
                found.append(f"{caller.name}: {case.as_curl_command()}\n{failure}")

    with contextlib.suppress(FlakyStrategyDefinition):
        Scenario.run(
            settings=hypothesis.settings(
                SETTINGS,
                max_examples=60 if LONG else 6,
                stateful_step_count=20 if LONG else 6,
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
        )
    return found


def test_stateful_create_read_delete(fuzz_schema: Any, fuzz: Fuzz) -> None:
    scenarios = fuzz_schema.exclude(method="POST", path="/auth/logout")
    found = [failure for caller in fuzz.callers for failure in _stateful(scenarios, fuzz, caller)]
    assert not found, "\n\n".join(found[:10])
