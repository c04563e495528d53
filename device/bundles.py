"""What the agent does with a bundle (PROTOCOL.md, "What the agent does with a bundle").

    lower generation than installed   ignored
    equal generation                  acked again without reinstalling, unless the files
                                      are no longer intact (a reboot emptied the tmpfs
                                      /var/run): then reinstalled
    higher generation                 opened, installed, acked; ztunnel restarted only
                                      when its environment, root cert, mesh config or
                                      hosts changed, never for a new token alone

Anything that cannot be opened or installed is acked `failed` with the reason and leaves
the installed files as they were. The signature was checked by the caller.
"""

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from device.errors import InstallError
from device.install import (
    RESTART_PARTS,
    TOKEN_FILE,
    InstallRecord,
    InstallSet,
    changed_parts,
    install,
    is_intact,
    istio_proxy_owner,
    part_digests,
    read_record,
    remove_credentials,
    write_record,
)
from device.settings import AgentSettings
from device.ztunnel import ZtunnelSupervisor
from shared.codec import decode_bundle_content
from shared.crypto import DeviceKeys, open_bundle
from shared.errors import InvalidMessage, SealError
from shared.messages import Bundle, BundleContent
from shared.timestamps import format_ts, parse_ts

log = logging.getLogger(__name__)

Ack = Callable[[int, str, str], None]


class BundleInstaller:
    """Opens, installs and acknowledges bundles; keeps ztunnel in step."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        keys: DeviceKeys,
        ztunnel: ZtunnelSupervisor,
        ack: Ack,
        changed: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._root = settings.root
        self._keys = keys
        self._ztunnel = ztunnel
        self._ack = ack
        self._changed = changed
        self.record: InstallRecord | None = read_record(settings.state_dir)
        self._env: Mapping[str, str] | None = None

    @property
    def token_expires_at(self) -> datetime | None:
        """Expiry of the installed token, if any."""
        raw = self.record.token_expires_at if self.record else None
        return parse_ts(raw) if raw else None

    def handle(self, msg: Bundle) -> None:
        """Act on one bundle whose signature the caller verified."""
        installed = self.record.generation if self.record else 0
        if msg.generation < installed:
            log.info(
                "ignored an older bundle",
                extra={"generation": msg.generation, "installed": installed},
            )
            return
        try:
            content = self._open(msg)
        except (SealError, InvalidMessage) as exc:
            log.warning("bundle refused", extra={"generation": msg.generation, "why": exc.reason})
            self._ack(msg.generation, "failed", exc.reason)
            return
        items = _install_set(content)
        if (
            msg.generation == installed
            and self.record
            and is_intact(self._root, self.record.digests)
        ):
            self._run_ztunnel(content, restart=False)
            self._ack(msg.generation, "applied", "already installed")
            return
        changed = changed_parts(self.record.digests if self.record else None, items)
        try:
            install(self._root, items, owner=istio_proxy_owner())
            record = InstallRecord(
                generation=msg.generation,
                digests=part_digests(items),
                token_expires_at=format_ts(content.token_expires_at),
            )
            write_record(self._settings.state_dir, record)
        except InstallError as exc:
            log.error(
                "bundle install failed", extra={"generation": msg.generation, "why": exc.reason}
            )
            self._ack(msg.generation, "failed", exc.reason)
            return
        self.record = record
        log.info(
            "bundle installed", extra={"generation": msg.generation, "changed": sorted(changed)}
        )
        self._run_ztunnel(content, restart=bool(changed & RESTART_PARTS))
        self._ack(msg.generation, "applied", "installed")
        self._changed()

    def revoke(self) -> None:
        """Stop ztunnel and remove the token and hosts block; keys stay."""
        self._ztunnel.stop()
        self._env = None
        try:
            remove_credentials(self._root)
        except InstallError as exc:
            log.error("could not remove credentials", extra={"why": exc.reason})
        self._changed()

    def _open(self, msg: Bundle) -> BundleContent:
        plaintext = open_bundle(
            msg.sealed, self._keys.kx_key, device_id=msg.device_id, generation=msg.generation
        )
        content = decode_bundle_content(plaintext)
        if content.generation != msg.generation:
            reason = f"sealed generation {content.generation} differs from {msg.generation}"
            raise InvalidMessage(reason)
        return content

    def _run_ztunnel(self, content: BundleContent, *, restart: bool) -> None:
        env = {**content.ztunnel_env, "AUTH_TOKEN": str(self._root / TOKEN_FILE)}
        if env != self._env:
            self._ztunnel.apply(env)  # starts it, or restarts it for a new environment
        elif restart:
            self._ztunnel.restart()
        self._env = env


def _install_set(content: BundleContent) -> InstallSet:
    return InstallSet(
        root_cert=content.root_cert,
        token=content.token.get_secret_value(),
        cluster_env=content.cluster_env,
        mesh_config=content.mesh_config,
        hosts=tuple((h.ip, tuple(h.names)) for h in content.hosts),
    )
