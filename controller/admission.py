"""Who may enroll: an operator's approval, an `--auto-approve` glob or a one-time join token.

No credential leaves the cluster before a device is admitted (DESIGN.md). Join tokens
are Secrets in the fleet namespace labelled `pimesh.io/join-token: "true"`; key `token`
holds the value, annotation `pimesh.io/device-glob` limits which ids may use it and
`pimesh.io/expires` (RFC 3339) ends it. A token admits one device: it is consumed by
deleting its Secret with a uid precondition, so two devices racing for one token cannot
both win.
"""

import base64
import binascii
import fnmatch
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.errors import Conflict
from controller.kube import SECRETS, JsonObject, Kube

JOIN_TOKEN_LABEL = "pimesh.io/join-token"  # noqa: S105 - a label name, not a secret
GLOB_ANNOTATION = "pimesh.io/device-glob"
EXPIRES_ANNOTATION = "pimesh.io/expires"


@dataclass(frozen=True)
class Verdict:
    """The admission decision for one device."""

    admitted: bool
    reason: str
    rejected: bool = False


def matches_auto_approve(device_id: str, globs: Sequence[str]) -> bool:
    """True when an `--auto-approve` glob admits this id."""
    return any(fnmatch.fnmatchcase(device_id, glob) for glob in globs)


def consume_join_token(
    kube: Kube, *, namespace: str, device_id: str, token: str, now: datetime
) -> Verdict:
    """Admit the device if `token` is a valid join token for it, consuming the token."""
    secrets, _ = kube.list(SECRETS, namespace=namespace, label_selector=f"{JOIN_TOKEN_LABEL}=true")
    for secret in secrets:
        if not _holds(secret, token):
            continue
        problem = _unusable(secret, device_id=device_id, now=now)
        if problem:
            return Verdict(admitted=False, rejected=True, reason=problem)
        meta = secret["metadata"]
        try:
            consumed = kube.delete(SECRETS, meta["name"], namespace=namespace, uid=meta.get("uid"))
        except Conflict:
            consumed = False
        if not consumed:
            return Verdict(admitted=False, rejected=True, reason="join token already used")
        return Verdict(admitted=True, reason=f"admitted by join token {meta['name']}")
    return Verdict(admitted=False, rejected=True, reason="join token unknown")


def _holds(secret: JsonObject, token: str) -> bool:
    encoded = (secret.get("data") or {}).get("token")
    if not isinstance(encoded, str):
        return False
    try:
        value = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    # Constant time: the comparison must not tell an attacker how much of a guess was right.
    return hmac.compare_digest(value.strip(), token.encode("utf-8"))


def _unusable(secret: JsonObject, *, device_id: str, now: datetime) -> str | None:
    annotations = secret["metadata"].get("annotations") or {}
    glob = annotations.get(GLOB_ANNOTATION)
    if glob and not fnmatch.fnmatchcase(device_id, glob):
        return f"join token is not valid for device id {device_id}"
    expires = annotations.get(EXPIRES_ANNOTATION)
    if expires:
        try:
            deadline = datetime.fromisoformat(expires)
        except ValueError:
            return "join token has an unreadable expiry; ask the operator for a new one"
        if deadline.tzinfo is None or deadline <= now:
            return "join token expired"
    return None
