"""controller.meshconfig against istioctl's golden files and pimesh's own cases.

The golden texts below are istio/istio `istioctl/pkg/workload/testdata/vmconfig/ipv4/` at
commit 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c (Apache-2.0), also kept in the handbook's
`shared/istioctl-golden/`; `test_embedded_golden_matches_handbook` checks the copies.
"""

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.meshconfig import (
    HostsEntry,
    InvalidMeshConfig,
    MeshInputs,
    mesh_configmap_name,
    render_cluster_env,
    render_hosts,
    render_mesh_config,
    render_ztunnel_env,
)
from shared.errors import PimeshError

HANDBOOK_GOLDEN = Path("/work/shared/istioctl-golden")

GOLDEN_MESHCONFIG = """\
defaultConfig:
  proxyMetadata:
    # should be overridden by the command
    ISTIO_META_DNS_CAPTURE: "false"
    # should be overridden by the annotation on the WorkloadGroup
    PROXY_CONFIG_ANNOT_VALUE: "foo"
    # should be in the final cluster.env/mesh.yaml
    CLUSTER_MESH_CONFIG_VALUE: "foo"
"""
GOLDEN_WORKLOADGROUP = """\
kind: WorkloadGroup
metadata:
  name: foo
  namespace: bar
spec:
  metadata:
    annotations:
      proxy.istio.io/config: |-
        proxyMetadata:
          # this should override the value from the global meshconfig
          PROXY_CONFIG_ANNOT_VALUE: bar
    labels: {}
  template:
    ports: {}
    serviceAccount: vm-serviceaccount
  probe:
    httpGet:
      port: 8080
"""
GOLDEN_CLUSTER_ENV = """\
CANONICAL_REVISION='latest'
CANONICAL_SERVICE='foo'
CA_ADDR='istiod-rev-1.istio-system.svc:15012'
CLUSTER_MESH_CONFIG_VALUE='foo'
ISTIO_INBOUND_PORTS='*'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_METAJSON_LABELS='{"service.istio.io/canonical-name":"foo","service.istio.io/canonical-revision":"latest"}'
ISTIO_META_CLUSTER_ID='Kubernetes'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_META_MESH_ID=''
ISTIO_META_NETWORK=''
ISTIO_META_WORKLOAD_NAME='foo'
ISTIO_NAMESPACE='bar'
ISTIO_SERVICE='foo.bar'
ISTIO_SERVICE_CIDR='*'
ISTIO_SVC_IP='10.10.10.10'
POD_NAMESPACE='bar'
PROXY_CONFIG_ANNOT_VALUE='bar'
SERVICE_ACCOUNT='vm-serviceaccount'
TRUST_DOMAIN=''
"""
GOLDEN_MESH_YAML = """\
defaultConfig:
  discoveryAddress: istiod-rev-1.istio-system.svc:15012
  proxyMetadata:
    CANONICAL_REVISION: latest
    CANONICAL_SERVICE: foo
    CLUSTER_MESH_CONFIG_VALUE: foo
    ISTIO_META_CLUSTER_ID: Kubernetes
    ISTIO_META_DNS_CAPTURE: "true"
    ISTIO_META_MESH_ID: ""
    ISTIO_META_NETWORK: ""
    ISTIO_META_WORKLOAD_NAME: foo
    ISTIO_METAJSON_LABELS: '{"service.istio.io/canonical-name":"foo","service.istio.io/canonical-revision":"latest"}'
    POD_NAMESPACE: bar
    PROXY_CONFIG_ANNOT_VALUE: bar
    SERVICE_ACCOUNT: vm-serviceaccount
    TRUST_DOMAIN: ""
  readinessProbe:
    httpGet:
      port: 8080
"""  # noqa: E501 - a verbatim copy
GOLDEN_HOSTS = "10.10.10.11 istiod-rev-1.istio-system.svc\n"

# pimesh departs from the golden output in two places, both decided by PROTOCOL.md:
# - ISTIO_SVC_IP (istioctl's --internalIP) is not part of cluster_env;
# - TRUST_DOMAIN falls back to Istio's default "cluster.local" where istioctl, which reads
#   the raw ConfigMap without Istio's defaults, writes "".
PIMESH_TRUST_DOMAIN = "cluster.local"


def golden_inputs() -> MeshInputs:
    """The istioctl test case: WorkloadGroup foo in bar, SA vm-serviceaccount, revision rev-1."""
    wg = yaml.safe_load(GOLDEN_WORKLOADGROUP)
    return MeshInputs(
        namespace=wg["metadata"]["namespace"],
        device_id="foo",
        app=wg["metadata"]["name"],
        mesh_address="10.10.10.10",
        istiod_ip="10.10.10.11",
        istiod_address="istiod-rev-1.istio-system.svc:15012",
        revision="rev-1",
        mesh_yaml=GOLDEN_MESHCONFIG,
        proxy_config_annotation=wg["spec"]["metadata"]["annotations"]["proxy.istio.io/config"],
        readiness_probe=wg["spec"]["probe"],
        service_account=wg["spec"]["template"]["serviceAccount"],
        workload_name=wg["metadata"]["name"],
    )


PI = MeshInputs(
    namespace="pi-fleet",
    device_id="pi-kitchen",
    app="led-pi",
    mesh_address="192.168.1.178",
    istiod_ip="203.0.113.10",
)


def pi_inputs(**changes: Any) -> MeshInputs:
    """A pimesh device with Istio's default mesh config, with `changes` applied."""
    return replace(PI, **changes)


def env_dict(cluster_env: str) -> dict[str, str]:
    """Read back a cluster.env whose values hold no single quote."""
    pairs = (line.split("=", 1) for line in cluster_env.splitlines())
    return {key: value.removeprefix("'").removesuffix("'") for key, value in pairs}


def source_with_sh(cluster_env: str, key: str, tmp_path: Path) -> str:
    """The value of `key` after POSIX sh sources the file, as a shell-run agent would see it."""
    path = tmp_path / "cluster.env"
    path.write_text(cluster_env, encoding="utf-8")
    result = subprocess.run(
        ["sh", "-c", f'. "$1" && printf %s "${key}"', "sh", str(path)],
        capture_output=True,
        check=True,
        timeout=10,
    )
    return result.stdout.decode("utf-8")


def proxy_metadata(mesh_config: str) -> dict[str, str]:
    parsed = yaml.safe_load(mesh_config)
    metadata: dict[str, str] = parsed["defaultConfig"]["proxyMetadata"]
    return metadata


# --- istioctl golden equivalence -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("meshconfig.yaml", GOLDEN_MESHCONFIG),
        ("workloadgroup.yaml", GOLDEN_WORKLOADGROUP),
        ("cluster.env.golden", GOLDEN_CLUSTER_ENV),
        ("mesh.yaml.golden", GOLDEN_MESH_YAML),
        ("hosts.golden", GOLDEN_HOSTS),
    ],
)
def test_embedded_golden_matches_handbook(name: str, text: str) -> None:
    if not HANDBOOK_GOLDEN.is_dir():
        pytest.skip("the handbook's istioctl-golden directory is not on this machine")
    assert (HANDBOOK_GOLDEN / name).read_text(encoding="utf-8") == text


def test_cluster_env_equals_golden_but_for_protocol_differences() -> None:
    expected = GOLDEN_CLUSTER_ENV.replace("ISTIO_SVC_IP='10.10.10.10'\n", "").replace(
        "TRUST_DOMAIN=''", f"TRUST_DOMAIN='{PIMESH_TRUST_DOMAIN}'"
    )
    assert expected != GOLDEN_CLUSTER_ENV  # both differences really were in the golden
    assert render_cluster_env(golden_inputs()) == expected


def test_mesh_config_equals_golden_but_for_trust_domain() -> None:
    expected = yaml.safe_load(GOLDEN_MESH_YAML)
    assert expected["defaultConfig"]["proxyMetadata"]["TRUST_DOMAIN"] == ""
    expected["defaultConfig"]["proxyMetadata"]["TRUST_DOMAIN"] = PIMESH_TRUST_DOMAIN
    assert yaml.safe_load(render_mesh_config(golden_inputs())) == expected


def test_golden_trust_domain_is_the_meshes_when_it_sets_one() -> None:
    inputs = golden_inputs()
    mesh = GOLDEN_MESHCONFIG + "trustDomain: example.org\n"
    changed = replace(inputs, mesh_yaml=mesh)
    assert env_dict(render_cluster_env(changed))["TRUST_DOMAIN"] == "example.org"
    assert proxy_metadata(render_mesh_config(changed))["TRUST_DOMAIN"] == "example.org"


def test_hosts_equal_golden() -> None:
    inputs = golden_inputs()
    entries = render_hosts(inputs.istiod_ip, inputs.istiod_address)
    assert "".join(f"{e.ip} {' '.join(e.names)}\n" for e in entries) == GOLDEN_HOSTS


def test_mesh_config_proxy_metadata_is_cluster_env_without_cluster_env_only_keys() -> None:
    cluster_env = env_dict(render_cluster_env(golden_inputs()))
    metadata = proxy_metadata(render_mesh_config(golden_inputs()))
    cluster_env_only = {
        "CA_ADDR",
        "ISTIO_INBOUND_PORTS",
        "ISTIO_LOCAL_EXCLUDE_PORTS",
        "ISTIO_NAMESPACE",
        "ISTIO_SERVICE",
        "ISTIO_SERVICE_CIDR",
    }
    assert set(cluster_env) - set(metadata) == cluster_env_only
    assert {key: cluster_env[key] for key in metadata} == metadata


# --- pimesh-shaped cases ---------------------------------------------------------------


def test_default_cluster_env_has_protocols_key_set() -> None:
    golden_keys = set(env_dict(GOLDEN_CLUSTER_ENV))
    excluded = {"CA_ADDR", "ISTIO_SVC_IP", "PROXY_CONFIG_ANNOT_VALUE", "CLUSTER_MESH_CONFIG_VALUE"}
    assert set(env_dict(render_cluster_env(pi_inputs()))) == golden_keys - excluded


def test_default_cluster_env_text() -> None:
    assert render_cluster_env(pi_inputs()) == (
        "CANONICAL_REVISION='latest'\n"
        "CANONICAL_SERVICE='led-pi'\n"
        "ISTIO_INBOUND_PORTS='*'\n"
        "ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'\n"
        "ISTIO_METAJSON_LABELS='"
        '{"service.istio.io/canonical-name":"led-pi",'
        '"service.istio.io/canonical-revision":"latest"}'
        "'\n"
        "ISTIO_META_CLUSTER_ID='Kubernetes'\n"
        "ISTIO_META_DNS_CAPTURE='true'\n"
        "ISTIO_META_MESH_ID=''\n"
        "ISTIO_META_NETWORK=''\n"
        "ISTIO_META_WORKLOAD_NAME='pi-kitchen'\n"
        "ISTIO_NAMESPACE='pi-fleet'\n"
        "ISTIO_SERVICE='led-pi.pi-fleet'\n"
        "ISTIO_SERVICE_CIDR='*'\n"
        "POD_NAMESPACE='pi-fleet'\n"
        "SERVICE_ACCOUNT='pi-kitchen'\n"
        "TRUST_DOMAIN='cluster.local'\n"
    )


def test_default_mesh_config() -> None:
    parsed = yaml.safe_load(render_mesh_config(pi_inputs(cluster_id="east", network="net-1")))
    assert parsed == {
        "defaultConfig": {
            "discoveryAddress": "istiod.istio-system.svc:15012",
            "proxyMetadata": {
                "CANONICAL_REVISION": "latest",
                "CANONICAL_SERVICE": "led-pi",
                "ISTIO_METAJSON_LABELS": '{"service.istio.io/canonical-name":"led-pi",'
                '"service.istio.io/canonical-revision":"latest"}',
                "ISTIO_META_CLUSTER_ID": "east",
                "ISTIO_META_DNS_CAPTURE": "true",
                "ISTIO_META_MESH_ID": "",
                "ISTIO_META_NETWORK": "net-1",
                "ISTIO_META_WORKLOAD_NAME": "pi-kitchen",
                "POD_NAMESPACE": "pi-fleet",
                "SERVICE_ACCOUNT": "pi-kitchen",
                "TRUST_DOMAIN": "cluster.local",
            },
        }
    }


def test_trust_domain_and_mesh_id_come_from_the_mesh() -> None:
    mesh = "trustDomain: pis.example\ndefaultConfig:\n  meshId: home-mesh\n"
    inputs = pi_inputs(mesh_yaml=mesh)
    env = env_dict(render_cluster_env(inputs))
    assert (env["TRUST_DOMAIN"], env["ISTIO_META_MESH_ID"]) == ("pis.example", "home-mesh")
    assert render_ztunnel_env(inputs)["TRUST_DOMAIN"] == "pis.example"
    config = yaml.safe_load(render_mesh_config(inputs))["defaultConfig"]
    assert config["meshId"] == "home-mesh"
    assert config["proxyMetadata"]["TRUST_DOMAIN"] == "pis.example"


@pytest.mark.parametrize("mesh_yaml", [None, "", "defaultConfig: {}\n", "trustDomain: ''\n"])
def test_missing_or_empty_mesh_means_istio_defaults(mesh_yaml: str | None) -> None:
    assert render_cluster_env(pi_inputs(mesh_yaml=mesh_yaml)) == render_cluster_env(pi_inputs())


def test_dns_capture_is_forced_over_mesh_and_annotation() -> None:
    off = "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: 'false'\n"
    annotation = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: 'false'\n"
    inputs = pi_inputs(mesh_yaml=off, proxy_config_annotation=annotation)
    assert env_dict(render_cluster_env(inputs))["ISTIO_META_DNS_CAPTURE"] == "true"
    assert proxy_metadata(render_mesh_config(inputs))["ISTIO_META_DNS_CAPTURE"] == "true"
    assert render_ztunnel_env(inputs)["ISTIO_META_DNS_CAPTURE"] == "true"


def test_fixed_keys_win_over_mesh_and_extra_keys_pass_through() -> None:
    mesh = (
        "defaultConfig:\n  proxyMetadata:\n"
        "    SERVICE_ACCOUNT: intruder\n    TRUST_DOMAIN: evil.example\n"
        "    ISTIO_META_CLUSTER_ID: other\n    ISTIO_INBOUND_PORTS: '80'\n"
        "    ISTIO_META_DNS_PROXY_ADDR: 127.0.0.1:5353\n"
    )
    inputs = pi_inputs(mesh_yaml=mesh)
    env = env_dict(render_cluster_env(inputs))
    assert env["SERVICE_ACCOUNT"] == "pi-kitchen"
    assert env["TRUST_DOMAIN"] == "cluster.local"
    assert env["ISTIO_META_CLUSTER_ID"] == "Kubernetes"
    assert env["ISTIO_INBOUND_PORTS"] == "*"
    assert env["ISTIO_META_DNS_PROXY_ADDR"] == "127.0.0.1:5353"
    # As in istioctl, cluster.env-only overrides do not reach mesh.yaml's proxyMetadata.
    assert proxy_metadata(render_mesh_config(inputs))["ISTIO_INBOUND_PORTS"] == "80"


def test_annotation_overrides_mesh_fields_and_merges_metadata() -> None:
    mesh = (
        "defaultConfig:\n  concurrency: 4\n  tracing: {sampling: 1}\n"
        "  discoveryAddress: elsewhere:15012\n"
        "  proxyMetadata: {A_KEY: mesh, B_KEY: mesh}\n"
    )
    annotation = "concurrency: 1\nproxyMetadata: {B_KEY: annotation}\n"
    inputs = pi_inputs(mesh_yaml=mesh, proxy_config_annotation=annotation)
    config = yaml.safe_load(render_mesh_config(inputs))["defaultConfig"]
    assert config["concurrency"] == 1
    assert config["tracing"] == {"sampling": 1}
    assert config["discoveryAddress"] == "istiod.istio-system.svc:15012"
    assert (config["proxyMetadata"]["A_KEY"], config["proxyMetadata"]["B_KEY"]) == (
        "mesh",
        "annotation",
    )
    env = env_dict(render_cluster_env(inputs))
    assert (env["A_KEY"], env["B_KEY"]) == ("mesh", "annotation")


def test_readiness_probe_only_from_the_workloadgroup() -> None:
    mesh = "defaultConfig:\n  readinessProbe: {tcpSocket: {port: 1}}\n"
    without = yaml.safe_load(render_mesh_config(pi_inputs(mesh_yaml=mesh)))
    assert "readinessProbe" not in without["defaultConfig"]
    probe = {"httpGet": {"path": "/healthz", "port": 8080}}
    with_probe = yaml.safe_load(render_mesh_config(pi_inputs(readiness_probe=probe)))
    assert with_probe["defaultConfig"]["readinessProbe"] == probe


@pytest.mark.parametrize(
    ("status_port", "excluded"),
    [
        ("", "22,15090,15021,15020"),
        ("statusPort: 15021", "22,15090,15021"),
        ("statusPort: 15090", "22,15090,15021"),
        ("statusPort: 16000", "22,15090,15021,16000"),
        ("statusPort: '16001'", "22,15090,15021,16001"),
    ],
)
def test_local_exclude_ports_follow_status_port(status_port: str, excluded: str) -> None:
    inputs = pi_inputs(proxy_config_annotation=status_port)
    assert env_dict(render_cluster_env(inputs))["ISTIO_LOCAL_EXCLUDE_PORTS"] == excluded


@pytest.mark.parametrize(
    ("revision", "ca_addr"),
    [
        (None, None),
        ("", None),
        ("default", None),
        ("1-24", "istiod-1-24.istio-system.svc:15012"),
    ],
)
def test_ca_addr_only_with_a_revision(revision: str | None, ca_addr: str | None) -> None:
    assert env_dict(render_cluster_env(pi_inputs(revision=revision))).get("CA_ADDR") == ca_addr


def test_mesh_configmap_name() -> None:
    assert mesh_configmap_name(None) == "istio"
    assert mesh_configmap_name("default") == "istio"
    assert mesh_configmap_name("1-24") == "istio-1-24"


def test_quotes_and_shell_syntax_survive_sourcing(tmp_path: Path) -> None:
    value = 'it\'s $HOME `id` $(id) "q" \\n\nsecond line; echo pwned'
    mesh = yaml.safe_dump({"defaultConfig": {"proxyMetadata": {"TRICKY": value}}})
    cluster_env = render_cluster_env(pi_inputs(mesh_yaml=mesh))
    assert "TRICKY='it'\"'\"'s $HOME" in cluster_env
    assert source_with_sh(cluster_env, "TRICKY", tmp_path) == value
    assert source_with_sh(cluster_env, "SERVICE_ACCOUNT", tmp_path) == "pi-kitchen"


@settings(max_examples=40, deadline=None)
@given(
    value=st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        max_size=40,
    )
)
def test_any_value_round_trips_through_sh(
    tmp_path_factory: pytest.TempPathFactory, value: str
) -> None:
    mesh = yaml.safe_dump({"defaultConfig": {"proxyMetadata": {"ANY_VALUE": value}}})
    cluster_env = render_cluster_env(pi_inputs(mesh_yaml=mesh))
    assert source_with_sh(cluster_env, "ANY_VALUE", tmp_path_factory.mktemp("env")) == value


def test_nul_in_a_value_is_refused() -> None:
    mesh = yaml.safe_dump({"defaultConfig": {"proxyMetadata": {"K": "a\x00b"}}})
    with pytest.raises(InvalidMeshConfig, match="NUL"):
        render_cluster_env(pi_inputs(mesh_yaml=mesh))


def test_output_is_deterministic() -> None:
    one = "defaultConfig:\n  zeta: 1\n  alpha: 2\n  proxyMetadata: {Z_KEY: z, A_KEY: a}\n"
    two = "defaultConfig:\n  proxyMetadata: {A_KEY: a, Z_KEY: z}\n  alpha: 2\n  zeta: 1\n"
    first, second = pi_inputs(mesh_yaml=one), pi_inputs(mesh_yaml=two)
    assert render_cluster_env(first) == render_cluster_env(second)
    assert render_mesh_config(first) == render_mesh_config(second)
    assert render_mesh_config(first) == render_mesh_config(first)
    keys = [line.split(":")[0] for line in render_mesh_config(first).splitlines()]
    assert keys[:3] == ["defaultConfig", "  alpha", "  discoveryAddress"]


def test_mesh_config_has_no_aliases_and_no_folded_lines() -> None:
    probe = {"httpGet": {"port": 8080}}
    mesh = "defaultConfig:\n  a: &shared {x: 1}\n  b: *shared\n"
    rendered = render_mesh_config(pi_inputs(mesh_yaml=mesh, readiness_probe=probe))
    assert "&" not in rendered
    assert "*shared" not in rendered
    labels = [line for line in rendered.splitlines() if "ISTIO_METAJSON_LABELS" in line]
    assert labels[0].endswith('"service.istio.io/canonical-revision":"latest"}\'')


def test_inputs_with_a_probe_stay_hashable() -> None:
    assert hash(golden_inputs()) == hash(golden_inputs())


# --- malformed mesh config ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mesh_yaml", "reason"),
    [
        ("defaultConfig: [unclosed\n", "not valid YAML"),
        ("- a list\n", "not a YAML mapping"),
        ("defaultConfig:\n  1: numeric key\n", "string keys"),
        ("defaultConfig: just-a-string\n", "defaultConfig is not a mapping"),
        ("defaultConfig:\n  proxyMetadata: [A]\n", "proxyMetadata is not a mapping"),
        ("defaultConfig:\n  proxyMetadata: {FLAG: true}\n", "must be a quoted string"),
        ("defaultConfig:\n  proxyMetadata: {'X; rm -rf /': 'v'}\n", "not an env name"),
        ("defaultConfig:\n  proxyMetadata: {'A=B': 'v'}\n", "not an env name"),
        ("trustDomain: [a]\n", "trustDomain must be a string"),
        ("defaultConfig:\n  meshId: 7\n", "meshId must be a string"),
        ("defaultConfig:\n  statusPort: http\n", "statusPort"),
        ("defaultConfig:\n  statusPort: 70000\n", "statusPort"),
    ],
)
def test_malformed_mesh_config_is_refused_with_a_reason(mesh_yaml: str, reason: str) -> None:
    with pytest.raises(InvalidMeshConfig, match=reason) as caught:
        render_cluster_env(pi_inputs(mesh_yaml=mesh_yaml))
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, PimeshError)
    assert reason in caught.value.reason


def test_malformed_annotation_is_refused() -> None:
    with pytest.raises(InvalidMeshConfig, match=r"proxy\.istio\.io/config"):
        render_mesh_config(pi_inputs(proxy_config_annotation="proxyMetadata: {N: 1}\n"))


# --- hosts -------------------------------------------------------------------------------


def test_hosts_map_the_ip_to_the_istiod_host() -> None:
    assert render_hosts("203.0.113.10", "istiod.istio-system.svc:15012") == [
        HostsEntry(ip="203.0.113.10", names=("istiod.istio-system.svc",))
    ]
    assert render_hosts("2001:db8:0::1", "istiod.example:443") == [
        HostsEntry(ip="2001:db8::1", names=("istiod.example",))
    ]


def test_hosts_are_empty_when_istiod_is_addressed_by_ip() -> None:
    assert render_hosts("203.0.113.10", "203.0.113.10:15012") == []
    assert render_hosts("2001:db8::1", "[2001:db8::1]:15012") == []


@pytest.mark.parametrize(
    ("ip", "address"),
    [
        ("not-an-ip", "istiod.istio-system.svc:15012"),
        ("203.0.113.10", "istiod.istio-system.svc"),
        ("203.0.113.10", "istiod:port"),
        ("203.0.113.10", ":15012"),
        ("203.0.113.10", "istiod:0"),
    ],
)
def test_hosts_refuse_bad_addresses(ip: str, address: str) -> None:
    with pytest.raises(InvalidMeshConfig):
        render_hosts(ip, address)


# --- ztunnel -----------------------------------------------------------------------------


def test_ztunnel_env_for_a_device() -> None:
    assert render_ztunnel_env(pi_inputs(cluster_id="east")) == {
        "PROXY_MODE": "dedicated",
        "PROXY_WORKLOAD_INFO": "pi-fleet/pi-kitchen/pi-kitchen",
        "CA_ADDRESS": "istiod.istio-system.svc:15012",
        "XDS_ADDRESS": "istiod.istio-system.svc:15012",
        "CLUSTER_ID": "east",
        "POD_NAMESPACE": "pi-fleet",
        "INSTANCE_IP": "192.168.1.178",
        "TRUST_DOMAIN": "cluster.local",
        "ISTIO_META_DNS_CAPTURE": "true",
        "ISTIO_META_DNS_AUTO_ALLOCATE": "true",
        "ISTIO_META_DNS_PROXY_ADDR": "127.0.0.1:15053",
        "ISTIO_META_ENABLE_HBONE": "true",
    }


def test_ztunnel_env_never_names_a_node_and_follows_the_istiod_address() -> None:
    env = render_ztunnel_env(golden_inputs())
    assert "NODE_NAME" not in env
    assert env["PROXY_WORKLOAD_INFO"] == "bar/foo/vm-serviceaccount"
    assert env["CA_ADDRESS"] == env["XDS_ADDRESS"] == "istiod-rev-1.istio-system.svc:15012"


def test_ztunnel_dns_settings_yield_to_the_mesh_except_capture() -> None:
    mesh = (
        "defaultConfig:\n  proxyMetadata:\n"
        "    ISTIO_META_DNS_PROXY_ADDR: 127.0.0.1:5353\n"
        "    ISTIO_META_DNS_AUTO_ALLOCATE: 'false'\n"
        "    ISTIO_META_DNS_CAPTURE: 'false'\n"
        "    ISTIO_META_ENABLE_HBONE: 'false'\n"
    )
    env = render_ztunnel_env(pi_inputs(mesh_yaml=mesh))
    assert env["ISTIO_META_DNS_PROXY_ADDR"] == "127.0.0.1:5353"
    assert env["ISTIO_META_DNS_AUTO_ALLOCATE"] == "false"
    assert env["ISTIO_META_DNS_CAPTURE"] == "true"
    assert env["ISTIO_META_ENABLE_HBONE"] == "true"
