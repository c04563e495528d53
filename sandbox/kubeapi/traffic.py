"""What tests observe and perturb on the wire: the request log and injected faults.

Reliability tests need the API server to misbehave on cue (a 500 on the third PATCH,
a 429 with Retry-After, a slow answer) and to count calls per device. Both are shared
between the server's event-loop thread and the test thread, hence the lock.
"""

import re
import threading
from dataclasses import dataclass, field


@dataclass
class Injection:
    """A fault answered instead of the real response, `times` times (None: forever).

    `status` None with a `delay_s` only slows the real answer down.
    """

    method: str | None = None
    path_regex: re.Pattern[str] | None = None
    status: int | None = 500
    times: int | None = 1
    retry_after: int | None = None
    delay_s: float = 0.0
    hits: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        """Whether a request is targeted and the injection is not used up."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_regex is None or self.path_regex.search(path) is not None


@dataclass(frozen=True)
class RequestRecord:
    """One served request, as recorded after its status was decided."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    injected: bool = False


class Traffic:
    """Thread-safe request log and fault injection table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._injections: list[Injection] = []
        self._records: list[RequestRecord] = []

    def inject(self, injection: Injection) -> Injection:
        """Arm an injection; earlier ones take precedence when several match."""
        with self._lock:
            self._injections.append(injection)
        return injection

    def clear_injections(self) -> None:
        """Disarm every injection."""
        with self._lock:
            self._injections.clear()

    def take(self, method: str, path: str) -> Injection | None:
        """The first armed injection for this request, counting the hit."""
        with self._lock:
            for injection in self._injections:
                if injection.matches(method, path):
                    injection.hits += 1
                    return injection
        return None

    def record(self, record: RequestRecord) -> None:
        """Append a served request to the log."""
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[RequestRecord]:
        """A snapshot of the log, oldest first."""
        with self._lock:
            return list(self._records)

    def clear_records(self) -> None:
        """Forget the requests served so far."""
        with self._lock:
            self._records.clear()
