"""Errors of the controller.

    PimeshError (shared.errors)
    └── ControllerError
        ├── ApiError            the Kubernetes API answered with an error status
        │   ├── NotFound        404
        │   ├── Conflict        409 (already exists, or a stale resourceVersion)
        │   └── TooManyRequests 429; `retry_after_s` says when to come back
        ├── ApiUnavailable      no answer at all (refused, reset, timed out, broken watch)
        ├── PermanentError      retrying cannot help (bad policy file, invalid object);
        │                       the reconciler records it in status and does not requeue
        └── Waiting             an input is missing (root cert, gateway address); the
                                reconciler records the reason and checks again later

Third-party errors are converted where they enter (`controller.kube`), so the rest of
the controller never sees `ApiException` or urllib3's exceptions.
"""

from shared.errors import PimeshError


class ControllerError(PimeshError):
    """Base of the controller's errors."""


class ApiError(ControllerError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, reason: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after_s = retry_after_s


class NotFound(ApiError):  # noqa: N818 - the API's own word
    """The object does not exist (404)."""


class Conflict(ApiError):  # noqa: N818
    """The object exists already, or was changed since it was read (409)."""


class TooManyRequests(ApiError):  # noqa: N818
    """The API server asks us to slow down (429)."""


class ApiUnavailable(ControllerError):  # noqa: N818
    """The API server could not be reached, or a connection broke."""


class PermanentError(ControllerError):
    """Retrying the same work cannot succeed; record it and wait for a change."""


class Waiting(ControllerError):  # noqa: N818
    """An input the work needs is not there yet; check again after `retry_after_s`."""

    def __init__(self, reason: str, *, condition: str, retry_after_s: float = 30.0) -> None:
        super().__init__(reason)
        self.condition = condition
        self.retry_after_s = retry_after_s
