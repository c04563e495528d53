import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.errors import DeviceError, InstallError
from device.install import (
    CLUSTER_ENV_FILE,
    HOSTS_FILE,
    MESH_CONFIG_FILE,
    PARTS,
    RECORD_FILE,
    RESTART_PARTS,
    ROOT_CERT_FILES,
    TOKEN_FILE,
    TOKEN_LINK,
    InstallRecord,
    InstallSet,
    changed_parts,
    install,
    is_intact,
    istio_proxy_owner,
    merge_hosts,
    part_digests,
    read_record,
    remove_credentials,
    render_hosts_block,
    write_atomic,
    write_record,
)
from shared.errors import PimeshError

REPO = Path(__file__).resolve().parents[2]

OPERATOR_HOSTS = (
    b"127.0.0.1\tlocalhost\n"
    b"# The following lines are desirable for IPv6 capable hosts\n"
    b"::1     localhost ip6-localhost ip6-loopback\n"
    b"\n"
    b"  # indented comment with trailing spaces   \n"
    b"127.0.1.1\tpi-kitchen"
)


def make_set(tag: str, *, size: int = 0, ip: str = "203.0.113.10") -> InstallSet:
    pad = tag * size
    return InstallSet(
        root_cert=f"-----BEGIN CERTIFICATE-----\n{tag}{pad}\n-----END CERTIFICATE-----\n",
        token=f"eyJhbGciOi.{tag}{pad}.sig",
        cluster_env=f"CANONICAL_SERVICE='led-pi'\nTAG='{tag}{pad}'\n",
        mesh_config=f"defaultConfig:\n  discoveryAddress: istiod-{tag}:15012\n# {pad}\n",
        hosts=((ip, ("istiod.istio-system.svc", f"istiod-{tag}")),),
    )


def file_parts(items: InstallSet) -> dict[Path, bytes]:
    return {
        **dict.fromkeys(ROOT_CERT_FILES, items.root_cert.encode()),
        MESH_CONFIG_FILE: items.mesh_config.encode(),
        CLUSTER_ENV_FILE: items.cluster_env.encode(),
        TOKEN_FILE: items.token.encode(),
    }


def snapshot(root: Path) -> dict[Path, bytes]:
    paths = [*ROOT_CERT_FILES, MESH_CONFIG_FILE, CLUSTER_ENV_FILE, TOKEN_FILE, HOSTS_FILE]
    return {rel: (root / rel).read_bytes() for rel in paths}


def temps(root: Path) -> list[Path]:
    return sorted(root.rglob("*.pimesh-*.tmp"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / HOSTS_FILE).write_bytes(OPERATOR_HOSTS)
    return tree


# --- layout, modes, contents -------------------------------------------------------


def test_layout_contents_and_modes(root: Path) -> None:
    items = make_set("a")
    install(root, items)

    for rel, data in file_parts(items).items():
        assert (root / rel).read_bytes() == data
        assert mode(root / rel) == (0o600 if rel == TOKEN_FILE else 0o644)
    assert mode(root / "var/lib/istio/ztunnel") == 0o750
    assert mode(root / "etc/istio/proxy") == 0o755
    hosts = (root / HOSTS_FILE).read_bytes()
    assert hosts == OPERATOR_HOSTS + (
        b"\n# BEGIN pimesh\n203.0.113.10 istiod.istio-system.svc istiod-a\n# END pimesh\n"
    )
    assert temps(root) == []


def test_token_symlink_is_relative_and_resolves_under_root(root: Path) -> None:
    install(root, make_set("a"))
    link = root / TOKEN_LINK
    assert link.is_symlink()
    assert not link.readlink().is_absolute()
    assert link.resolve(strict=True) == (root / TOKEN_FILE).resolve()
    assert link.read_bytes() == make_set("a").token.encode()


@pytest.mark.parametrize("absolute", [False, True])
def test_token_symlink_resolves_when_var_run_links_to_run(root: Path, absolute: bool) -> None:
    # Debian and Raspberry Pi OS: /var/run -> /run. A lexical ../../../lib would climb
    # out of /run instead of /var.
    (root / "run").mkdir()
    (root / "var").mkdir()
    (root / "var/run").symlink_to(root / "run" if absolute else Path("../run"))
    install(root, make_set("a"))
    link = root / TOKEN_LINK
    assert (root / "run/secrets/tokens/istio-token").is_symlink()
    assert link.read_bytes() == make_set("a").token.encode()
    assert link.resolve(strict=True) == (root / TOKEN_FILE).resolve()


def test_modes_are_exact_whatever_the_umask(root: Path) -> None:
    seen: dict[Path, int] = {}

    def spying_rename(src: Path, dst: Path) -> None:
        if not src.is_symlink():
            seen[dst] = mode(src)
        src.replace(dst)

    with umask(0o077):
        install(root, make_set("a"), rename=spying_rename)
    assert mode(root / MESH_CONFIG_FILE) == 0o644
    assert mode(root / "etc/certs") == 0o755
    with umask(0):
        install(root, make_set("b"), rename=spying_rename)
    # Checked on the temp file before it became visible, under a permissive umask.
    assert seen[root / TOKEN_FILE] == 0o600
    assert mode(root / TOKEN_FILE) == 0o600


def test_creates_missing_hosts_file(tmp_path: Path) -> None:
    install(tmp_path, make_set("a"))
    assert (tmp_path / HOSTS_FILE).read_bytes() == render_hosts_block(make_set("a").hosts)
    assert mode(tmp_path / HOSTS_FILE) == 0o644


def test_hosts_keeps_its_own_mode_and_owner(root: Path) -> None:
    hosts = root / HOSTS_FILE
    hosts.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(hosts, 4242, 4343)
    install(root, make_set("a"), owner=(1111, 1111) if os.geteuid() == 0 else None)
    assert mode(hosts) == 0o640
    if os.geteuid() == 0:
        assert (hosts.stat().st_uid, hosts.stat().st_gid) == (4242, 4343)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_applies_to_ztunnel_files_and_dirs(root: Path) -> None:
    install(root, make_set("a"), owner=(4242, 4343))
    owned = [
        *file_parts(make_set("a")),
        Path("var/lib/istio"),
        Path("var/lib/istio/ztunnel"),
        Path("var/run/secrets/tokens"),
        Path("etc/istio/config"),
        Path("etc/certs"),
    ]
    for rel in owned:
        info = (root / rel).stat()
        assert (info.st_uid, info.st_gid) == (4242, 4343), rel
    assert (root / TOKEN_LINK).lstat().st_uid == 4242
    assert (root / "etc").stat().st_uid == 0


def test_istio_proxy_owner_matches_the_user_database() -> None:
    import pwd

    owner = istio_proxy_owner()
    try:
        user = pwd.getpwnam("istio-proxy")
    except KeyError:
        assert owner is None
    else:
        expected = (user.pw_uid, owner[1] if owner else -1) if os.geteuid() == 0 else None
        assert owner == expected


def test_repr_hides_the_token() -> None:
    items = make_set("a")
    assert items.token not in repr(items)


# --- reinstall and the hosts block ---------------------------------------------------


def test_second_install_replaces_everything_with_one_block(root: Path) -> None:
    install(root, make_set("a"))
    install(root, make_set("b", ip="198.51.100.7"))

    for rel, data in file_parts(make_set("b")).items():
        assert (root / rel).read_bytes() == data
    hosts = (root / HOSTS_FILE).read_bytes()
    assert hosts.count(b"# BEGIN pimesh") == 1
    assert hosts.count(b"# END pimesh") == 1
    assert b"203.0.113.10" not in hosts
    assert hosts.startswith(OPERATOR_HOSTS + b"\n")
    assert temps(root) == []


def test_block_is_replaced_where_it_stands(root: Path) -> None:
    before = b"127.0.0.1 localhost\n"
    after = b"# operator line after\n10.0.0.1 nas"
    old = b"# BEGIN pimesh\n192.0.2.1 old\n# END pimesh\n"
    (root / HOSTS_FILE).write_bytes(before + old + after)
    install(root, make_set("a"))
    assert (root / HOSTS_FILE).read_bytes() == (
        before + render_hosts_block(make_set("a").hosts) + after
    )


def test_merge_collapses_duplicate_blocks_and_drops_stray_markers() -> None:
    existing = (
        b"a\n# BEGIN pimesh\nold1\n# END pimesh\nb\r\n"
        b"# BEGIN pimesh\nold2\n# END pimesh\n# END pimesh\nc\n"
    )
    block = b"# BEGIN pimesh\n1.2.3.4 x\n# END pimesh\n"
    assert merge_hosts(existing, block) == b"a\n" + block + b"b\r\nc\n"


def test_merge_keeps_lines_after_an_unterminated_begin() -> None:
    existing = b"a\n# BEGIN pimesh\noperator line\n"
    assert merge_hosts(existing, b"") == b"a\noperator line\n"


def test_empty_hosts_list_removes_the_block(root: Path) -> None:
    install(root, make_set("a"))
    install(root, InstallSet(root_cert="c", token="t", cluster_env="e", mesh_config="m"))
    assert (root / HOSTS_FILE).read_bytes() == OPERATOR_HOSTS + b"\n"


operator_line = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
operator_file = (
    st.lists(operator_line, max_size=8).map(b"\n".join).filter(lambda data: b"pimesh" not in data)
)


@given(existing=operator_file, trailing=st.booleans())
def test_merge_then_remove_restores_operator_lines(existing: bytes, trailing: bool) -> None:
    if trailing and existing:
        existing += b"\n"
    block_a = render_hosts_block([("192.0.2.1", ("a",))])
    block_b = render_hosts_block([("2001:db8::1", ("b", "c"))])
    merged = merge_hosts(merge_hosts(existing, block_a), block_b)
    assert merged.count(b"# BEGIN pimesh") == 1
    assert merged.startswith(existing)
    assert merged.endswith(block_b)
    restored = merge_hosts(merged, b"")
    needs_newline = existing and not existing.endswith((b"\n", b"\r"))
    assert restored == (existing + b"\n" if needs_newline else existing)


@pytest.mark.parametrize(
    "entry",
    [
        ("not-an-ip", ("istiod",)),
        ("203.0.113.10", ()),
        ("203.0.113.10", ("istiod\n# END pimesh\n6.6.6.6 evil",)),
        ("203.0.113.10", ("two words",)),
    ],
)
def test_invalid_hosts_entry_is_refused_before_writing(
    tmp_path: Path, entry: tuple[str, tuple[str, ...]]
) -> None:
    items = InstallSet(root_cert="c", token="t", cluster_env="e", mesh_config="m", hosts=(entry,))
    with pytest.raises(InstallError, match="invalid hosts entry"):
        install(tmp_path, items)
    assert list(tmp_path.iterdir()) == []


# --- /etc/hosts on a bind mount ------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV, errno.EPERM])
def test_hosts_rewritten_in_place_when_it_cannot_be_renamed_over(root: Path, code: int) -> None:
    hosts = root / HOSTS_FILE

    def bind_mounted(src: Path, dst: Path) -> None:
        if dst == hosts:
            raise OSError(code, os.strerror(code))
        src.replace(dst)

    install(root, make_set("a"))  # a longer file first, so truncation is exercised
    inode = hosts.stat().st_ino
    install(root, InstallSet(root_cert="c", token="t", cluster_env="e", mesh_config="m"),
            rename=bind_mounted)  # fmt: skip
    assert hosts.stat().st_ino == inode
    assert hosts.read_bytes() == OPERATOR_HOSTS + b"\n"
    install(root, make_set("b"), rename=bind_mounted)
    assert hosts.stat().st_ino == inode
    assert hosts.read_bytes() == OPERATOR_HOSTS + b"\n" + render_hosts_block(make_set("b").hosts)
    assert (root / TOKEN_FILE).read_bytes() == make_set("b").token.encode()
    assert temps(root) == []


def test_other_rename_failures_of_hosts_are_errors(root: Path) -> None:
    hosts = root / HOSTS_FILE

    def failing(src: Path, dst: Path) -> None:
        if dst == hosts:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        src.replace(dst)

    install(root, make_set("a"))
    with pytest.raises(InstallError, match=f"cannot write {hosts}: Input/output error"):
        install(root, make_set("b"), rename=failing)
    # The token is renamed after the hosts block: the old one is still in place.
    assert (root / TOKEN_FILE).read_bytes() == make_set("a").token.encode()
    assert temps(root) == []


# --- failures --------------------------------------------------------------------------

DISK_FULL_CHILD = """
import resource, signal, sys
from pathlib import Path
from device.errors import InstallError
from device.install import InstallSet, install
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
root, size = Path(sys.argv[1]), int(sys.argv[2])
items = InstallSet(root_cert="new cert", token="new-token-secret", cluster_env="new env",
                   mesh_config="m" * size, hosts=(("192.0.2.9", ("new",)),))
try:
    install(root, items)
except InstallError as exc:
    print(exc.reason)
    sys.exit(3)
"""


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_write_failure_while_staging_leaves_every_old_file(root: Path) -> None:
    # RLIMIT_FSIZE binds root too: the mesh config's temp file fails with EFBIG after
    # the root certificates were already staged, like a disk that fills up mid-install.
    install(root, make_set("a"))
    before = snapshot(root)
    result = run_child(DISK_FULL_CHILD, str(root), str(200_000))
    assert result.returncode == 3, result.stderr
    reason = result.stdout.strip()
    assert reason == f"cannot write {root / MESH_CONFIG_FILE}: File too large"
    assert "new-token-secret" not in result.stdout + result.stderr
    assert snapshot(root) == before
    assert temps(root) == []
    # The same child with a small file installs everything.
    assert run_child(DISK_FULL_CHILD, str(root), "10").returncode == 0
    assert (root / TOKEN_FILE).read_bytes() == b"new-token-secret"


def test_rename_failure_names_the_path_and_cleans_up(root: Path) -> None:
    install(root, make_set("a"))
    mesh = root / MESH_CONFIG_FILE
    mesh.unlink()
    mesh.mkdir()
    with pytest.raises(InstallError) as caught:
        install(root, make_set("b"))
    assert caught.value.reason == f"cannot write {mesh}: Is a directory"
    assert make_set("b").token not in str(caught.value)
    assert isinstance(caught.value, DeviceError)
    assert isinstance(caught.value, PimeshError)
    # Parts renamed before the failure are new, each complete; the token is old.
    assert (root / ROOT_CERT_FILES[0]).read_bytes() == make_set("b").root_cert.encode()
    assert (root / TOKEN_FILE).read_bytes() == make_set("a").token.encode()
    assert (root / CLUSTER_ENV_FILE).read_bytes() == make_set("a").cluster_env.encode()
    assert temps(root) == []


def test_root_that_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.write_bytes(b"not a directory")
    with pytest.raises(InstallError) as caught:
        install(root, make_set("a"))
    assert caught.value.reason == f"cannot create directory {root / 'etc'}: Not a directory"


def test_missing_root_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"cannot create directory .*/missing/etc: No such"):
        install(tmp_path / "missing", make_set("a"))


def test_stale_temp_files_are_swept(root: Path) -> None:
    install(root, make_set("a"))
    stale = root / "etc/istio/config/.mesh.pimesh-0123456789abcdef.tmp"
    stale.write_bytes(b"half")
    unrelated = root / "etc/istio/config/.mesh.keep"
    unrelated.write_bytes(b"keep")
    install(root, make_set("b"))
    assert not stale.exists()
    assert unrelated.read_bytes() == b"keep"


CRASH_CHILD = """
import itertools, json, os, sys, time
from pathlib import Path
from device.install import InstallSet, install
real_write = os.write
def slow_write(fd, data):  # small chunks, so kills land in the middle of writes
    time.sleep(0.0002)
    return real_write(fd, bytes(data[:8192]))
os.write = slow_write
root = Path(sys.argv[1])
sets = [InstallSet(**{**s, "hosts": tuple((ip, tuple(n)) for ip, n in s["hosts"])})
        for s in json.loads(Path(sys.argv[2]).read_text())]
print("ready", flush=True)
for items in itertools.cycle(sets):
    install(root, items)
"""


@pytest.mark.timeout(60)
def test_sigkill_at_any_moment_leaves_old_or_new_never_partial(root: Path) -> None:
    sets = [make_set("a", size=60_000), make_set("b", size=90_000, ip="198.51.100.7")]
    install(root, sets[0])
    allowed: dict[Path, set[bytes]] = {rel: set() for rel in snapshot(root)}
    for items in sets:
        for rel, data in file_parts(items).items():
            allowed[rel].add(data)
        allowed[HOSTS_FILE].add(OPERATOR_HOSTS + b"\n" + render_hosts_block(items.hosts))
    payload = root.parent / "sets.json"
    payload.write_text(
        json.dumps(
            [
                {
                    "root_cert": s.root_cert,
                    "token": s.token,
                    "cluster_env": s.cluster_env,
                    "mesh_config": s.mesh_config,
                    "hosts": s.hosts,
                }
                for s in sets
            ]
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    rng = random.Random(2026)
    for _ in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(root), str(payload)],
            env=env,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        try:
            child.wait(timeout=rng.uniform(0.0, 0.08))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        child.stdout.close()
        for rel, data in snapshot(root).items():
            assert data in allowed[rel], f"{rel} is partial after SIGKILL"
        assert (root / TOKEN_LINK).read_bytes() in allowed[TOKEN_FILE]
    install(root, sets[1])
    assert temps(root) == []
    assert is_intact(root, part_digests(sets[1]))


# --- revoke ------------------------------------------------------------------------------


def test_remove_credentials_keeps_everything_else(root: Path) -> None:
    items = make_set("a")
    install(root, items)
    remove_credentials(root)
    assert not (root / TOKEN_FILE).exists()
    assert not (root / TOKEN_LINK).is_symlink()
    assert (root / HOSTS_FILE).read_bytes() == OPERATOR_HOSTS + b"\n"
    for rel in (*ROOT_CERT_FILES, MESH_CONFIG_FILE, CLUSTER_ENV_FILE):
        assert (root / rel).read_bytes() == file_parts(items)[rel]
    remove_credentials(root)  # idempotent
    assert temps(root) == []


def test_remove_credentials_on_an_empty_root(tmp_path: Path) -> None:
    remove_credentials(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_remove_credentials_on_a_bind_mounted_hosts(root: Path) -> None:
    install(root, make_set("a"))
    hosts = root / HOSTS_FILE
    inode = hosts.stat().st_ino

    def bind_mounted(src: Path, dst: Path) -> None:
        if dst == hosts:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        src.replace(dst)

    remove_credentials(root, rename=bind_mounted)
    assert hosts.stat().st_ino == inode
    assert hosts.read_bytes() == OPERATOR_HOSTS + b"\n"


# --- write_atomic --------------------------------------------------------------------------


def test_write_atomic_replaces_a_symlink_itself(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    path = tmp_path / "key"
    path.symlink_to(elsewhere)
    write_atomic(path, b"secret", mode=0o600)
    assert not path.is_symlink()
    assert path.read_bytes() == b"secret"
    assert mode(path) == 0o600
    assert elsewhere.read_bytes() == b"untouched"


def test_write_atomic_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "key"
    with pytest.raises(InstallError, match=f"cannot write {path}: No such file or directory"):
        write_atomic(path, b"secret", mode=0o600)


# --- records and change detection --------------------------------------------------------------


def test_record_round_trip(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    record = InstallRecord(
        generation=3,
        digests=part_digests(make_set("a")),
        token_expires_at="2026-11-26T11:00:00Z",
    )
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record
    assert mode(tmp_path / RECORD_FILE) == 0o600
    assert make_set("a").token not in (tmp_path / RECORD_FILE).read_text()
    write_record(tmp_path, InstallRecord(generation=4, digests={}))
    assert read_record(tmp_path) == InstallRecord(generation=4, digests={})


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"generation": "3", "digests": {}}',
        b'{"generation": 3, "digests": {"token": 1}}',
        b'{"generation": 3, "digests": {}, "token_expires_at": 5}',
        b'{"generation": true, "digests": {}}',
    ],
)
def test_unreadable_record_counts_as_none(tmp_path: Path, body: bytes) -> None:
    (tmp_path / RECORD_FILE).write_bytes(body)
    assert read_record(tmp_path) is None


def test_changed_parts() -> None:
    a = make_set("a")
    assert changed_parts(None, a) == frozenset(PARTS)
    assert changed_parts(part_digests(a), a) == frozenset()
    new_token = InstallSet(
        root_cert=a.root_cert,
        token="rotated",
        cluster_env=a.cluster_env,
        mesh_config=a.mesh_config,
        hosts=a.hosts,
    )
    assert changed_parts(part_digests(a), new_token) == {"token"}
    assert not changed_parts(part_digests(a), new_token) & RESTART_PARTS
    assert changed_parts(part_digests(a), make_set("b")) == frozenset(PARTS)
    assert {"root_cert", "mesh_config"} <= RESTART_PARTS


def test_is_intact_notices_a_wiped_tmpfs(root: Path) -> None:
    items = make_set("a")
    install(root, items)
    digests = part_digests(items)
    assert is_intact(root, digests)
    assert not is_intact(root, part_digests(make_set("b")))
    # A reboot empties /var/run: the root certificate copy and the token link go.
    for path in sorted((root / "var/run").rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    assert not is_intact(root, digests)
    install(root, items)
    assert is_intact(root, digests)
    (root / HOSTS_FILE).write_bytes(OPERATOR_HOSTS)
    assert not is_intact(root, digests)
