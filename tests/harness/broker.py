"""Real Mosquitto brokers for the tests (see `sandbox.broker`).

`broker` is one broker per pytest-xdist worker for the whole session. Its ACL prefix is
the pattern `+/+`, so every test's unique two-level `prefix` ("t/<id>") is served by
the same rules the product uses for `pimesh/v1`. Tests that stop, restart or kill a
broker take a private one from `broker_factory` instead.
"""

from collections.abc import Iterator
from typing import Protocol

import pytest

from sandbox.broker import Mosquitto

__all__ = ["BrokerFactory", "broker", "broker_factory"]

TEST_PREFIX_PATTERN = "+/+"


class BrokerFactory(Protocol):
    def __call__(
        self, *, prefix: str = TEST_PREFIX_PATTERN, persistence: bool = False
    ) -> Mosquitto:
        """Start a private broker, closed when the test ends."""
        ...


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """The worker's shared broker; add users with `broker.add_users([...])`."""
    with Mosquitto(prefix=TEST_PREFIX_PATTERN) as shared:
        yield shared


@pytest.fixture
def broker_factory() -> Iterator[BrokerFactory]:
    """Make private, started brokers for one test; all are stopped and removed after it."""
    made: list[Mosquitto] = []

    def make(*, prefix: str = TEST_PREFIX_PATTERN, persistence: bool = False) -> Mosquitto:
        private = Mosquitto(prefix=prefix, persistence=persistence)
        made.append(private)
        private.start()
        return private

    yield make
    for private in made:
        private.close()
