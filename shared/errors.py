"""Errors raised by the shared protocol code.

    PimeshError
    ├── InvalidMessage      a payload or topic that is not valid pimesh v1 (reason says why)
    │   └── InvalidTopic    a topic that is not one of the protocol's, or has a bad id
    └── CryptoError         a cryptographic check failed
        ├── BadSignature    a signature does not verify with the expected key
        ├── SealError       a sealed bundle cannot be opened (other key, other info, tampered)
        ├── ReplayedMessage a nonce seen before, or a timestamp outside the window
        └── KeyFileError    a key file is missing, unreadable or malformed

Every error carries a `reason` that is safe to show to a device or an operator: it never
contains key material or tokens.
"""


class PimeshError(Exception):
    """Base of every error pimesh raises on purpose."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidMessage(PimeshError):  # noqa: N818 - the protocol's own word for it
    """A payload that is not a valid pimesh message; `reason` says what is wrong."""


class InvalidTopic(InvalidMessage):
    """A topic that is not one of the protocol's, or whose id is not a DNS-1123 label."""


class CryptoError(PimeshError):
    """A cryptographic check failed."""


class BadSignature(CryptoError):  # noqa: N818
    """A signature is missing, malformed or does not verify with the expected key."""


class SealError(CryptoError):
    """A sealed payload cannot be opened with this key and context."""


class ReplayedMessage(CryptoError):  # noqa: N818
    """A message whose nonce was seen before or whose timestamp is outside the window."""


class KeyFileError(CryptoError):
    """A key file is missing, unreadable or not a key of the expected type."""
