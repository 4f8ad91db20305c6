"""Fixtures of the embeddings service's tests: the service migrated on the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from common.testing import RunDatabase, ServiceHarness
from embeddings.main import create_app
from embeddings.settings import EmbeddingsSettings


@pytest.fixture(scope="session")
def harness(test_database: RunDatabase, redis_url: str) -> ServiceHarness:
    return ServiceHarness.migrated(
        "embeddings", EmbeddingsSettings, create_app, test_database, redis_url
    )


@pytest.fixture
async def app(harness: ServiceHarness) -> AsyncIterator[FastAPI]:
    async with harness.app() as started:
        yield started
