"""Root conftest: the shared fixtures (real Postgres with pgvector, real Redis)."""

# pytest's importlib mode names gateway/tests/conftest.py "gateway.tests.conftest" and would
# register the bare folder gateway/ as the module "gateway", hiding the real package under
# gateway/src. Importing the real package first keeps it in place.
import os

import gateway  # noqa: F401

# Tests look at spans: record them all (outside tests nothing is recorded unless exported).
os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")

pytest_plugins = ["devkit.testing"]
