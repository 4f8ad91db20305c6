"""Fixtures for the fake providers' tests: each fake served once on 127.0.0.1, sharing one
FaultControl that every test gets freshly reset."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from devkit.fakes import FaultControl, create_hf_app, create_openai_app
from devkit.testing import LiveServer

API_KEY = "sk-test-0123456789"
HF_TOKEN = "hf_test_token"


@pytest.fixture(scope="session")
def shared_control() -> FaultControl:
    return FaultControl()


@pytest.fixture
def control(shared_control: FaultControl) -> Iterator[FaultControl]:
    shared_control.reset()
    yield shared_control
    shared_control.reset()


@pytest.fixture(scope="session")
async def openai_url(shared_control: FaultControl) -> AsyncIterator[str]:
    """The OpenAI fake (checking API_KEY), as a base URL without `/v1`."""
    async with LiveServer(create_openai_app(shared_control, api_key=API_KEY)) as server:
        yield server.url


@pytest.fixture(scope="session")
async def hf_url(shared_control: FaultControl) -> AsyncIterator[str]:
    """The Hugging Face fake (inference and the private repo need HF_TOKEN)."""
    async with LiveServer(create_hf_app(shared_control, token=HF_TOKEN)) as server:
        yield server.url
