"""Fixtures every test may use: a unique topic prefix and namespace per test.

The real-part fixtures (Mosquitto, the Kubernetes API over HTTP) live in
`tests/harness/` and are re-exported here so that every test module sees them.
"""

import uuid

import pytest


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, two levels deep like the default `pimesh/v1`."""
    return f"t/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def namespace() -> str:
    """A Kubernetes namespace name no other test uses (DNS-1123)."""
    return f"t-{uuid.uuid4().hex[:12]}"
