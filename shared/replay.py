"""The controller's replay window: timestamp skew, newest-accepted order and a nonce cache.

PROTOCOL.md has the controller refuse a device message whose `ts` is more than 300 s
from its clock or older than the newest it accepted from that device, and any nonce it
saw from that device in the last 600 s. This module keeps that state in memory, bounded,
and thread-safe (paho callbacks and reconcile workers both ask).
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from shared.errors import InvalidMessage, ReplayedMessage


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime) -> str:
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


class ReplayGuard:
    """The controller's replay window per device (PROTOCOL.md, Device identity).

    A message passes when its `ts` is within `max_skew_s` of the clock, not older than
    the newest accepted `ts` the caller passes (kept in the EdgeDevice status), and its
    nonce was not accepted from that device in the last `nonce_ttl_s` seconds. A nonce is
    remembered until its message could no longer pass the clock check either, so no
    replay slips through between the two windows.

    Memory is bounded: at most `max_nonces_per_device` live nonces per device and
    `max_nonces` in all. At either cap the new message is rejected (fail closed), since
    forgetting a live nonce would reopen a replay; a device flooding its own cap only
    locks itself out until its nonces expire. Call `check` after the signature verifies,
    so that only authentic messages take room. Thread-safe.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utc_now,
        max_skew_s: float = 300,
        nonce_ttl_s: float = 600,
        max_nonces_per_device: int = 1_000,
        max_nonces: int = 100_000,
    ) -> None:
        self._clock = clock
        self._max_skew = timedelta(seconds=max_skew_s)
        self._nonce_ttl = timedelta(seconds=nonce_ttl_s)
        self._max_per_device = max_nonces_per_device
        self._max_total = max_nonces
        self._lock = threading.Lock()
        # device id -> nonce -> moment it may be forgotten, in insertion order.
        self._seen: dict[str, OrderedDict[str, datetime]] = {}
        self._total = 0

    def check(
        self,
        device_id: str,
        *,
        ts: datetime,
        nonce: str,
        newest_accepted: datetime | None = None,
    ) -> None:
        """Accept a message and remember its nonce, or raise without remembering it.

        Raises:
            ReplayedMessage: Outside the clock window, older than `newest_accepted`, a
                nonce already seen, or the cache is full; the reason says which.
            InvalidMessage: `ts` has no time zone.
        """
        if ts.tzinfo is None:
            raise InvalidMessage("timestamp has no time zone")
        with self._lock:
            now = self._clock()
            self._check_time(ts, now=now, newest_accepted=newest_accepted)
            self._expire(device_id, now=now)
            seen = self._seen.get(device_id, OrderedDict())
            if nonce in seen:
                raise ReplayedMessage("nonce already seen")
            self._check_room(len(seen), now=now)
            seen[nonce] = max(now + self._nonce_ttl, ts + self._max_skew)
            self._seen[device_id] = seen
            self._total += 1

    def __len__(self) -> int:
        """Number of nonces remembered (expired ones may linger until the next check)."""
        with self._lock:
            return self._total

    def _check_time(self, ts: datetime, *, now: datetime, newest_accepted: datetime | None) -> None:
        offset = (ts - now).total_seconds()
        if abs(offset) > self._max_skew.total_seconds():
            where = "ahead of" if offset > 0 else "behind"
            raise ReplayedMessage(
                f"timestamp {_rfc3339(ts)} is {round(abs(offset), 3):g} s {where} the "
                f"controller's clock (allowed ±{self._max_skew.total_seconds():g} s)"
            )
        if newest_accepted is not None and ts < newest_accepted:
            raise ReplayedMessage(
                f"timestamp {_rfc3339(ts)} is older than the newest accepted message "
                f"({_rfc3339(newest_accepted)})"
            )

    def _check_room(self, device_count: int, *, now: datetime) -> None:
        if device_count >= self._max_per_device:
            raise ReplayedMessage(
                f"more than {self._max_per_device} messages from this device within "
                f"{self._nonce_ttl.total_seconds():g} s; refusing until older nonces expire"
            )
        if self._total >= self._max_total:
            for other in list(self._seen):
                self._expire(other, now=now)
        if self._total >= self._max_total:
            raise ReplayedMessage(
                f"replay cache full ({self._max_total} nonces); refusing until nonces expire"
            )

    def _expire(self, device_id: str, *, now: datetime) -> None:
        seen = self._seen.get(device_id)
        if seen is None:
            return
        # Insertion order is expiry order while the clock moves forward; if it steps back
        # an entry may wait behind a later one, which only keeps it longer (safe).
        while seen and next(iter(seen.values())) < now:
            seen.popitem(last=False)
            self._total -= 1
        if not seen:
            del self._seen[device_id]
