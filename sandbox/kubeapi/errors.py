"""Errors the emulated API server answers with, rendered as Kubernetes `Status` objects.

Clients branch on `code` and `reason` of a failed call (the official python client raises
`ApiException` with that status and the body), so each error here carries the reason
string kube-apiserver uses (k8s.io/apimachinery/pkg/apis/meta/v1 `StatusReason`)::

    ApiError                    500 InternalError (also the base for injected faults)
    ├── BadRequestError           400 BadRequestError
    ├── NotFoundError             404 NotFoundError
    ├── MethodNotAllowedError     405 MethodNotAllowedError
    ├── AlreadyExistsError        409 AlreadyExistsError
    ├── ConflictError             409 Conflict (stale resourceVersion)
    ├── GoneError                 410 Expired (watch from a resourceVersion no longer kept)
    ├── UnsupportedMediaTypeError 415 UnsupportedMediaTypeError
    └── InvalidError              422 Invalid (field validation)
"""

from typing import Any, ClassVar


class ApiError(Exception):
    """A failed API call; `status()` renders the body kube-apiserver would send."""

    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        """The `Status` object for the response body."""
        return status_body(
            code=self.code, reason=self.reason, message=self.message, details=self.details
        )


class BadRequestError(ApiError):
    """The request is malformed (bad body, missing parameter, mismatched name)."""

    code = 400
    reason = "BadRequest"


class NotFoundError(ApiError):
    """The object, resource or endpoint does not exist."""

    code = 404
    reason = "NotFound"


class MethodNotAllowedError(ApiError):
    """The verb is not supported on this URL."""

    code = 405
    reason = "MethodNotAllowed"


class AlreadyExistsError(ApiError):
    """A create found an object with that name."""

    code = 409
    reason = "AlreadyExists"


class ConflictError(ApiError):
    """An update carried a resourceVersion that is no longer current."""

    code = 409
    reason = "Conflict"


class GoneError(ApiError):
    """A watch asked for history older than what the server keeps."""

    code = 410
    reason = "Expired"


class UnsupportedMediaTypeError(ApiError):
    """A PATCH with a content type the server does not know."""

    code = 415
    reason = "UnsupportedMediaType"


class InvalidError(ApiError):
    """The object fails validation (the apiserver's `errors.NewInvalid`)."""

    code = 422
    reason = "Invalid"


def status_body(
    *, code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A failure `Status` (meta/v1) as kube-apiserver serialises it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }
