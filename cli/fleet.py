"""What the operator commands do to EdgeDevices, through the controller's Kubernetes facade.

PROTOCOL.md (Enrollment, steps 2, 4 and 6) gives operators four levers, all on the
EdgeDevice object, and the controller reacts to each change:

- `spec.approved: true` lets a Pending device enroll;
- `spec.revoked: true` decommissions it (approved is left as it is: step 5 says those
  fields belong to operators);
- annotation `pimesh.io/rekey-requested` = now re-pins the device's keys at its next
  announce, and `pimesh.io/rotate-requested` = now issues a new token and bundle; the
  controller acts when the value differs from `status.rekeyHandled` /
  `status.rotationHandled`, so the value carries microseconds to keep two requests in
  one second apart.

Every change is a JSON merge patch (RFC 7386): it touches only the fields named, so it
cannot undo what the controller or another operator wrote meanwhile. API errors are
turned into `CliError`s here, where they enter, with the device and namespace named.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cli.errors import CliError, UsageError
from controller.device import EdgeDevice
from controller.errors import ApiError, ApiUnavailable, NotFound
from controller.kube import EDGE_DEVICES, Kube
from shared.fields import is_device_id
from shared.timestamps import format_ts, now_utc

JsonObject = dict[str, Any]


def check_device_id(device_id: str) -> str:
    """Refuse what cannot be a device id before it reaches a URL (PROTOCOL.md, Transport).

    Raises:
        UsageError: not a DNS-1123 label of 1 to 40 characters.
    """
    if not is_device_id(device_id):
        msg = f"ID {device_id[:60]!r} is not a device id (a DNS-1123 label of 1 to 40 characters)"
        raise UsageError(msg)
    return device_id


class Fleet:
    """The EdgeDevices of one namespace, as the operator commands see them."""

    def __init__(self, kube: Kube, *, namespace: str, server: str) -> None:
        self._kube = kube
        self.namespace = namespace
        self._server = server

    def list(self) -> list[JsonObject]:
        """Every EdgeDevice object as the API returned it, sorted by name.

        Raises:
            CliError: the API could not be reached or refused.
        """
        with self._translated(None):
            items, _ = self._kube.list(EDGE_DEVICES, namespace=self.namespace)
        return sorted(items, key=lambda obj: str(obj.get("metadata", {}).get("name", "")))

    def approve(self, device_id: str) -> EdgeDevice:
        """Set `spec.approved: true`; `spec.revoked` is left as it is."""
        return self._patch(device_id, {"spec": {"approved": True}})

    def revoke(self, device_id: str) -> EdgeDevice:
        """Set `spec.revoked: true`."""
        return self._patch(device_id, {"spec": {"revoked": True}})

    def request(self, device_id: str, annotation: str, *, at: str | None = None) -> EdgeDevice:
        """Set a request annotation (rotate or rekey) to `at`, by default the current time."""
        value = at if at is not None else request_time()
        return self._patch(device_id, {"metadata": {"annotations": {annotation: value}}})

    def _patch(self, device_id: str, patch: JsonObject) -> EdgeDevice:
        check_device_id(device_id)
        with self._translated(device_id):
            obj = self._kube.merge_patch(EDGE_DEVICES, device_id, patch, namespace=self.namespace)
        return EdgeDevice.from_api(obj)

    @contextmanager
    def _translated(self, device_id: str | None) -> Iterator[None]:
        """Turn the facade's errors into one line an operator can act on."""
        try:
            yield
        except NotFound as exc:
            if device_id is None:
                msg = f"namespace {self.namespace} or the EdgeDevice CRD not found ({exc.reason})"
                raise CliError(msg) from exc
            msg = f"no device {device_id} in namespace {self.namespace}"
            raise CliError(msg) from exc
        except ApiUnavailable as exc:
            msg = f"cannot reach the Kubernetes API at {self._server}: {_why(exc)}"
            raise CliError(msg) from exc
        except ApiError as exc:
            msg = f"the Kubernetes API refused: {exc.reason}"
            raise CliError(msg) from exc


def _why(exc: ApiUnavailable) -> str:
    """The socket error under urllib3's wrappers ("Connection refused"), else the reason.

    urllib3 nests it as MaxRetryError.reason -> NewConnectionError -> __cause__, and
    repeats the URL at every level; an operator needs the last word only.
    """
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        reason = getattr(cause, "reason", None)
        cause = reason if isinstance(reason, BaseException) else cause.__cause__
    return exc.reason


def request_time() -> str:
    """The value of a rotate or rekey request: now, RFC 3339 UTC to the microsecond."""
    return format_ts(now_utc())
