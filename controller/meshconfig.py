"""The mesh bootstrap files `istioctl x workload entry configure` would write, as pure data.

This module owns the `cluster_env`, `mesh_config`, `hosts` and `ztunnel_env` items of a
bundle (PROTOCOL.md, `bundle`). It renders them from plain inputs (`MeshInputs`) with no
I/O, so the bundle builder can hash exactly what a bundle was built from and the
rendering can be tested against istioctl's own golden files
(`istioctl/pkg/workload/testdata/vmconfig/`, copied in `shared/istioctl-golden/`).

Precedence follows istioctl's `createMeshConfig` and `createClusterEnv`
(istioctl/pkg/workload/workload.go), lowest first:

1. the mesh config's `defaultConfig` (the `mesh` key of ConfigMap `istio`);
2. the WorkloadGroup's `proxy.istio.io/config` annotation: its top-level ProxyConfig
   fields replace the mesh's (jsonpb replaces whole fields), its `proxyMetadata` entries
   are merged over the mesh's key by key;
3. the keys istioctl always sets in `proxyMetadata` (`CANONICAL_*`, `POD_NAMESPACE`,
   `SERVICE_ACCOUNT`, `TRUST_DOMAIN`, `ISTIO_META_CLUSTER_ID`, `ISTIO_META_MESH_ID`,
   `ISTIO_META_NETWORK`, `ISTIO_META_WORKLOAD_NAME`, `ISTIO_METAJSON_LABELS` and
   `ISTIO_META_DNS_CAPTURE=true`): neither the mesh nor the annotation can change them;
4. for `cluster.env` only: `ISTIO_INBOUND_PORTS`, `ISTIO_LOCAL_EXCLUDE_PORTS`,
   `ISTIO_NAMESPACE`, `ISTIO_SERVICE`, `ISTIO_SERVICE_CIDR`, `SERVICE_ACCOUNT` and, with a
   revision, `CA_ADDR`.

Where pimesh departs from istioctl, PROTOCOL.md decides: `TRUST_DOMAIN` falls back to
Istio's default `cluster.local` instead of an empty string, `discoveryAddress` is always
`--istiod-address`, `ISTIO_META_WORKLOAD_NAME` is the device id (istioctl writes the
WorkloadGroup's name), `ISTIO_SVC_IP` is not written, and every `cluster.env` value is
single-quoted (current istioctl leaves shell-safe values bare).
"""

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from shared.errors import PimeshError

DEFAULT_ISTIOD_ADDRESS = "istiod.istio-system.svc:15012"
DEFAULT_CLUSTER_ID = "Kubernetes"
DEFAULT_TRUST_DOMAIN = "cluster.local"
"""Istio's `DefaultMeshConfig().TrustDomain` (pkg/config/mesh/mesh.go)."""
ISTIO_SYSTEM_NAMESPACE = "istio-system"

# The seed's ztunnel DNS settings; the mesh's proxyMetadata may change these two.
_SEED_DNS_DEFAULTS = {
    "ISTIO_META_DNS_AUTO_ALLOCATE": "true",
    "ISTIO_META_DNS_PROXY_ADDR": "127.0.0.1:15053",
}
# istio.io/api label: service.istio.io/canonical-name and canonical-revision.
_CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
_CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"
_CANONICAL_REVISION = "latest"
# Every proxyMetadata entry becomes an environment variable (Istio's injector does the
# same), so a key must be a portable shell name: anything else could inject commands
# into a sourced cluster.env.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InvalidMeshConfig(PimeshError, ValueError):  # noqa: N818 - named for what is wrong
    """Mesh settings that cannot be rendered; `reason` names the offending field."""


@dataclass(frozen=True, kw_only=True)
class MeshInputs:
    """Everything the rendered mesh files depend on, as plain data.

    Attributes:
        namespace: The device namespace (`NS`).
        device_id: The device id: its ServiceAccount and WorkloadEntry name.
        app: The device's app: canonical service and WorkloadGroup name.
        mesh_address: The device's first announced IP (ztunnel's `INSTANCE_IP`).
        istiod_ip: The address the device reaches istiod at (the hosts entry).
        cluster_id: `--cluster-id`.
        istiod_address: `--istiod-address`, HOST:PORT.
        istio_namespace: Where istiod runs (for `CA_ADDR` with a revision).
        revision: `--istio-revision`; None, "" and "default" mean no revision.
        mesh_yaml: The `mesh` key of ConfigMap `istio`, or None for Istio's defaults.
        proxy_config_annotation: The WorkloadGroup's `proxy.istio.io/config` YAML.
        readiness_probe: The WorkloadGroup's `spec.probe`, if any.
        network: The WorkloadGroup template's network (`ISTIO_META_NETWORK`).
        service_account: Overrides the ServiceAccount (istioctl's golden case only).
        workload_name: Overrides the workload name (istioctl's golden case only).
    """

    namespace: str
    device_id: str
    app: str
    mesh_address: str
    istiod_ip: str
    cluster_id: str = DEFAULT_CLUSTER_ID
    istiod_address: str = DEFAULT_ISTIOD_ADDRESS
    istio_namespace: str = ISTIO_SYSTEM_NAMESPACE
    revision: str | None = None
    mesh_yaml: str | None = None
    proxy_config_annotation: str | None = None
    readiness_probe: Mapping[str, object] | None = field(default=None, hash=False)
    network: str = ""
    service_account: str | None = None
    workload_name: str | None = None

    @property
    def sa(self) -> str:
        """The ServiceAccount the device runs as (its id unless overridden)."""
        return self.service_account or self.device_id

    @property
    def workload(self) -> str:
        """The workload (WorkloadEntry) name (the device id unless overridden)."""
        return self.workload_name or self.device_id


@dataclass(frozen=True)
class HostsEntry:
    """One `/etc/hosts` line: `ip` followed by `names`."""

    ip: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Mesh:
    """The mesh config merged with the annotation, before istioctl's fixed keys."""

    proxy_config: dict[str, object]
    proxy_metadata: dict[str, str]
    trust_domain: str


def mesh_configmap_name(revision: str | None) -> str:
    """The ConfigMap in istio-system holding the mesh config (`istio`, `istio-REV`)."""
    return f"istio-{revision}" if _is_revisioned(revision) else "istio"


def render_cluster_env(inputs: MeshInputs) -> str:
    """Render `cluster.env`: `KEY='value'` lines, sorted, with a trailing newline.

    Lines are sorted as whole lines, as istioctl's `mapToString` does. Values are always
    single-quoted; an embedded `'` becomes `'"'"'` (close, double-quoted quote, reopen),
    which POSIX sh reads back unchanged (as does systemd's EnvironmentFile, except that
    some systemd releases treat a backslash inside single quotes as an escape).

    Raises:
        InvalidMeshConfig: The mesh config or annotation cannot be used.
    """
    mesh = _load_mesh(inputs)
    env = {**_proxy_metadata(inputs, mesh), **_cluster_env_overrides(inputs, mesh)}
    return "".join(sorted(f"{key}={_quote(value)}\n" for key, value in env.items()))


def render_mesh_config(inputs: MeshInputs) -> str:
    """Render `mesh.yaml`: `defaultConfig` with keys sorted, so its hash is stable.

    Raises:
        InvalidMeshConfig: The mesh config or annotation cannot be used.
    """
    mesh = _load_mesh(inputs)
    proxy_config = dict(mesh.proxy_config)
    # istioctl assigns the WorkloadGroup's probe unconditionally: no probe, none here.
    proxy_config.pop("readinessProbe", None)
    if inputs.readiness_probe is not None:
        proxy_config["readinessProbe"] = _plain(inputs.readiness_probe)
    proxy_config["discoveryAddress"] = inputs.istiod_address
    proxy_config["proxyMetadata"] = _proxy_metadata(inputs, mesh)
    return yaml.dump(
        {"defaultConfig": proxy_config},
        Dumper=_NoAliasDumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 16,  # never fold a long value (ISTIO_METAJSON_LABELS) over lines
    )


def render_hosts(istiod_ip: str, istiod_address: str) -> list[HostsEntry]:
    """Map `istiod_ip` to the host of `istiod_address`, as istioctl's `createHosts` does.

    Returns no entry when the host is itself an IP literal: there is nothing to resolve.

    Raises:
        InvalidMeshConfig: `istiod_ip` is not an IP or `istiod_address` not HOST:PORT.
    """
    host = _address_host(istiod_address)
    try:
        ip = ipaddress.ip_address(istiod_ip)
    except ValueError as exc:
        raise InvalidMeshConfig(f"istiod ip {istiod_ip!r} is not an IP address") from exc
    if _is_ip(host):
        return []
    return [HostsEntry(ip=str(ip), names=(host,))]


def render_ztunnel_env(inputs: MeshInputs) -> dict[str, str]:
    """Render the environment ztunnel needs in dedicated mode outside Kubernetes.

    Names are those ztunnel reads (src/config.rs, src/xds/client.rs). The seed's
    `ISTIO_META_DNS_AUTO_ALLOCATE` and `ISTIO_META_DNS_PROXY_ADDR` yield to the mesh's
    proxyMetadata (ztunnel lets `ISTIO_META_*` variables override the mesh file, so a
    fixed value here would silently shadow the operator's); `ISTIO_META_DNS_CAPTURE` is
    forced like istioctl's, and `ISTIO_META_ENABLE_HBONE` because ambient needs HBONE.
    `NODE_NAME` is never set: a Pi is not a Kubernetes node.

    Raises:
        InvalidMeshConfig: The mesh config or annotation cannot be used.
    """
    mesh = _load_mesh(inputs)
    dns = {key: mesh.proxy_metadata.get(key, value) for key, value in _SEED_DNS_DEFAULTS.items()}
    return {
        "PROXY_MODE": "dedicated",
        "PROXY_WORKLOAD_INFO": f"{inputs.namespace}/{inputs.workload}/{inputs.sa}",
        "CA_ADDRESS": inputs.istiod_address,
        "XDS_ADDRESS": inputs.istiod_address,
        "CLUSTER_ID": inputs.cluster_id,
        "POD_NAMESPACE": inputs.namespace,
        "INSTANCE_IP": inputs.mesh_address,
        "TRUST_DOMAIN": mesh.trust_domain,
        **dns,
        "ISTIO_META_DNS_CAPTURE": "true",
        "ISTIO_META_ENABLE_HBONE": "true",
    }


def _proxy_metadata(inputs: MeshInputs, mesh: _Mesh) -> dict[str, str]:
    """The mesh's and annotation's proxyMetadata under istioctl's fixed keys."""
    labels = {_CANONICAL_NAME_LABEL: inputs.app, _CANONICAL_REVISION_LABEL: _CANONICAL_REVISION}
    fixed = {
        "CANONICAL_SERVICE": inputs.app,
        "CANONICAL_REVISION": _CANONICAL_REVISION,
        "POD_NAMESPACE": inputs.namespace,
        "SERVICE_ACCOUNT": inputs.sa,
        "TRUST_DOMAIN": mesh.trust_domain,
        "ISTIO_META_CLUSTER_ID": inputs.cluster_id,
        "ISTIO_META_MESH_ID": _optional_str(mesh.proxy_config, "meshId", where="defaultConfig"),
        "ISTIO_META_NETWORK": inputs.network,
        "ISTIO_META_WORKLOAD_NAME": inputs.workload,
        # Go's json.Marshal of a map: keys sorted, no spaces.
        "ISTIO_METAJSON_LABELS": json.dumps(labels, sort_keys=True, separators=(",", ":")),
        "ISTIO_META_DNS_CAPTURE": "true",
    }
    return {**mesh.proxy_metadata, **fixed}


def _cluster_env_overrides(inputs: MeshInputs, mesh: _Mesh) -> dict[str, str]:
    """The keys istioctl's `createClusterEnv` sets over the proxyMetadata."""
    overrides = {
        # pimesh's WorkloadGroup template has no ports, so istioctl captures all ports.
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_NAMESPACE": inputs.namespace,
        "ISTIO_SERVICE": f"{inputs.app}.{inputs.namespace}",
        "ISTIO_SERVICE_CIDR": "*",
        "ISTIO_LOCAL_EXCLUDE_PORTS": _exclude_ports(mesh.proxy_config),
        "SERVICE_ACCOUNT": inputs.sa,
    }
    if _is_revisioned(inputs.revision):
        overrides["CA_ADDR"] = f"istiod-{inputs.revision}.{inputs.istio_namespace}.svc:15012"
    return overrides


def _exclude_ports(proxy_config: Mapping[str, object]) -> str:
    """SSH, Prometheus, readiness and the status port stay out of capture (istioctl)."""
    status_port = _status_port(proxy_config.get("statusPort", 0))
    if status_port in (15090, 15021):
        return "22,15090,15021"
    return f"22,15090,15021,{status_port or 15020}"


def _status_port(value: object) -> int:
    """`statusPort` as jsonpb reads an int32: a number or a string of digits."""
    if isinstance(value, str) and value.isdecimal():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise InvalidMeshConfig(f"defaultConfig.statusPort {value!r} is not a port number")
    return value


def _load_mesh(inputs: MeshInputs) -> _Mesh:
    """Parse the mesh config and annotation and merge them as istioctl does."""
    mesh = _yaml_mapping(inputs.mesh_yaml, what="mesh config")
    default_config = mesh.get("defaultConfig")
    if default_config is None:
        default_config = {}
    if not isinstance(default_config, dict):
        raise InvalidMeshConfig("mesh config: defaultConfig is not a mapping")
    annotation = _yaml_mapping(inputs.proxy_config_annotation, what="proxy.istio.io/config")
    metadata = {
        **_metadata_of(default_config, where="mesh config defaultConfig"),
        **_metadata_of(annotation, where="proxy.istio.io/config"),
    }
    proxy_config = {**default_config, **annotation}
    proxy_config.pop("proxyMetadata", None)
    trust_domain = _optional_str(mesh, "trustDomain", where="mesh config")
    return _Mesh(proxy_config, metadata, trust_domain or DEFAULT_TRUST_DOMAIN)


def _yaml_mapping(text: str | None, *, what: str) -> dict[str, object]:
    """Parse `text` as a YAML mapping; nothing (None, empty) is an empty mapping."""
    if text is None:
        return {}
    try:
        loaded: object = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidMeshConfig(f"{what} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not _string_keys(loaded):
        raise InvalidMeshConfig(f"{what} is not a YAML mapping with string keys")
    return loaded


def _string_keys(value: object) -> bool:
    """Whether every mapping in `value` has string keys only, as JSON (and Istio) needs."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and _string_keys(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_string_keys(item) for item in value)
    return True


def _metadata_of(proxy_config: Mapping[str, object], *, where: str) -> dict[str, str]:
    """The `proxyMetadata` of a ProxyConfig, checked as env var names and string values."""
    metadata = proxy_config.get("proxyMetadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidMeshConfig(f"{where}: proxyMetadata is not a mapping")
    for key, value in metadata.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise InvalidMeshConfig(f"{where}: proxyMetadata key {key!r} is not an env name")
        if not isinstance(value, str):
            # Istio's jsonpb refuses non-strings in map<string, string> too.
            raise InvalidMeshConfig(f"{where}: proxyMetadata {key} must be a quoted string")
    return dict(metadata)


def _optional_str(mapping: Mapping[str, object], key: str, *, where: str) -> str:
    """`mapping[key]` if it is a string, "" if absent; anything else is refused."""
    value = mapping.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidMeshConfig(f"{where}: {key} must be a string")
    return value


def _quote(value: str) -> str:
    """Single-quote `value` for a shell-sourced env file (POSIX sh, section 2.2.2)."""
    if "\0" in value:
        raise InvalidMeshConfig("a cluster.env value contains a NUL character")
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _address_host(address: str) -> str:
    """The host of HOST:PORT (brackets removed from an IPv6 literal)."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) <= 65535:
        raise InvalidMeshConfig(f"istiod address {address!r} is not HOST:PORT")
    return host


def _is_ip(host: str) -> bool:
    """Whether `host` is an IP literal rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_revisioned(revision: str | None) -> bool:
    """Mirror istioctl's `isRevisioned`: "" and "default" name the default control plane."""
    return revision not in (None, "", "default")


def _plain(value: object) -> object:
    """A copy made of dicts and lists only, which the safe YAML dumper can represent."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(item) for item in value]
    return value


class _NoAliasDumper(yaml.SafeDumper):
    """A safe dumper that writes shared values out in full instead of as YAML aliases."""

    def ignore_aliases(self, data: object) -> bool:
        """Never emit `&anchor`/`*alias`: each value is written where it is used."""
        return True
