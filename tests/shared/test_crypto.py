import base64
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import crypto
from shared.canonical import canonical_json
from shared.crypto import ControllerKey, DeviceKeys
from shared.errors import (
    BadSignature,
    InvalidMessage,
    KeyFileError,
    ReplayedMessage,
    SealError,
)
from shared.replay import ReplayGuard

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- keys -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    keys = DeviceKeys.generate()
    keys.save(tmp_path)
    loaded = DeviceKeys.load(tmp_path)
    assert loaded.sign_public_b64 == keys.sign_public_b64
    assert loaded.kx_public_b64 == keys.kx_public_b64
    assert loaded.sign_key.sign(b"x") == keys.sign_key.sign(b"x")  # Ed25519 is deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kx.key", "sign.key"], "no temp left"


def test_key_files_are_pkcs8_pem(tmp_path: Path) -> None:
    keys = DeviceKeys.generate()
    keys.save(tmp_path)
    pem = (tmp_path / "sign.key").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert isinstance(serialization.load_pem_private_key(pem, None), Ed25519PrivateKey)


@pytest.mark.usefixtures("permissive_umask")
def test_load_or_create_modes_ignore_umask(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    DeviceKeys.load_or_create(state)
    assert mode(state) == 0o700
    assert mode(state / "sign.key") == 0o600
    assert mode(state / "kx.key") == 0o600


def test_load_or_create_tightens_existing_dir_and_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    first = DeviceKeys.load_or_create(state)
    state.chmod(0o755)
    (state / "kx.key").chmod(0o644)
    again = DeviceKeys.load_or_create(state)
    assert again.kx_public_b64 == first.kx_public_b64
    assert mode(state) == 0o700
    assert mode(state / "kx.key") == 0o600


def test_load_or_create_reuses_existing_keys(tmp_path: Path) -> None:
    first = DeviceKeys.load_or_create(tmp_path / "s")
    second = DeviceKeys.load_or_create(tmp_path / "s")
    assert (second.sign_public_b64, second.kx_public_b64) == (
        first.sign_public_b64,
        first.kx_public_b64,
    )


def test_interrupted_first_start_makes_new_keys(tmp_path: Path) -> None:
    # kx.key is written first, so kx.key alone means sign.key was never written.
    keys = DeviceKeys.generate()
    keys.save(tmp_path)
    (tmp_path / "sign.key").unlink()
    fresh = DeviceKeys.load_or_create(tmp_path)
    assert fresh.kx_public_b64 != keys.kx_public_b64
    assert DeviceKeys.load(tmp_path).kx_public_b64 == fresh.kx_public_b64


def test_lost_kx_key_beside_sign_key_needs_an_operator(tmp_path: Path) -> None:
    DeviceKeys.generate().save(tmp_path)
    (tmp_path / "kx.key").unlink()
    with pytest.raises(KeyFileError, match=r"kx\.key.*missing"):
        DeviceKeys.load_or_create(tmp_path)
    assert not (tmp_path / "kx.key").exists(), "must not silently make a new identity"


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        DeviceKeys.load(tmp_path)
    assert str(tmp_path / "sign.key") in info.value.reason


def test_corrupt_file_names_it_but_not_its_content(tmp_path: Path) -> None:
    DeviceKeys.generate().save(tmp_path)
    secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWNvbnRlbnQ=\n-----END PRIVATE KEY-----\n"
    (tmp_path / "kx.key").write_bytes(secret)
    with pytest.raises(KeyFileError) as info:
        DeviceKeys.load(tmp_path)
    assert "kx.key" in info.value.reason
    assert "c2VjcmV0" not in info.value.reason
    assert "c2VjcmV0" not in str(info.value)


def test_swapped_files_are_the_wrong_type(tmp_path: Path) -> None:
    DeviceKeys.generate().save(tmp_path)
    sign_pem = (tmp_path / "sign.key").read_bytes()
    (tmp_path / "sign.key").write_bytes((tmp_path / "kx.key").read_bytes())
    (tmp_path / "kx.key").write_bytes(sign_pem)
    with pytest.raises(KeyFileError, match=r"sign\.key.*expected an Ed25519"):
        DeviceKeys.load(tmp_path)


def test_directory_in_place_of_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "sign.key").mkdir()
    with pytest.raises(KeyFileError, match=r"sign\.key: cannot read"):
        DeviceKeys.load(tmp_path)


def test_public_halves_are_raw_32_bytes() -> None:
    keys = DeviceKeys.generate()
    sign_raw = base64.b64decode(keys.sign_public_b64, validate=True)
    kx_raw = base64.b64decode(keys.kx_public_b64, validate=True)
    assert len(sign_raw) == len(kx_raw) == 32
    assert sign_raw == keys.sign_key.public_key().public_bytes_raw()
    assert kx_raw == keys.kx_key.public_key().public_bytes_raw()


def test_repr_shows_fingerprints_only() -> None:
    keys = DeviceKeys.generate()
    seed = keys.sign_key.private_bytes_raw()
    text = repr(keys)
    assert crypto.fingerprint(keys.sign_key.public_key()) in text
    assert crypto.b64encode(seed) not in text
    assert "SHA256:" in repr(ControllerKey.generate())


def test_controller_key_seed_round_trip() -> None:
    key = ControllerKey.generate()
    seed = key.seed_bytes()
    assert len(seed) == 32
    again = ControllerKey.from_seed(seed)
    assert again.public_b64 == key.public_b64
    assert crypto.load_sign_public(key.public_b64).public_bytes_raw() == (
        key.private_key.public_key().public_bytes_raw()
    )


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_controller_seed_of_wrong_length(size: int) -> None:
    with pytest.raises(KeyFileError, match=f"is {size} bytes, expected 32"):
        ControllerKey.from_seed(bytes(size))


# --- base64 and public keys -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("AA", "not valid base64"),  # padding required
        ("AA===", "not valid base64"),
        ("A A=", "not valid base64"),
        ("AAA-", "not valid base64"),  # URL-safe alphabet
        ("AAé=", "not valid base64"),
        ("AB==", "not canonical"),  # non-zero unused bits
    ],
)
def test_b64decode_is_strict(text: str, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        crypto.b64decode(text)


def test_b64decode_length() -> None:
    assert crypto.b64decode(crypto.b64encode(b"x" * 32), length=32) == b"x" * 32
    with pytest.raises(InvalidMessage, match="31 bytes, expected 32"):
        crypto.b64decode(crypto.b64encode(b"x" * 31), length=32)


def test_new_nonce_is_16_random_bytes() -> None:
    nonces = {crypto.new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(crypto.b64decode(n, length=16)) == 16 for n in nonces)


def test_public_key_parsing() -> None:
    keys = DeviceKeys.generate()
    assert isinstance(crypto.load_sign_public(keys.sign_public_b64), Ed25519PublicKey)
    assert isinstance(crypto.load_kx_public(keys.kx_public_b64), X25519PublicKey)
    with pytest.raises(InvalidMessage, match="expected 32"):
        crypto.load_sign_public(crypto.b64encode(bytes(31)))
    with pytest.raises(InvalidMessage, match="low-order"):
        crypto.load_kx_public(crypto.b64encode(bytes(32)))


def test_fingerprint_format() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes_raw()
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert crypto.fingerprint(key) == expected
    assert crypto.fingerprint(raw) == expected
    assert len(expected) == len("SHA256:") + 43
    assert "=" not in expected
    with pytest.raises(InvalidMessage):
        crypto.fingerprint(raw[:31])


# --- signatures -----------------------------------------------------------------------


def test_sign_and_verify() -> None:
    key = Ed25519PrivateKey.generate()
    signature = crypto.sign(b"payload", key)
    assert len(crypto.b64decode(signature)) == 64
    crypto.verify(signature, b"payload", key.public_key())


def test_verify_rejects_tampered_data_and_other_key() -> None:
    key = Ed25519PrivateKey.generate()
    signature = crypto.sign(b"payload", key)
    with pytest.raises(BadSignature, match="does not verify"):
        crypto.verify(signature, b"payloaD", key.public_key())
    with pytest.raises(BadSignature, match="does not verify"):
        crypto.verify(signature, b"payload", Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("bad", ["", "not base64!", crypto.b64encode(bytes(63)), "AA"])
def test_verify_rejects_malformed_signatures(bad: str) -> None:
    with pytest.raises(BadSignature, match="malformed signature"):
        crypto.verify(bad, b"payload", Ed25519PrivateKey.generate().public_key())


# --- third-party interop (written from PROTOCOL.md only, cryptography directly) ---------

THIRD_PARTY_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)


def third_party_canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def third_party_info(device_id: str, generation: int) -> bytes:
    return ("pimesh/v1 bundle|" + device_id + "|" + str(generation)).encode("utf-8")


def test_third_party_seal_opens_with_open_bundle() -> None:
    keys = DeviceKeys.generate()
    device_pub = X25519PublicKey.from_public_bytes(base64.b64decode(keys.kx_public_b64))
    plaintext = json.dumps({"generation": 3, "token": "ünïcode"}).encode()
    sealed = base64.b64encode(
        THIRD_PARTY_SUITE.encrypt(plaintext, device_pub, info=third_party_info("pi-kitchen", 3))
    ).decode()
    opened = crypto.open_bundle(sealed, keys.kx_key, device_id="pi-kitchen", generation=3)
    assert opened == plaintext


def test_our_seal_opens_with_third_party_decrypt() -> None:
    device_key = X25519PrivateKey.generate()
    announced = base64.b64encode(device_key.public_key().public_bytes_raw()).decode()
    sealed = crypto.seal_bundle(
        b'{"generation":7}', crypto.load_kx_public(announced), device_id="pi-a", generation=7
    )
    raw = base64.b64decode(sealed, validate=True)
    assert len(raw) == 32 + len(b'{"generation":7}') + 16  # enc || ct
    assert THIRD_PARTY_SUITE.decrypt(raw, device_key, info=third_party_info("pi-a", 7)) == (
        b'{"generation":7}'
    )


def test_third_party_signature_verifies_with_verify() -> None:
    device_key = Ed25519PrivateKey.generate()
    message: dict[str, Any] = {
        "v": 1,
        "kind": "announce",
        "device_id": "pi-kitchen",
        "ts": "2026-11-26T10:00:00Z",
        "nonce": base64.b64encode(os.urandom(16)).decode(),
        "hostname": "pi-küche",
        "labels": {"floor": "1"},
        "keys": {"sign": base64.b64encode(device_key.public_key().public_bytes_raw()).decode()},
    }
    message["sig"] = base64.b64encode(device_key.sign(third_party_canonical(message))).decode()
    unsigned = {k: v for k, v in message.items() if k != "sig"}
    public = crypto.load_sign_public(message["keys"]["sign"])
    crypto.verify(message["sig"], canonical_json(unsigned), public)


def test_our_signature_verifies_with_third_party() -> None:
    controller = ControllerKey.generate()
    message: dict[str, Any] = {"v": 1, "kind": "enrollment", "device_id": "pi-a", "reason": "→"}
    message["sig"] = crypto.sign(canonical_json(message), controller.private_key)
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(controller.public_b64))
    unsigned = {k: v for k, v in message.items() if k != "sig"}
    public.verify(base64.b64decode(message["sig"]), third_party_canonical(unsigned))


# --- HPKE negatives -------------------------------------------------------------------


@pytest.fixture
def sealed() -> tuple[str, X25519PrivateKey]:
    key = X25519PrivateKey.generate()
    return crypto.seal_bundle(b"bundle", key.public_key(), device_id="pi-a", generation=2), key


def test_open_bundle_round_trip(sealed: tuple[str, X25519PrivateKey]) -> None:
    text, key = sealed
    assert crypto.open_bundle(text, key, device_id="pi-a", generation=2) == b"bundle"


@pytest.mark.parametrize(("device_id", "generation"), [("pi-b", 2), ("pi-a", 3), ("pi-a", 1)])
def test_open_bundle_other_info(
    sealed: tuple[str, X25519PrivateKey], device_id: str, generation: int
) -> None:
    text, key = sealed
    with pytest.raises(SealError, match="does not open"):
        crypto.open_bundle(text, key, device_id=device_id, generation=generation)


def test_open_bundle_other_key(sealed: tuple[str, X25519PrivateKey]) -> None:
    text, _ = sealed
    with pytest.raises(SealError, match="does not open"):
        crypto.open_bundle(text, X25519PrivateKey.generate(), device_id="pi-a", generation=2)


@pytest.mark.parametrize("index", [0, 31, 32, -1])
def test_open_bundle_tampered(sealed: tuple[str, X25519PrivateKey], index: int) -> None:
    text, key = sealed
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    with pytest.raises(SealError, match="does not open"):
        crypto.open_bundle(crypto.b64encode(bytes(raw)), key, device_id="pi-a", generation=2)


def test_open_bundle_truncated(sealed: tuple[str, X25519PrivateKey]) -> None:
    text, key = sealed
    raw = base64.b64decode(text)
    with pytest.raises(SealError, match="does not open"):
        crypto.open_bundle(crypto.b64encode(raw[:-1]), key, device_id="pi-a", generation=2)
    with pytest.raises(SealError, match="shorter than the 48-byte minimum"):
        crypto.open_bundle(crypto.b64encode(raw[:47]), key, device_id="pi-a", generation=2)


def test_open_bundle_bad_base64(sealed: tuple[str, X25519PrivateKey]) -> None:
    _, key = sealed
    with pytest.raises(SealError, match="base64"):
        crypto.open_bundle("!!!", key, device_id="pi-a", generation=2)


def test_seal_to_low_order_key() -> None:
    with pytest.raises(SealError, match="low-order"):
        crypto.seal_bundle(
            b"x", X25519PublicKey.from_public_bytes(bytes(32)), device_id="a", generation=1
        )


def test_bundle_info_bytes() -> None:
    assert crypto.bundle_info("pi-kitchen", 12) == b"pimesh/v1 bundle|pi-kitchen|12"


# --- replay window --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def guard(**kwargs: Any) -> tuple[ReplayGuard, FakeClock]:
    clock = FakeClock()
    return ReplayGuard(clock=clock, **kwargs), clock


@pytest.mark.parametrize("direction", [1, -1])
def test_skew_boundary(direction: int) -> None:
    g, _ = guard()
    g.check("pi-a", ts=T0 + timedelta(seconds=300 * direction), nonce="n1")
    with pytest.raises(ReplayedMessage) as info:
        g.check("pi-a", ts=T0 + timedelta(seconds=301 * direction), nonce="n2")
    where = "ahead of" if direction > 0 else "behind"
    assert info.value.reason == (
        f"timestamp {(T0 + timedelta(seconds=301 * direction)).isoformat()[:19]}Z is 301 s "
        f"{where} the controller's clock (allowed ±300 s)"
    )
    assert len(g) == 1, "a rejected message is not recorded"


def test_duplicate_nonce_rejected() -> None:
    g, clock = guard()
    g.check("pi-a", ts=T0, nonce="n")
    clock.advance(10)
    with pytest.raises(ReplayedMessage, match="nonce already seen"):
        g.check("pi-a", ts=clock.now, nonce="n")


def test_nonce_allowed_again_after_ttl() -> None:
    g, clock = guard()
    g.check("pi-a", ts=T0, nonce="n")
    clock.advance(600)
    with pytest.raises(ReplayedMessage, match="nonce already seen"):
        g.check("pi-a", ts=clock.now, nonce="n")
    clock.advance(1)
    g.check("pi-a", ts=clock.now, nonce="n")
    assert len(g) == 1, "the expired entry was replaced, not added beside it"


def test_nonce_outlives_a_future_timestamp() -> None:
    # A message 300 s ahead is still inside the clock window 600 s later: its nonce must
    # still be remembered then, or the same message could be replayed.
    g, clock = guard(nonce_ttl_s=60)
    future = T0 + timedelta(seconds=300)
    g.check("pi-a", ts=future, nonce="n")
    clock.advance(600)
    with pytest.raises(ReplayedMessage, match="nonce already seen"):
        g.check("pi-a", ts=future, nonce="n")


def test_older_than_newest_accepted_rejected() -> None:
    g, _ = guard()
    newest = T0 - timedelta(seconds=5)
    g.check("pi-a", ts=newest, nonce="same-second", newest_accepted=newest)
    with pytest.raises(ReplayedMessage, match="older than the newest accepted message"):
        g.check("pi-a", ts=newest - timedelta(seconds=1), nonce="n2", newest_accepted=newest)


def test_per_device_isolation() -> None:
    g, _ = guard()
    g.check("pi-a", ts=T0, nonce="n")
    g.check("pi-b", ts=T0, nonce="n")
    with pytest.raises(ReplayedMessage):
        g.check("pi-b", ts=T0, nonce="n")


def test_per_device_cap_fails_closed_and_spares_others() -> None:
    g, clock = guard(max_nonces_per_device=3)
    for i in range(3):
        g.check("pi-a", ts=T0, nonce=f"n{i}")
    with pytest.raises(ReplayedMessage, match="more than 3 messages from this device"):
        g.check("pi-a", ts=T0, nonce="n3")
    g.check("pi-b", ts=T0, nonce="n0")
    with pytest.raises(ReplayedMessage, match="nonce already seen"):
        g.check("pi-a", ts=T0, nonce="n0")  # nothing was evicted to make room
    clock.advance(601)
    g.check("pi-a", ts=clock.now, nonce="n3")


def test_total_cap_evicts_expired_then_fails_closed() -> None:
    g, clock = guard(max_nonces=2)
    g.check("pi-a", ts=T0, nonce="n")
    clock.advance(400)
    g.check("pi-b", ts=clock.now, nonce="n")
    with pytest.raises(ReplayedMessage, match=r"replay cache full \(2 nonces\)"):
        g.check("pi-c", ts=clock.now, nonce="n")
    clock.advance(201)  # pi-a's nonce has expired, pi-b's has not
    g.check("pi-c", ts=clock.now, nonce="n")
    assert len(g) == 2


def test_naive_timestamp_is_invalid() -> None:
    g, _ = guard()
    with pytest.raises(InvalidMessage, match="no time zone"):
        g.check("pi-a", ts=T0.replace(tzinfo=None), nonce="n")


def test_default_clock_is_aware_utc() -> None:
    ReplayGuard().check("pi-a", ts=datetime.now(UTC), nonce="n")


def test_concurrent_checks_accept_each_nonce_once() -> None:
    g, _ = guard()
    accepted: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(timeout=5)
        for i in range(200):
            try:
                g.check("pi-a", ts=T0, nonce=f"n{i}")
            except ReplayedMessage:
                continue
            accepted.append(f"n{i}")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(accepted) == sorted(f"n{i}" for i in range(200))
    assert len(g) == 200


# --- fuzzing: only our error types come out -------------------------------------------

B64_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
ANY_TEXT = st.one_of(st.text(), B64_TEXT, st.binary().map(crypto.b64encode))
FUZZ_SIGN_KEY = Ed25519PrivateKey.generate()
FUZZ_KX_KEY = X25519PrivateKey.generate()


@settings(max_examples=300)
@given(text=ANY_TEXT, length=st.one_of(st.none(), st.integers(0, 80)))
def test_fuzz_b64decode(text: str, length: int | None) -> None:
    try:
        data = crypto.b64decode(text, length=length)
    except InvalidMessage:
        return
    assert crypto.b64encode(data) == text
    assert length is None or len(data) == length


@settings(max_examples=300)
@given(signature=ANY_TEXT, data=st.binary())
def test_fuzz_verify(signature: str, data: bytes) -> None:
    with pytest.raises(BadSignature):
        crypto.verify(signature, data, FUZZ_SIGN_KEY.public_key())


@settings(max_examples=300)
@given(sealed=ANY_TEXT, device_id=st.text(), generation=st.integers())
def test_fuzz_open_bundle(sealed: str, device_id: str, generation: int) -> None:
    with pytest.raises(SealError):
        crypto.open_bundle(sealed, FUZZ_KX_KEY, device_id=device_id, generation=generation)


@settings(max_examples=200)
@given(text=ANY_TEXT)
def test_fuzz_public_keys(text: str) -> None:
    for load in (crypto.load_sign_public, crypto.load_kx_public):
        try:
            load(text)
        except InvalidMessage:
            continue


def test_open_bundle_with_unencodable_device_id(sealed: tuple[str, X25519PrivateKey]) -> None:
    text, key = sealed
    with pytest.raises(SealError):
        crypto.open_bundle(text, key, device_id="pi-\ud800", generation=2)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(KeyFileError, match="state: cannot prepare key directory"):
        DeviceKeys.load_or_create(tmp_path / "state")


def test_save_into_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"kx\.key: cannot write key file"):
        DeviceKeys.generate().save(tmp_path / "absent")
