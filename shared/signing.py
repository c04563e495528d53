"""Sign and verify whole messages: the glue between `shared.messages` and `shared.crypto`.

A signature covers the canonical JSON of the message as it travelled, without `sig`
(PROTOCOL.md). For a decoded message those are the bytes remembered at decode time, so
fields this version does not know are covered too.
"""

from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.codec import signing_bytes
from shared.crypto import load_sign_public, sign, verify
from shared.errors import BadSignature, InvalidMessage
from shared.messages import MessageBase

M = TypeVar("M", bound=MessageBase)


def sign_message(msg: M, key: Ed25519PrivateKey) -> M:
    """A copy of `msg` carrying its signature in `sig`."""
    unsigned = msg.model_copy(update={"sig": None})
    return unsigned.model_copy(update={"sig": sign(signing_bytes(unsigned), key)})


def verify_message(msg: MessageBase, public_key: Ed25519PublicKey | str) -> None:
    """Check `msg.sig` against `public_key` (a key or its base64).

    Raises:
        BadSignature: no signature, a malformed key, or a signature that does not verify.
    """
    signature = getattr(msg, "sig", None)
    if not isinstance(signature, str):
        reason = "message is not signed"
        raise BadSignature(reason)
    if isinstance(public_key, str):
        try:
            public_key = load_sign_public(public_key)
        except InvalidMessage as exc:
            raise BadSignature(exc.reason) from exc
    verify(signature, signing_bytes(msg), public_key)
