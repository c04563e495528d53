"""The controller's own signing key, kept in Secret `pimesh-controller-key` (PROTOCOL.md).

Devices pin this key and ignore enrollments and bundles it did not sign, so every
replica must use the same one and it must survive restarts: it lives in the cluster, made
on first start. Two replicas starting at once both try to create it; the loser of that
race reads the winner's key.
"""

import base64
import logging

from controller.errors import Conflict, PermanentError
from controller.kube import SECRETS, Kube
from controller.resources import MANAGED_BY
from shared.crypto import ControllerKey
from shared.errors import KeyFileError

log = logging.getLogger(__name__)

SECRET_NAME = "pimesh-controller-key"  # noqa: S105 - a name, not a secret
SECRET_KEY = "ed25519"  # noqa: S105 - a data key name


def load_or_create_key(kube: Kube, *, namespace: str) -> ControllerKey:
    """Read the controller key from its Secret, creating it on first start."""
    secret = kube.find(SECRETS, SECRET_NAME, namespace=namespace)
    if secret is None:
        key = ControllerKey.generate()
        try:
            kube.create(SECRETS, _secret(key, namespace), namespace=namespace)
        except Conflict:
            secret = kube.get(SECRETS, SECRET_NAME, namespace=namespace)
        else:
            log.info("created controller key", extra={"object": f"Secret/{SECRET_NAME}"})
            return key
    return _key_from(secret)


def _secret(key: ControllerKey, namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": SECRET_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "data": {SECRET_KEY: base64.b64encode(key.seed_bytes()).decode("ascii")},
    }


def _key_from(secret: dict[str, object]) -> ControllerKey:
    data = secret.get("data")
    encoded = data.get(SECRET_KEY) if isinstance(data, dict) else None
    if not isinstance(encoded, str):
        msg = f"Secret {SECRET_NAME} has no data key {SECRET_KEY!r}"
        raise PermanentError(msg)
    try:
        return ControllerKey.from_seed(base64.b64decode(encoded, validate=True))
    except (ValueError, KeyFileError) as exc:
        msg = f"Secret {SECRET_NAME} key {SECRET_KEY!r} is not a 32-byte Ed25519 seed"
        raise PermanentError(msg) from exc
