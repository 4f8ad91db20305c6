"""Root conftest: the shared fixtures (real Postgres with pgvector, real Redis)."""

# pytest's importlib mode names gateway/tests/conftest.py "gateway.tests.conftest" and would
# register the bare folder gateway/ as the module "gateway", hiding the real package under
# gateway/src. Importing the real package first keeps it in place.
import gc
import os

import pytest

import gateway  # noqa: F401

# Tests look at spans: record them all (outside tests nothing is recorded unless exported).
os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")

pytest_plugins = ["devkit.testing"]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Collect each test's garbage between tests, then freeze what is left, so that the
    collector never runs long inside a test. Without it, this one process (3.2 GB, 2 million
    objects by the end of a run) had full collections of up to 5.8 s: they stopped the
    event loop of whichever test they fell in, and a 1 s provider timeout or a 5 s connect
    to a local server failed at random. Frozen objects are no longer scanned; those freed
    by reference counting still are freed."""
    gc.collect()
    gc.freeze()
