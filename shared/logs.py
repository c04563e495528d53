"""Structured logs for every component: one JSON object per line, or readable text.

Code logs with the standard library and puts facts in `extra={...}`; this formatter
turns them into fields, so `kubectl logs` output can be queried (`jq 'select(.device ==
"pi-kitchen")'`). Secrets are never passed to a logger in the first place; as a second
line of defence, fields whose names say they hold one are masked.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_SECRET_WORDS = ("token", "password", "secret", "private", "seed")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        masked = any(word in key.lower() for word in _SECRET_WORDS)
        fields[key] = "***" if masked else value
    return fields


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>}`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON line."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a line of text."""
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{text} {extras}" if extras else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(*, level: str = "INFO", fmt: LogFormat = "json") -> None:
    """Send every log record to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and urllib3 are chatty at INFO about things our own logs already say.
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
