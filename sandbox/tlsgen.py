"""A small certificate authority for a local broker: server and client certificates.

`pimesh sandbox` and the tests run Mosquitto with TLS and mutual TLS on loopback, so they
need a CA, a server certificate for 127.0.0.1/localhost and client certificates whose
common name is the MQTT identity (Mosquitto's `use_identity_as_username`). Everything is
made in memory with `cryptography`; `write_pair` puts a certificate and its key on disk
(the key 0600). Keys are ECDSA P-256: fast to make, and accepted by OpenSSL everywhere.

Certificates follow RFC 5280 closely enough for strict verifiers (Python 3.13's
`VERIFY_X509_STRICT`): the CA is marked critical `cA=TRUE`, leaves carry subject and
authority key identifiers, an extended key usage and their names in subjectAltName.
"""

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Back-date `notBefore` so a peer whose clock is a little behind still accepts."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM (the key PKCS #8, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def write_pair(issued: Issued, *, cert_file: Path, key_file: Path) -> None:
    """Write a certificate (0644) and its key (0600, created with that mode)."""
    cert_file.write_bytes(issued.cert_pem)
    cert_file.chmod(0o644)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(issued.key_pem)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


class CertificateAuthority:
    """A self-signed CA kept in memory that issues server and client certificates."""

    def __init__(self, *, common_name: str = "pimesh sandbox CA", valid_days: int = 30) -> None:
        self._key = _new_key()
        self._valid = datetime.timedelta(days=valid_days)
        now = datetime.datetime.now(datetime.UTC)
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + self._valid)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM: what clients and the broker trust."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(self, hosts: Sequence[str], *, common_name: str | None = None) -> Issued:
        """Issue a server certificate valid for `hosts` (IP literals or DNS names)."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name")
        return self._issue(
            common_name or hosts[0],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=_san(hosts),
        )

    def issue_client(self, common_name: str) -> Issued:
        """Issue a client certificate; its common name is the MQTT identity."""
        return self._issue(
            common_name,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            san=x509.SubjectAlternativeName([x509.DNSName(common_name)]),
        )

    def _issue(
        self, common_name: str, *, usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName
    ) -> Issued:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + self._valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(san, critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))
