"""Canonical JSON: the exact bytes every pimesh signature covers (PROTOCOL.md).

Sorted keys, no insignificant whitespace, UTF-8 without escaping. For JSON without
floats (which the protocol forbids) this equals RFC 8785 (JCS), so a client in any
language can reproduce the bytes.
"""

import json
from collections.abc import Mapping
from typing import Any


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Return the canonical UTF-8 bytes of a JSON object."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
