"""The one time format on the wire: RFC 3339 in UTC with a trailing 'Z' (PROTOCOL.md).

`Timestamp` is the field type every `ts`-like field of `shared.messages` uses; `parse_ts`,
`format_ts` and `now_utc` are the same rules for callers away from the wire (the CLI,
the controller's leases, the device's bundle store), so a timestamp means one thing
everywhere. Kept apart from `shared.fields` because most of those callers need time and
none of the rest.
"""

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from shared.fields import quoted

_TS_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)
_TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$"


def parse_ts(value: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp with a trailing 'Z' into an aware datetime.

    Digits finer than a microsecond are dropped; other offsets and lower-case 't'/'z'
    are refused because PROTOCOL.md allows only the 'Z' form.

    Raises:
        ValueError: `value` is not such a timestamp.
    """
    match = _TS_RE.fullmatch(value)
    if match is None:
        msg = f"{quoted(value)} is not an RFC 3339 UTC timestamp like 2026-11-26T10:00:00Z"
        raise ValueError(msg)
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
        )
    except ValueError:
        msg = f"{quoted(value)} is not a valid date and time"
        raise ValueError(msg) from None


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as PROTOCOL.md wants it: UTC, trailing 'Z'.

    Raises:
        ValueError: `moment` is naive.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        msg = "a timestamp must be timezone-aware"
        raise ValueError(msg)
    utc = moment.astimezone(UTC)
    # Explicit widths: strftime('%Y') does not pad years before 1000 on every libc.
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    return f"{text}.{utc.microsecond:06d}Z" if utc.microsecond else f"{text}Z"


def now_utc() -> datetime:
    """The current time as an aware UTC datetime, for `ts` fields."""
    return datetime.now(UTC)


def _timestamp(value: object) -> datetime:
    if isinstance(value, str):
        return parse_ts(value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            msg = "a timestamp must be timezone-aware"
            raise ValueError(msg)
        return value.astimezone(UTC)
    msg = "must be an RFC 3339 UTC timestamp string"
    raise ValueError(msg)


Timestamp = Annotated[
    datetime,
    PlainValidator(_timestamp),
    PlainSerializer(format_ts, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": _TS_PATTERN}),
]
