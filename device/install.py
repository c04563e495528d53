"""Write a bundle's contents where ztunnel expects them (PROTOCOL.md, "bundle").

The bundle carries meaning, never paths: this module alone maps each part to the seed's
layout under ROOT (`--root`, `/` on a Pi). In the order an install renames them:

    ROOT/etc/certs/root-cert.pem                  root_cert    0644
    ROOT/var/run/secrets/istio/root-cert.pem      root_cert    0644
    ROOT/etc/istio/config/mesh                    mesh_config  0644
    ROOT/var/lib/istio/ztunnel/cluster.env        cluster_env  0644
    ROOT/etc/hosts, lines between `# BEGIN pimesh` and `# END pimesh`   hosts
    ROOT/var/lib/istio/ztunnel/istio-token        token        0600
    ROOT/var/run/secrets/tokens/istio-token       symlink to the token

The token lives under /var/lib because /var/run is a tmpfs on Raspberry Pi OS
(istio/istio #27691) and ztunnel has no fallback for a lost or expired token; the seed's
path is a relative symlink, computed between the resolved directories, because on Debian
/var/run is itself a link to /run (a lexical `../../../lib/...` would then climb out of
/run) and because an absolute target would leave ROOT whenever ROOT is not `/`.

Every file is replaced atomically: a temp file in the same directory, created with
O_EXCL and its final mode (the token is never readable by others, not even briefly),
fsync, rename, fsync of the directory. A target that is a symlink is replaced itself.
An install is staged: every temp file is written and synced before the first rename, so
a full disk or an I/O error leaves every old file as it was. Where /etc/hosts cannot be
renamed over (a bind mount: EBUSY, EXDEV or EPERM) it is rewritten in place.

Why this order: a running ztunnel re-reads only the token (on every CA and xDS
request); the root certificate and mesh config are read when it starts, and the agent
restarts it after an install that changed them (`RESTART_PARTS`). Renaming the token
last means a visible new token implies every other part of its generation is already
durable, so a ztunnel restarted at any moment (by its supervisor, or a reboot after a
crash) never runs a new token with a half-installed rest. A crash before the token
rename leaves the old, still valid token (tokens rotate at half-life) and no new
install record, so the agent installs the generation again when it returns.

One installer runs at a time (the agent serialises bundles); `install` sweeps the temp
files a killed installer left behind.
"""

import contextlib
import errno
import grp
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from device.errors import InstallError
from shared.canonical import canonical_json

Owner = tuple[int, int]
"""A uid and gid to give files and directories ztunnel reads."""

Rename = Callable[[Path, Path], None]
"""`os.replace`; injectable so tests can act out a bind-mounted /etc/hosts."""

HostEntry = tuple[str, tuple[str, ...]]
"""One /etc/hosts line: an IP literal and the names it maps."""

ROOT_CERT_FILES = (Path("etc/certs/root-cert.pem"), Path("var/run/secrets/istio/root-cert.pem"))
MESH_CONFIG_FILE = Path("etc/istio/config/mesh")
CLUSTER_ENV_FILE = Path("var/lib/istio/ztunnel/cluster.env")
HOSTS_FILE = Path("etc/hosts")
TOKEN_FILE = Path("var/lib/istio/ztunnel/istio-token")
TOKEN_LINK = Path("var/run/secrets/tokens/istio-token")
RECORD_FILE = "installed.json"

PARTS = ("root_cert", "mesh_config", "cluster_env", "hosts", "token")
RESTART_PARTS = frozenset({"root_cert", "mesh_config", "hosts"})
"""Parts ztunnel reads only at start (hosts: its xDS stream stays on the old istiod
address until restarted); a token alone never restarts it (PROTOCOL.md)."""

# The directories the seed creates and chowns to istio-proxy, with their modes.
_OWNED_DIRS = (
    (Path("etc/certs"), 0o755),
    (Path("etc/istio/config"), 0o755),
    (Path("etc/istio/proxy"), 0o755),
    (Path("var/lib/istio"), 0o755),
    (Path("var/lib/istio/ztunnel"), 0o750),
    (Path("var/run/secrets"), 0o755),
    (Path("var/run/secrets/istio"), 0o755),
    (Path("var/run/secrets/tokens"), 0o755),
)
_BEGIN = b"# BEGIN pimesh"
_END = b"# END pimesh"
_RENAME_REFUSED = frozenset({errno.EBUSY, errno.EXDEV, errno.EPERM})
_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")


@dataclass(frozen=True)
class InstallSet:
    """The decoded parts of a bundle that become files; the token is left out of repr."""

    root_cert: str
    token: str = field(repr=False)
    cluster_env: str
    mesh_config: str
    hosts: tuple[HostEntry, ...] = ()


@dataclass(frozen=True)
class InstallRecord:
    """What is installed, kept in the state directory: no contents, only digests."""

    generation: int
    digests: Mapping[str, str]
    token_expires_at: str | None = None


@dataclass(frozen=True)
class _Write:
    target: Path
    data: bytes
    mode: int
    owner: Owner | None
    in_place_ok: bool = False


def istio_proxy_owner() -> Owner | None:
    """The `istio-proxy` uid and gid when that user exists and we are root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("istio-proxy")
    except KeyError:
        return None
    try:
        gid = grp.getgrnam("istio-proxy").gr_gid
    except KeyError:
        gid = user.pw_gid
    return (user.pw_uid, gid)


def install(
    root: Path, items: InstallSet, *, owner: Owner | None = None, rename: Rename = os.replace
) -> None:
    """Install `items` under `root`, all parts or (on a write failure) none.

    Args:
        root: the tree to write into (`--root`).
        items: the decoded bundle parts.
        owner: uid/gid for ztunnel's files and directories, normally
            `istio_proxy_owner()`; None leaves them owned by the caller.
        rename: `os.replace`, injectable for tests.

    Raises:
        InstallError: naming the path that could not be written.
    """
    block = render_hosts_block(items.hosts)
    _ensure_dirs(root, owner)
    writes = [
        *(_Write(root / rel, items.root_cert.encode(), 0o644, owner) for rel in ROOT_CERT_FILES),
        _Write(root / MESH_CONFIG_FILE, items.mesh_config.encode(), 0o644, owner),
        _Write(root / CLUSTER_ENV_FILE, items.cluster_env.encode(), 0o644, owner),
        _hosts_write(root / HOSTS_FILE, block),
        _Write(root / TOKEN_FILE, items.token.encode(), 0o600, owner),
    ]
    _sweep_temps([*(w.target for w in writes), root / TOKEN_LINK])
    staged = _stage_all(writes)
    _commit_all(writes, staged, rename)
    _link_token(root, owner, rename)


def remove_credentials(root: Path, *, rename: Rename = os.replace) -> None:
    """Remove the token, its symlink and the hosts block (on `Revoked`); keep the rest."""
    for path in (root / TOKEN_LINK, root / TOKEN_FILE):
        try:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except FileNotFoundError:
            continue  # the directory itself is gone: nothing to remove
        except OSError as exc:
            raise _error("remove", path, exc) from exc
    hosts = root / HOSTS_FILE
    if hosts.exists():
        write = _hosts_write(hosts, b"")
        _commit_all([write], _stage_all([write]), rename)


def write_atomic(
    path: Path, data: bytes, *, mode: int, owner: Owner | None = None, rename: Rename = os.replace
) -> None:
    """Replace `path` with `data` atomically: temp file, fsync, rename, fsync the directory.

    The parent directory must exist. A symlink at `path` is replaced, not followed.

    Raises:
        InstallError: naming `path`, never the data.
    """
    write = _Write(path, data, mode, owner)
    _commit_all([write], _stage_all([write]), rename)


def render_hosts_block(hosts: Iterable[HostEntry]) -> bytes:
    """The managed /etc/hosts block for `hosts` (empty when there are none).

    Raises:
        InstallError: an entry that is not an IP literal with host names; a name with
            spaces or newlines could otherwise forge lines outside the block.
    """
    lines = []
    for ip, names in hosts:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InstallError(f"invalid hosts entry: {ip!r} is not an IP address") from None
        if not names or not all(_HOSTNAME.fullmatch(name) for name in names):
            raise InstallError(f"invalid hosts entry for {ip}: bad or missing host names")
        lines.append(" ".join((ip, *names)).encode() + b"\n")
    if not lines:
        return b""
    return b"".join([_BEGIN + b"\n", *lines, _END + b"\n"])


def merge_hosts(existing: bytes, block: bytes) -> bytes:
    """`existing` with every pimesh block replaced by `block`, all other lines kept exactly.

    The new block takes the place of the first old one, or is appended. Stray markers
    are dropped; lines after a BEGIN without an END are kept (never delete an operator's
    lines on a guess).
    """
    kept, at = _strip_blocks(existing.splitlines(keepends=True))
    if not block:
        return b"".join(kept)
    if at is None:
        if kept and not kept[-1].endswith((b"\n", b"\r")):
            kept[-1] += b"\n"
        at = len(kept)
    return b"".join([*kept[:at], block, *kept[at:]])


def part_digests(items: InstallSet) -> dict[str, str]:
    """SHA-256 of each part as written; tokens are high-entropy, so a digest hides them."""
    data = {
        "root_cert": items.root_cert.encode(),
        "mesh_config": items.mesh_config.encode(),
        "cluster_env": items.cluster_env.encode(),
        "hosts": render_hosts_block(items.hosts),
        "token": items.token.encode(),
    }
    return {part: hashlib.sha256(value).hexdigest() for part, value in data.items()}


def changed_parts(old: Mapping[str, str] | None, new: InstallSet) -> frozenset[str]:
    """The parts whose digests differ from `old` (every part when nothing was installed)."""
    digests = part_digests(new)
    return frozenset(part for part in PARTS if old is None or old.get(part) != digests[part])


def is_intact(root: Path, digests: Mapping[str, str]) -> bool:
    """Whether the files under `root` still hold what `digests` describes.

    False after a reboot wiped the tmpfs /var/run: the agent then installs an equal
    generation again rather than only acking it.
    """
    files = {
        **dict.fromkeys(ROOT_CERT_FILES, "root_cert"),
        MESH_CONFIG_FILE: "mesh_config",
        CLUSTER_ENV_FILE: "cluster_env",
        TOKEN_FILE: "token",
    }
    try:
        current = {rel: (root / rel).read_bytes() for rel in files}
        block = _current_block((root / HOSTS_FILE).read_bytes())
        linked = (root / TOKEN_LINK).resolve(strict=True) == (root / TOKEN_FILE).resolve()
    except OSError:
        return False
    matches = [_sha(current[rel]) == digests.get(part) for rel, part in files.items()]
    return all(matches) and linked and _sha(block) == digests.get("hosts")


def write_record(state_dir: Path, record: InstallRecord) -> None:
    """Persist `record` as `state_dir/installed.json` (atomically, mode 0600)."""
    body = {"generation": record.generation, "digests": dict(record.digests)}
    if record.token_expires_at is not None:
        body["token_expires_at"] = record.token_expires_at
    write_atomic(state_dir / RECORD_FILE, canonical_json(body), mode=0o600)


def read_record(state_dir: Path) -> InstallRecord | None:
    """The record `write_record` left, or None when there is none or it is unreadable.

    An unreadable record counts as nothing installed: the next bundle is installed
    again, which is always safe.
    """
    try:
        body = json.loads((state_dir / RECORD_FILE).read_bytes())
        generation, digests = body["generation"], body["digests"]
        expires = body.get("token_expires_at")
    except (OSError, ValueError, TypeError, KeyError):
        return None
    valid_digests = isinstance(digests, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
    )
    if type(generation) is not int or not valid_digests or not isinstance(expires, str | None):
        return None
    return InstallRecord(generation=generation, digests=digests, token_expires_at=expires)


def _ensure_dirs(root: Path, owner: Owner | None) -> None:
    for rel, mode in _OWNED_DIRS:
        path = root
        for part in rel.parts:
            path /= part
            _make_dir(path, mode if path == root / rel else 0o755)
        try:
            path.chmod(mode)
            if owner is not None:
                os.chown(path, *owner)
        except OSError as exc:
            raise _error("set the owner and mode of", path, exc) from exc


def _make_dir(path: Path, mode: int) -> None:
    if path.is_dir():
        return
    try:
        path.mkdir(mode)
        path.chmod(mode)  # mkdir's mode is narrowed by the umask
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _error("create directory", path, exc) from exc


def _hosts_write(path: Path, block: bytes) -> _Write:
    try:
        existing, stat = path.read_bytes(), path.stat()
    except FileNotFoundError:
        return _Write(path, merge_hosts(b"", block), 0o644, None, in_place_ok=True)
    except OSError as exc:
        raise _error("read", path, exc) from exc
    # Keep the file's own mode and owner: /etc/hosts is not ztunnel's.
    owner = (stat.st_uid, stat.st_gid) if os.geteuid() == 0 else None
    mode = stat.st_mode & 0o7777
    return _Write(path, merge_hosts(existing, block), mode, owner, in_place_ok=True)


def _stage_all(writes: list[_Write]) -> list[Path]:
    staged: list[Path] = []
    for write in writes:
        try:
            staged.append(_stage(write.target, write.data, mode=write.mode, owner=write.owner))
        except OSError as exc:
            _discard(staged)
            raise _error("write", write.target, exc) from exc
    return staged


def _stage(target: Path, data: bytes, *, mode: int, owner: Owner | None) -> Path:
    tmp = _temp_name(target)
    # O_EXCL: never open a file (or follow a link) someone else put at the temp name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed the mode; never widens it
            if owner is not None:
                os.fchown(fd, *owner)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _commit_all(writes: list[_Write], staged: list[Path], rename: Rename) -> None:
    for index, (write, tmp) in enumerate(zip(writes, staged, strict=True)):
        try:
            _commit(tmp, write, rename)
        except OSError as exc:
            _discard(staged[index:])
            raise _error("write", write.target, exc) from exc


def _commit(tmp: Path, write: _Write, rename: Rename) -> None:
    try:
        rename(tmp, write.target)
    except OSError as exc:
        if not (write.in_place_ok and exc.errno in _RENAME_REFUSED):
            raise
        _rewrite_in_place(write.target, write.data)
        tmp.unlink()
    _fsync_dir(write.target.parent)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_token(root: Path, owner: Owner | None, rename: Rename) -> None:
    link = root / TOKEN_LINK
    target = os.path.relpath((root / TOKEN_FILE).resolve(), link.parent.resolve())
    if link.is_symlink() and str(link.readlink()) == target:
        return
    tmp = _temp_name(link)
    try:
        tmp.symlink_to(target)
        if owner is not None:
            os.lchown(tmp, *owner)
        rename(tmp, link)
        _fsync_dir(link.parent)
    except OSError as exc:
        _discard([tmp])
        raise _error("link", link, exc) from exc


def _sweep_temps(targets: Iterable[Path]) -> None:
    for target in targets:
        try:
            for tmp in target.parent.glob(f".{target.name}.pimesh-*.tmp"):
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise _error("clean up temp files of", target, exc) from exc


def _strip_blocks(lines: list[bytes]) -> tuple[list[bytes], int | None]:
    kept: list[bytes] = []
    at: int | None = None
    index = 0
    while index < len(lines):
        marker = lines[index].strip()
        end = _block_end(lines, index) if marker == _BEGIN else None
        if end is not None:
            at = len(kept) if at is None else at
            index = end
        elif marker not in (_BEGIN, _END):
            kept.append(lines[index])
        index += 1
    return kept, at


def _block_end(lines: list[bytes], begin: int) -> int | None:
    for index in range(begin + 1, len(lines)):
        if lines[index].strip() == _END:
            return index
    return None


def _current_block(existing: bytes) -> bytes:
    lines = existing.splitlines(keepends=True)
    for index, line in enumerate(lines):
        end = _block_end(lines, index) if line.strip() == _BEGIN else None
        if end is not None:
            return b"".join(lines[index : end + 1])
    return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(paths: Iterable[Path]) -> None:
    # Best effort: the error that made us discard is the one to report.
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.pimesh-{secrets.token_hex(8)}.tmp")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _error(verb: str, path: Path, exc: OSError) -> InstallError:
    # strerror only: an OSError's str() can carry a second filename, never our data.
    return InstallError(f"cannot {verb} {path}: {exc.strerror or type(exc).__name__}")
