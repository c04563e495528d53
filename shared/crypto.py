"""The cryptography of PROTOCOL.md: device and controller keys, signatures, sealed bundles.

Owns every cryptographic decision so that the controller, the agent and third-party
tools make the same ones:

- key pairs (an Ed25519 signing key and an X25519 key-agreement key per device, an
  Ed25519 key for the controller) and their files on disk;
- strict base64 (RFC 4648 standard alphabet with padding, canonical encodings only);
- Ed25519 signatures over canonical JSON bytes (the caller builds the bytes with
  `shared.canonical.canonical_json`);
- single-shot HPKE (RFC 9180, base mode) for bundles;
- OpenSSH-style fingerprints (the replay window lives in `shared.replay`).

Nothing here touches the network; the only I/O is reading and writing key files when
asked. Every error is one of `shared.errors`, and no reason ever contains key material.
"""

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from shared.errors import BadSignature, InvalidMessage, KeyFileError, SealError

logger = logging.getLogger(__name__)

KEY_LEN = 32
"""Raw length of Ed25519 and X25519 public keys and of an Ed25519 seed (RFC 8032, 7748)."""
SIGNATURE_LEN = 64
"""Raw length of an Ed25519 signature (RFC 8032 section 5.1.6)."""
NONCE_LEN = 16
"""Random bytes in a message nonce (PROTOCOL.md: base64 of 16 random bytes)."""
SIGN_KEY_FILE = "sign.key"
"""The device's Ed25519 private key: unencrypted PKCS#8 PEM, mode 0600."""
KX_KEY_FILE = "kx.key"
"""The device's X25519 private key: unencrypted PKCS#8 PEM, mode 0600."""

# RFC 9180 section 7: DHKEM(X25519, HKDF-SHA256) encapsulates to a 32-byte `enc`, and the
# ChaCha20-Poly1305 tag adds 16 bytes, so nothing shorter than 48 bytes can be a bundle.
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
_ENC_LEN = 32
_TAG_LEN = 16
_BUNDLE_INFO_PREFIX = "pimesh/v1 bundle|"


# --- base64 ---------------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    """Encode bytes as RFC 4648 standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, length: int | None = None) -> bytes:
    """Decode strict base64: standard alphabet, padding required, canonical, exact length.

    Args:
        text: The base64 text.
        length: When given, the number of bytes the text must decode to.

    Returns:
        The decoded bytes.

    Raises:
        InvalidMessage: The text is not canonical padded base64 or has the wrong length.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage("not valid base64 (RFC 4648 standard, with padding)") from exc
    # Non-zero unused bits ("AB==" for b"\x00") decode but are not the one encoding of
    # those bytes; accepting them would let two strings stand for one value.
    if b64encode(data) != text:
        raise InvalidMessage("not canonical base64 (RFC 4648 section 3.5)")
    if length is not None and len(data) != length:
        raise InvalidMessage(f"base64 decodes to {len(data)} bytes, expected {length}")
    return data


def new_nonce() -> str:
    """Return a fresh message nonce: base64 of 16 random bytes (PROTOCOL.md)."""
    return b64encode(secrets.token_bytes(NONCE_LEN))


# --- public keys and fingerprints -----------------------------------------------------


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_sign_public(text: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key sent as base64 of its raw 32 bytes.

    Raises:
        InvalidMessage: The text is not base64 of 32 bytes.
    """
    raw = b64decode(text, length=KEY_LEN)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidMessage("not an Ed25519 public key") from exc


def load_kx_public(text: str) -> X25519PublicKey:
    """Parse an X25519 public key sent as base64 of its raw 32 bytes.

    Low-order points are refused here (RFC 7748 section 6.1: the shared secret would be
    all zeros), so a device announcing one is rejected instead of failing at sealing.

    Raises:
        InvalidMessage: The text is not base64 of 32 bytes, or the point has low order.
    """
    key = X25519PublicKey.from_public_bytes(b64decode(text, length=KEY_LEN))
    try:
        X25519PrivateKey.generate().exchange(key)
    except ValueError as exc:
        raise InvalidMessage("X25519 public key is a low-order point") from exc
    return key


def fingerprint(public: bytes | Ed25519PublicKey | X25519PublicKey) -> str:
    """Return a public key's fingerprint in OpenSSH's format for operators to compare.

    `"SHA256:"` followed by the unpadded standard base64 of the SHA-256 of the raw
    32-byte public key (OpenSSH hashes its wire blob instead, so the values differ from
    `ssh-keygen -l`, but they read the same way).

    Raises:
        InvalidMessage: Raw bytes that are not 32 bytes long.
    """
    raw = public if isinstance(public, bytes) else _raw_public(public)
    if len(raw) != KEY_LEN:
        raise InvalidMessage(f"a public key is {KEY_LEN} bytes, got {len(raw)}")
    return "SHA256:" + b64encode(hashlib.sha256(raw).digest()).rstrip("=")


# --- signatures -----------------------------------------------------------------------


def sign(data: bytes, key: Ed25519PrivateKey) -> str:
    """Sign bytes (canonical JSON without `sig`) and return the base64 signature."""
    return b64encode(key.sign(data))


def verify(signature_b64: str, data: bytes, public_key: Ed25519PublicKey) -> None:
    """Check a base64 Ed25519 signature over bytes.

    Raises:
        BadSignature: The signature is not base64 of 64 bytes or does not verify.
    """
    try:
        signature = b64decode(signature_b64, length=SIGNATURE_LEN)
    except InvalidMessage as exc:
        raise BadSignature(f"malformed signature: {exc.reason}") from exc
    try:
        public_key.verify(signature, data)
    except InvalidSignature as exc:
        raise BadSignature("signature does not verify with the expected key") from exc


# --- sealed bundles (RFC 9180) --------------------------------------------------------


def bundle_info(device_id: str, generation: int) -> bytes:
    """Return the HPKE `info` binding a bundle to its device and generation (PROTOCOL.md)."""
    return f"{_BUNDLE_INFO_PREFIX}{device_id}|{generation}".encode()


def seal_bundle(
    plaintext: bytes, kx_public: X25519PublicKey, *, device_id: str, generation: int
) -> str:
    """Seal a bundle to a device: base64 of single-shot HPKE base mode `enc || ct`.

    Raises:
        SealError: The device's key cannot be sealed to (a low-order point).
    """
    info = bundle_info(device_id, generation)
    try:
        return b64encode(_SUITE.encrypt(plaintext, kx_public, info=info))
    except ValueError as exc:
        raise SealError("cannot seal to this X25519 key (low-order point)") from exc


def open_bundle(
    sealed_b64: str, kx_private: X25519PrivateKey, *, device_id: str, generation: int
) -> bytes:
    """Open a bundle sealed with `seal_bundle` for this device and generation.

    Raises:
        SealError: Bad base64, too short, or not sealed to this key, id and generation
            (or altered): HPKE cannot tell these apart, by design.
    """
    try:
        sealed = b64decode(sealed_b64)
    except InvalidMessage as exc:
        raise SealError(f"sealed bundle: {exc.reason}") from exc
    if len(sealed) < _ENC_LEN + _TAG_LEN:
        raise SealError(
            f"sealed bundle is {len(sealed)} bytes, shorter than the "
            f"{_ENC_LEN + _TAG_LEN}-byte minimum (enc and tag)"
        )
    try:
        return _SUITE.decrypt(sealed, kx_private, info=bundle_info(device_id, generation))
    except (InvalidTag, ValueError) as exc:
        raise SealError(
            "sealed bundle does not open: other key, other device id or generation, or altered"
        ) from exc


# --- key files ------------------------------------------------------------------------


def _write_private_atomically(path: Path, key: Ed25519PrivateKey | X25519PrivateKey) -> None:
    """Write a PEM key with mode 0600 whatever the umask: temp file, fsync, rename, fsync dir."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # a umask can only narrow 0600; make it exact
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # POSIX needs the directory fsynced for a rename to survive a power cut.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_pem(path: Path) -> PrivateKeyTypes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: key file is missing") from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PKCS#8 PEM private key") from exc


def _wrong_type(path: Path, key: PrivateKeyTypes, expected: str) -> KeyFileError:
    return KeyFileError(f"{path}: holds a {type(key).__name__}, expected {expected}")


def _read_sign_key(path: Path) -> Ed25519PrivateKey:
    key = _read_pem(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_type(path, key, "an Ed25519 private key")
    return key


def _read_kx_key(path: Path) -> X25519PrivateKey:
    key = _read_pem(path)
    if not isinstance(key, X25519PrivateKey):
        raise _wrong_type(path, key, "an X25519 private key")
    return key


@dataclass(frozen=True)
class DeviceKeys:
    """A device's two key pairs: Ed25519 for signing, X25519 for receiving sealed bundles.

    On disk they are `sign.key` and `kx.key` in the state directory, each an
    unencrypted PKCS#8 PEM private key (so a swapped or foreign file is recognised as
    the wrong type, and `openssl pkey` can read it), mode 0600, directory mode 0700.
    """

    sign_key: Ed25519PrivateKey
    kx_key: X25519PrivateKey

    def __repr__(self) -> str:
        return (
            f"DeviceKeys(sign={fingerprint(self.sign_key.public_key())}, "
            f"kx={fingerprint(self.kx_key.public_key())})"
        )

    @classmethod
    def generate(cls) -> "DeviceKeys":
        """Create two fresh key pairs."""
        return cls(sign_key=Ed25519PrivateKey.generate(), kx_key=X25519PrivateKey.generate())

    @classmethod
    def load(cls, state_dir: Path) -> "DeviceKeys":
        """Read both keys from `state_dir`.

        Raises:
            KeyFileError: A file is missing, unreadable, corrupt or of the wrong key type;
                the reason names the file, never its content.
        """
        return cls(
            sign_key=_read_sign_key(state_dir / SIGN_KEY_FILE),
            kx_key=_read_kx_key(state_dir / KX_KEY_FILE),
        )

    @classmethod
    def load_or_create(cls, state_dir: Path) -> "DeviceKeys":
        """Load the keys in `state_dir`, creating the directory and keys on first start.

        The directory is created (or tightened) to 0700, existing key files to 0600.
        `kx.key` is written before `sign.key`, so a `kx.key` alone is an interrupted first
        start and both keys are made again; a `sign.key` alone means a key was lost after
        the device may have been pinned, which needs an operator (KeyFileError).

        Raises:
            KeyFileError: A key file is unusable, `kx.key` is missing beside `sign.key`,
                or the directory or keys cannot be written.
        """
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            state_dir.chmod(0o700)
            if (state_dir / SIGN_KEY_FILE).exists():
                for name in (SIGN_KEY_FILE, KX_KEY_FILE):
                    _tighten(state_dir / name)
                return cls.load(state_dir)
        except OSError as exc:
            raise KeyFileError(f"{state_dir}: cannot prepare key directory ({exc})") from exc
        keys = cls.generate()
        keys.save(state_dir)
        return keys

    def save(self, state_dir: Path) -> None:
        """Write both keys atomically into an existing `state_dir` (mode 0600 each).

        Raises:
            KeyFileError: A key file cannot be written.
        """
        for name, key in ((KX_KEY_FILE, self.kx_key), (SIGN_KEY_FILE, self.sign_key)):
            try:
                _write_private_atomically(state_dir / name, key)
            except OSError as exc:
                raise KeyFileError(f"{state_dir / name}: cannot write key file ({exc})") from exc

    @property
    def sign_public_b64(self) -> str:
        """The Ed25519 public key as announced: base64 of its raw 32 bytes."""
        return b64encode(_raw_public(self.sign_key.public_key()))

    @property
    def kx_public_b64(self) -> str:
        """The X25519 public key as announced: base64 of its raw 32 bytes."""
        return b64encode(_raw_public(self.kx_key.public_key()))


def _tighten(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # load() reports a missing file
        if path.stat().st_mode & 0o077:
            logger.warning("key file %s was readable by others; setting mode 0600", path)
            path.chmod(0o600)


@dataclass(frozen=True)
class ControllerKey:
    """The controller's Ed25519 key, stored as its raw 32-byte seed in a Kubernetes Secret."""

    private_key: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"ControllerKey({fingerprint(self.private_key.public_key())})"

    @classmethod
    def generate(cls) -> "ControllerKey":
        """Create a fresh controller key."""
        return cls(private_key=Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "ControllerKey":
        """Rebuild the key from its raw 32-byte seed (RFC 8032 section 5.1.5).

        Raises:
            KeyFileError: The seed is not 32 bytes long.
        """
        if len(seed) != KEY_LEN:
            raise KeyFileError(f"controller key seed is {len(seed)} bytes, expected {KEY_LEN}")
        return cls(private_key=Ed25519PrivateKey.from_private_bytes(seed))

    def seed_bytes(self) -> bytes:
        """Return the raw 32-byte seed to store in the Secret."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_b64(self) -> str:
        """The public key as published in `controller_status.keys.sign`."""
        return b64encode(_raw_public(self.private_key.public_key()))
