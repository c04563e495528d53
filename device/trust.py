"""Which controller the agent believes: its Ed25519 key, pinned once.

The key comes from `--controller-key`, or is pinned on first use from the first
`controller_status` that verifies with the key it carries (trust on first use, as SSH
does) and kept in the state directory so a reboot does not reopen the question.
Enrollments and bundles are believed only when that key signed them.
"""

import logging
from pathlib import Path

from device.install import write_atomic
from shared.crypto import fingerprint, load_sign_public
from shared.errors import BadSignature, InvalidMessage
from shared.messages import ControllerStatus, MessageBase
from shared.signing import verify_message

log = logging.getLogger(__name__)

PIN_FILE = "controller.pub"


class ControllerTrust:
    """The pinned controller key, and checks against it."""

    def __init__(self, state_dir: Path, *, pinned: str | None = None) -> None:
        self._file = state_dir / PIN_FILE
        if pinned is not None:
            load_sign_public(pinned)  # refuse a malformed --controller-key at start
            self._key: str | None = pinned
        else:
            self._key = self._read()

    @property
    def key(self) -> str | None:
        """The pinned key (base64), or None before first use."""
        return self._key

    def observe(self, status: ControllerStatus) -> bool:
        """Pin on first sight; True when `status` comes from the trusted controller."""
        try:
            verify_message(status, status.keys.sign)
        except BadSignature:
            log.warning("controller status with a bad signature ignored")
            return False
        if self._key is None:
            self._pin(status.keys.sign)
        if status.keys.sign != self._key:
            log.warning(
                "controller status from an unknown key ignored",
                extra={"key": fingerprint(load_sign_public(status.keys.sign))},
            )
            return False
        return True

    def signed_by_controller(self, msg: MessageBase) -> bool:
        """True when the pinned controller signed `msg`."""
        if self._key is None:
            return False
        try:
            verify_message(msg, self._key)
        except BadSignature:
            return False
        return True

    def _pin(self, key: str) -> None:
        write_atomic(self._file, key.encode("ascii") + b"\n", mode=0o600)
        self._key = key
        log.info("pinned controller key", extra={"key": fingerprint(load_sign_public(key))})

    def _read(self) -> str | None:
        try:
            text = self._file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        try:
            load_sign_public(text)
        except InvalidMessage:
            log.warning("ignoring a corrupt pinned controller key", extra={"file": str(self._file)})
            return None
        return text
