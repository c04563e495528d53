"""Code both sides of pimesh share: the wire protocol as types, topics and cryptography.

Everything here is pure (no sockets, no threads, no files except key files written on
request) so the controller, the agent and third-party tooling can rely on it alike.
"""

PROTOCOL_VERSION = 1
"""The `v` field of every message (PROTOCOL.md, version 1)."""

DEFAULT_TOPIC_PREFIX = "pimesh/v1"
"""The topic prefix `P` unless a component is configured otherwise."""
