"""Fixtures every test may use: a unique topic prefix and namespace per test.

The real-part fixtures (Mosquitto, the Kubernetes API over HTTP) live in
`tests/harness/` and are re-exported here so that every test module sees them.
"""

import uuid

# Imported up front: hypothesis's plugin otherwise imports it at the end of the session,
# while daemon threads of the real parts may still be importing lazily, and CPython
# 3.11's AST recursion counter is not thread-safe ("AST constructor recursion depth
# mismatch", python/cpython#106905).
import hypothesis  # noqa: F401
import pytest

from tests.harness.broker import broker, broker_factory  # noqa: F401 - fixtures
from tests.harness.controller import controller_factory, mesh  # noqa: F401 - fixtures
from tests.harness.kubeapi import kube_api, kube_client, kube_namespace, kubeconfig  # noqa: F401


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, two levels deep like the default `pimesh/v1`."""
    return f"t/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def namespace() -> str:
    """A Kubernetes namespace name no other test uses (DNS-1123)."""
    return f"t-{uuid.uuid4().hex[:12]}"
