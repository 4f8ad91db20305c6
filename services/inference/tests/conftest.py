"""Fixtures of the inference service's tests: the service migrated on the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from common.testing import RunDatabase, ServiceHarness
from inference.main import create_app
from inference.settings import InferenceSettings


@pytest.fixture(scope="session")
def harness(test_database: RunDatabase, redis_url: str) -> ServiceHarness:
    return ServiceHarness.migrated(
        "inference", InferenceSettings, create_app, test_database, redis_url
    )


@pytest.fixture
async def app(harness: ServiceHarness) -> AsyncIterator[FastAPI]:
    async with harness.app() as started:
        yield started
