"""The egress policy for provider URLs, on its own: which addresses a member's base_url may
reach, the admin's allowlist, the platform's own endpoints, and its settings."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from inference.providers.egress import DestinationRefused, EgressPolicy, resolve
from inference.settings import InferenceSettings

NOTHING_ALLOWED = EgressPolicy()

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"]  # last: NAT64
REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "private",  # carrier-grade NAT, shared address space
    "198.18.0.1": "private",  # benchmarking
    "169.254.169.254": "link-local",  # cloud metadata
    "fe80::1": "link-local",
    "fc00::1": "unique-local",
    "fd12:3456::1": "unique-local",
    "fec0::1": "site-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",  # noqa: S104
    "::": "unspecified",
    "255.255.255.255": "reserved",
    "240.0.0.1": "reserved",
    # IPv6 forms that carry a refused IPv4 address
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "link-local",
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64
    "2002:a9fe:a9fe::1": "link-local",  # 6to4
    "::7f00:1": "reserved",  # IPv4-compatible (deprecated)
}


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert NOTHING_ALLOWED.refusal(ipaddress.ip_address(address), 443) is None


@pytest.mark.parametrize(("address", "kind"), REFUSED.items())
def test_non_public_addresses_are_refused_saying_what_they_are(address: str, kind: str) -> None:
    reason = NOTHING_ALLOWED.refusal(ipaddress.ip_address(address), 80)
    assert reason is not None
    assert kind in reason


def test_the_allowlist_opens_exactly_its_networks_in_both_spellings() -> None:
    policy = EgressPolicy(allowed=(ipaddress.ip_network("10.20.0.0/16"),))
    assert policy.refusal(ipaddress.ip_address("10.20.3.4"), 8000) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.3.4"), 8000) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1"), 8000) is not None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254"), 80) is not None


def test_refused_networks_close_public_ranges_unless_allowed() -> None:
    cluster = ipaddress.ip_network("34.118.224.0/20")  # a GKE service range
    refused = EgressPolicy(refused=(cluster,))
    reason = refused.refusal(ipaddress.ip_address("34.118.230.1"), 443)
    assert reason is not None
    assert "INFERENCE_REFUSED_NETWORKS" in reason
    assert refused.refusal(ipaddress.ip_address("34.119.0.1"), 443) is None
    both = EgressPolicy(allowed=(cluster,), refused=(cluster,))
    assert both.refusal(ipaddress.ip_address("34.118.230.1"), 443) is None


def test_the_platforms_own_endpoints_stay_refused_on_an_allowed_loopback() -> None:
    policy = EgressPolicy(
        allowed=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        own_endpoints=((ipaddress.ip_network("127.0.0.1/32"), 8001),),
    )
    assert policy.refusal(ipaddress.ip_address("127.0.0.1"), 11434) is None  # an Ollama
    for address in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "0.0.0.0"):  # noqa: S104
        reason = policy.refusal(ipaddress.ip_address(address), 8001)
        assert reason is not None, address
        assert "platform's own services" in reason


def test_from_settings_refuses_its_own_port_redis_and_database() -> None:
    settings = InferenceSettings(
        port=8102,
        redis_url="redis://:pw@127.0.0.1:6390/0",
        database_url="postgresql+asyncpg://inference@localhost/platform",
        allowed_private_networks="127.0.0.1/32, 10.0.0.0/8",
        refused_endpoints="10.0.0.7:9000,[::1]:9001",
    )
    policy = EgressPolicy.from_settings(settings)
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal(loopback, 9999) is None
    for port in (8102, 6390, 5432, 9001):
        assert policy.refusal(loopback, port) is not None, port
    assert policy.refusal(ipaddress.ip_address("10.0.0.7"), 9000) is not None
    assert policy.refusal(ipaddress.ip_address("10.0.0.7"), 9001) is None


def test_database_and_redis_named_by_host_name_or_socket_add_no_endpoint() -> None:
    settings = InferenceSettings(
        redis_url="redis://redis:6379/0",
        database_url="postgresql://inference@/platform?host=/tmp/pg",
    )
    assert EgressPolicy.from_settings(settings).own_endpoints == (
        (ipaddress.ip_network("127.0.0.0/8"), 8002),
    )


def test_the_settings_read_comma_separated_lists_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERENCE_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1/32,::1/128")
    monkeypatch.setenv("INFERENCE_REFUSED_NETWORKS", "34.118.224.0/20")
    monkeypatch.setenv("INFERENCE_REFUSED_ENDPOINTS", "127.0.0.1:8001, 127.0.0.1:8003")
    settings = InferenceSettings()
    assert [str(n) for n in settings.allowed_private_networks] == ["127.0.0.1/32", "::1/128"]
    assert [str(n) for n in settings.refused_networks] == ["34.118.224.0/20"]
    assert settings.refused_endpoints == ["127.0.0.1:8001", "127.0.0.1:8003"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("allowed_private_networks", "10.0.0.0/33"),
        ("allowed_private_networks", "not-a-network"),
        ("refused_endpoints", "127.0.0.1"),
        ("refused_endpoints", "redis:6379"),
        ("refused_endpoints", "127.0.0.1:70000"),
    ],
)
def test_a_malformed_setting_stops_the_service_at_start_up(name: str, value: str) -> None:
    with pytest.raises(ValidationError):
        InferenceSettings(**{name: value})


async def test_a_host_name_is_judged_by_every_address_it_resolves_to() -> None:
    with pytest.raises(DestinationRefused) as refused:
        await resolve(NOTHING_ALLOWED, "localhost", 8080, 5.0)
    assert (
        "localhost (port 8080) resolves to an address that is a loopback" in refused.value.message
    )
    assert "INFERENCE_ALLOWED_PRIVATE_NETWORKS" in refused.value.message
    allowed = EgressPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
    addresses = await resolve(allowed, "localhost", 8080, 5.0)
    assert ipaddress.ip_address("127.0.0.1") in addresses


async def test_an_address_is_judged_without_dns() -> None:
    with pytest.raises(DestinationRefused) as refused:
        await resolve(NOTHING_ALLOWED, "169.254.169.254", 80, 5.0)
    assert refused.value.message.startswith("169.254.169.254 (port 80) is a link-local address")
    assert await resolve(NOTHING_ALLOWED, "8.8.8.8", 443, 5.0) == [ipaddress.ip_address("8.8.8.8")]
