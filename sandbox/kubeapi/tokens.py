"""The ServiceAccount TokenRequest subresource: bound, audience-scoped, expiring JWTs.

kmock has no `serviceaccounts/{name}/token`. pimesh mints the token ztunnel on a Pi
presents to istiod through it, so the emulation follows kube-apiserver
(pkg/registry/core/serviceaccount/storage/token.go and pkg/serviceaccount/claims.go):
RS256-signed JWTs with `aud`, `exp`, `iat`, `nbf`, `iss`, `jti`, `sub` =
`system:serviceaccount:NS:NAME` and the `kubernetes.io` claim; `expirationSeconds`
must lie in [600, 2^32] (`ValidateTokenRequest`, answered as 422 InvalidError); a default
of one hour. Every issued token is recorded so tests can assert on rotation.
"""

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sandbox.kubeapi.errors import InvalidError
from sandbox.kubeapi.objects import rfc3339

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_EXPIRATION_S = 3600
MIN_EXPIRATION_S = 600
MAX_EXPIRATION_S = 1 << 32


@dataclass(frozen=True)
class IssuedToken:
    """A token the server minted (the token text itself is kept out of reprs)."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    jti: str
    token: str = field(repr=False)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _expiration(spec: dict[str, Any]) -> int:
    seconds = spec.get("expirationSeconds")
    if seconds is None:
        return DEFAULT_EXPIRATION_S
    if not isinstance(seconds, int) or seconds < MIN_EXPIRATION_S:
        problem = "may not specify a duration less than 10 minutes"
    elif seconds > MAX_EXPIRATION_S:
        problem = "may not specify a duration larger than 2^32 seconds"
    else:
        return seconds
    raise InvalidError(
        f'TokenRequest.authentication.k8s.io "" is invalid: '
        f"spec.expirationSeconds: Invalid value: {seconds}: {problem}",
        details={"kind": "TokenRequest", "group": "authentication.k8s.io"},
    )


class TokenIssuer:
    """Signs service account tokens with a key generated per server."""

    def __init__(self, *, issuer: str = DEFAULT_ISSUER) -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = _b64url(hashlib.sha256(public_der).digest())
        self._issued: list[IssuedToken] = []
        self._lock = threading.Lock()

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        """The key that verifies every token this issuer signs."""
        return self._key.public_key()

    @property
    def issued(self) -> list[IssuedToken]:
        """A snapshot of every token issued so far, oldest first."""
        with self._lock:
            return list(self._issued)

    def token_request(
        self, request: dict[str, Any], *, service_account: dict[str, Any]
    ) -> dict[str, Any]:
        """Answer a TokenRequest for `service_account` with the request's spec honoured."""
        spec = dict(request.get("spec") or {})
        meta = service_account["metadata"]
        now = datetime.now(UTC).replace(microsecond=0)
        seconds = _expiration(spec)
        audiences = tuple(spec.get("audiences") or [self.issuer])
        issued = self._mint(meta, audiences=audiences, now=now, seconds=seconds)
        spec.update(audiences=list(audiences), expirationSeconds=seconds)
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "creationTimestamp": rfc3339(now),
            },
            "spec": spec,
            "status": {"token": issued.token, "expirationTimestamp": rfc3339(issued.expires_at)},
        }

    def _mint(
        self, meta: dict[str, Any], *, audiences: tuple[str, ...], now: datetime, seconds: int
    ) -> IssuedToken:
        expires = now + timedelta(seconds=seconds)
        jti = str(uuid.uuid4())
        claims = {
            "aud": list(audiences),
            "exp": int(expires.timestamp()),
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "iss": self.issuer,
            "jti": jti,
            "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
            "kubernetes.io": {
                "namespace": meta["namespace"],
                "serviceaccount": {"name": meta["name"], "uid": meta["uid"]},
            },
        }
        token = self._sign(claims)
        issued = IssuedToken(
            meta["namespace"], meta["name"], audiences, now, expires, jti, token=token
        )
        with self._lock:
            self._issued.append(issued)
        return issued

    def _sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "kid": self.key_id}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"
