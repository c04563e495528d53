"""The policy file parsed and rendered (controller.policyfile), and kept in step (policy)."""

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.errors import PermanentError
from controller.kube import AUTHORIZATION_POLICIES, Kube, load_api_client
from controller.policy import PolicySync
from controller.policyfile import PolicyEntry, load_policy_file, parse_policies, render
from tests.support.schemas import validate_manifest

pytestmark = pytest.mark.timeout(30)

NS = "pi-fleet"
MANAGED = {"app.kubernetes.io/managed-by": "pimesh"}

# PROTOCOL.md, "Policy file (`--policy-file`)", verbatim.
PROTOCOL_EXAMPLE = """\
policies:
  - name: deny-sleep               # DNS-1123 label
    action: DENY                   # ALLOW | DENY | AUDIT
    selector: {app: led-pi}        # exactly one of: app, group, device
    from:
      principals: ["cluster.local/ns/default/sa/sleep"]
      namespaces: []               # optional
    ports: [8080]                  # optional
"""


def entry(**fields: Any) -> PolicyEntry:
    base: dict[str, Any] = {"name": "p", "action": "ALLOW", "selector": {"app": "led-pi"}}
    base.update(fields)
    return PolicyEntry.model_validate(base)


def policies_yaml(*entries: str) -> str:
    return "policies:\n" + "".join(entries)


def simple(name: str, *, action: str = "DENY", ports: str = "[8080]") -> str:
    return (
        f"  - name: {name}\n    action: {action}\n    selector: {{app: led-pi}}\n"
        f"    ports: {ports}\n"
    )


# Parsing and rendering ----------------------------------------------------------------


def test_protocol_example_renders_as_protocol_says() -> None:
    (parsed,) = parse_policies(PROTOCOL_EXAMPLE)
    assert render(parsed, NS) == {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "pimesh-deny-sleep",
            "namespace": NS,
            "labels": {**MANAGED, "pimesh.io/policy": "deny-sleep"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "led-pi"}},
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                    "to": [{"operation": {"ports": ["8080"]}}],
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("selector", "labels"),
    [
        ({"app": "led-pi"}, {"app": "led-pi"}),
        ({"group": "kitchen"}, {"pimesh.io/group.kitchen": "true"}),
        ({"device": "pi-hall"}, {"pimesh.io/device": "pi-hall"}),
    ],
)
def test_selectors(selector: dict[str, str], labels: dict[str, str]) -> None:
    spec = render(entry(selector=selector), NS)["spec"]
    assert spec["selector"] == {"matchLabels": labels}


def test_ports_render_as_strings_in_order() -> None:
    rule = render(entry(ports=[8080, 15008, 1]), NS)["spec"]["rules"][0]
    assert rule == {"to": [{"operation": {"ports": ["8080", "15008", "1"]}}]}


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({}, {}),
        ({"from": {}}, {}),
        ({"from": {"principals": [], "namespaces": []}, "ports": []}, {}),
        (
            {"from": {"namespaces": ["default"]}},
            {"from": [{"source": {"namespaces": ["default"]}}]},
        ),
        (
            {"from": {"principals": ["a/b"], "namespaces": ["x-*"]}},
            {"from": [{"source": {"principals": ["a/b"], "namespaces": ["x-*"]}}]},
        ),
    ],
)
def test_empty_parts_are_left_out(fields: dict[str, Any], rule: dict[str, Any]) -> None:
    # An empty rule matches every request (Istio: `rules: [{}]`); `rules: []` would match none.
    assert render(entry(**fields), NS)["spec"]["rules"] == [rule]


@pytest.mark.parametrize("action", ["ALLOW", "DENY", "AUDIT"])
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"selector": {"group": "kitchen"}, "ports": [80, 443]},
        {"selector": {"device": "d" * 40}, "from": {"principals": ["cluster.local/ns/a/sa/b"]}},
        {"name": "n" * 56, "from": {"namespaces": ["default"]}, "ports": [65535]},
    ],
)
def test_every_rendered_policy_validates(action: str, fields: dict[str, Any]) -> None:
    validate_manifest(render(entry(action=action, **fields), NS))


def test_validator_would_catch_a_bad_rendering() -> None:
    manifest = render(entry(ports=[8080]), NS)
    manifest["spec"]["rules"][0]["to"][0]["operation"]["ports"] = [8080]
    with pytest.raises(Exception, match="8080"):
        validate_manifest(manifest)


@pytest.mark.parametrize(
    "text",
    ["", "# nothing yet\n", "policies: []\n", "policies:\n"],
)
def test_empty_file_means_no_policies(text: str) -> None:
    assert parse_policies(text) == []


def test_missing_file_means_no_policies(tmp_path: Path) -> None:
    assert load_policy_file(tmp_path / "absent.yaml") == []


def test_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(PROTOCOL_EXAMPLE)
    (loaded,) = load_policy_file(path)
    assert loaded.name == "deny-sleep"
    assert loaded.from_.principals == ("cluster.local/ns/default/sa/sleep",)
    assert loaded.ports == (8080,)


GOOD = "  - {name: good, action: ALLOW, selector: {app: led-pi}}\n"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            "  - {name: deny-sleep, action: DENY, selector: {app: a, group: g}}\n",
            "policy 'deny-sleep' (entry 2): selector: give exactly one of app, group, device",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {}}\n",
            "policy 'deny-sleep' (entry 2): selector: give exactly one of app, group, device",
        ),
        (
            "  - {name: deny-sleep, action: DENY}\n",
            "policy 'deny-sleep' (entry 2): selector: Field required",
        ),
        ("  - {name: Deny_Sleep, action: DENY, selector: {app: a}}\n", "(entry 2): name: "),
        (f"  - {{name: {'n' * 57}, action: DENY, selector: {{app: a}}}}\n", "too long"),
        (
            "  - {name: deny-sleep, action: REJECT, selector: {app: a}}\n",
            "policy 'deny-sleep' (entry 2): action: Input should be 'ALLOW', 'DENY' or 'AUDIT'",
        ),
        (
            "  - {name: good, action: DENY, selector: {app: a}}\n",
            "policy 'good' (entries 1 and 2): name used twice",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {app: a}, ports: [0]}\n",
            "policy 'deny-sleep' (entry 2): ports.0: Input should be greater than or equal to 1",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {app: a}, ports: [65536]}\n",
            "policy 'deny-sleep' (entry 2): ports.0: ",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {app: a}, ports: ['8080']}\n",
            "policy 'deny-sleep' (entry 2): ports.0: Input should be a valid integer",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {app: a}, port: [80]}\n",
            "policy 'deny-sleep' (entry 2): port: unknown field",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {app: a}, from: {principal: [x]}}\n",
            "policy 'deny-sleep' (entry 2): from.principal: unknown field",
        ),
        (
            "  - {name: deny-sleep, action: DENY, selector: {group: " + "g" * 41 + "}}\n",
            "policy 'deny-sleep' (entry 2): selector.group: ",
        ),
        ("  - {action: DENY, selector: {app: a}}\n", "policy entry 2: name: Field required"),
        ("  - just-a-string\n", "policy entry 2: "),
    ],
)
def test_invalid_entry_is_named(bad: str, expected: str) -> None:
    with pytest.raises(PermanentError) as caught:
        parse_policies(policies_yaml(GOOD, bad), source="policy file p.yaml")
    assert caught.value.reason.startswith("policy file p.yaml: ")
    assert expected in caught.value.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policies: [\n", "not valid YAML"),
        ("- name: x\n", "expected a mapping with a `policies` list"),
        ("policy: []\n", "policy: unknown field"),
        ("policies: {name: x}\n", "policies: "),
    ],
)
def test_invalid_file_shape(text: str, expected: str) -> None:
    with pytest.raises(PermanentError, match="policy file") as caught:
        parse_policies(text)
    assert expected in caught.value.reason


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="cannot read"):
        load_policy_file(tmp_path)  # a directory


# Against the API emulator -------------------------------------------------------------


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[Kube]:
    api = Kube(load_api_client(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    return tmp_path / "policies.yaml"


def names(kube: Kube, namespace: str) -> set[str]:
    items, _ = kube.list(AUTHORIZATION_POLICIES, namespace=namespace)
    return {item["metadata"]["name"] for item in items}


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def write(path: Path, text: str) -> None:
    # Write-then-rename, as editors and the kubelet's atomic writer do.
    staged = path.with_suffix(".tmp")
    staged.write_text(text)
    staged.replace(path)


def test_sync_applies_then_prunes_removed_entries(
    kube: Kube, kube_namespace: str, policy_path: Path
) -> None:
    write(policy_path, policies_yaml(simple("one"), simple("two", action="ALLOW")))
    sync = PolicySync(kube, namespace=kube_namespace, path=policy_path)
    result = sync.sync()
    assert result.ok
    assert result.applied == ("pimesh-one", "pimesh-two")
    assert names(kube, kube_namespace) == {"pimesh-one", "pimesh-two"}
    stored = kube.get(AUTHORIZATION_POLICIES, "pimesh-two", namespace=kube_namespace)
    expected = render(entry(name="two", action="ALLOW", ports=[8080]), kube_namespace)
    assert stored["spec"] == expected["spec"]
    assert stored["metadata"]["labels"] == expected["metadata"]["labels"]

    write(policy_path, policies_yaml(simple("two", action="ALLOW")))
    result = sync.sync()
    assert result.deleted == ("pimesh-one",)
    assert names(kube, kube_namespace) == {"pimesh-two"}
    assert sync.status().syncs == 2
    assert sync.status().policies == ("pimesh-two",)


def test_a_changed_entry_converges(kube: Kube, kube_namespace: str, policy_path: Path) -> None:
    write(policy_path, policies_yaml(simple("one")))
    sync = PolicySync(kube, namespace=kube_namespace, path=policy_path)
    sync.sync()
    write(policy_path, policies_yaml(simple("one", action="ALLOW", ports="[]")))
    sync.sync()
    stored = kube.get(AUTHORIZATION_POLICIES, "pimesh-one", namespace=kube_namespace)
    # Server-side apply drops what we no longer apply: the `to` part is gone.
    assert stored["spec"]["action"] == "ALLOW"
    assert stored["spec"]["rules"] == [{}]


def test_invalid_edit_changes_nothing_and_reports(
    kube: Kube, kube_namespace: str, policy_path: Path
) -> None:
    write(policy_path, policies_yaml(simple("one"), simple("two")))
    sync = PolicySync(kube, namespace=kube_namespace, path=policy_path)
    sync.sync()
    before = kube.list(AUTHORIZATION_POLICIES, namespace=kube_namespace)[0]

    # Drops "two" *and* breaks "one": refused whole, so "two" is not deleted either.
    write(policy_path, policies_yaml(simple("one", ports="[0]")))
    result = sync.sync()
    assert not result.ok
    assert result.error is not None
    assert "policy 'one' (entry 1): ports.0" in result.error
    assert kube.list(AUTHORIZATION_POLICIES, namespace=kube_namespace)[0] == before
    status = sync.status()
    assert status.last_error == result.error
    assert (status.syncs, status.failures) == (1, 1)

    write(policy_path, policies_yaml(simple("one")))
    assert sync.sync().ok
    assert sync.status().last_error is None
    assert names(kube, kube_namespace) == {"pimesh-one"}


def test_removing_the_file_deletes_only_pimesh_policies(
    kube: Kube, kube_namespace: str, policy_path: Path
) -> None:
    foreign = render(entry(name="theirs"), kube_namespace)
    foreign["metadata"] = {"name": "theirs", "namespace": kube_namespace}
    kube.apply(foreign)
    # Made by pimesh but not from the policy file: not ours to prune either.
    other = render(entry(name="other"), kube_namespace)
    other["metadata"] = {"name": "other", "namespace": kube_namespace, "labels": MANAGED}
    kube.apply(other)
    write(policy_path, policies_yaml(simple("one"), simple("two")))
    sync = PolicySync(kube, namespace=kube_namespace, path=policy_path)
    sync.sync()
    assert names(kube, kube_namespace) == {"theirs", "other", "pimesh-one", "pimesh-two"}

    policy_path.unlink()
    result = sync.sync()
    assert result.ok
    assert sorted(result.deleted) == ["pimesh-one", "pimesh-two"]
    assert names(kube, kube_namespace) == {"theirs", "other"}


def test_no_policy_file_configured_means_no_policies(kube: Kube, kube_namespace: str) -> None:
    kube.apply(render(entry(name="left-over"), kube_namespace))
    result = PolicySync(kube, namespace=kube_namespace, path=None).sync()
    assert result.deleted == ("pimesh-left-over",)
    assert names(kube, kube_namespace) == set()


def test_polling_thread_follows_the_file(
    kube: Kube, kube_namespace: str, policy_path: Path
) -> None:
    write(policy_path, policies_yaml(simple("one"), simple("two")))
    sync = PolicySync(kube, namespace=kube_namespace, path=policy_path, poll_interval_s=0.05)
    sync.start()
    try:
        wait_until(lambda: names(kube, kube_namespace) == {"pimesh-one", "pimesh-two"})
        write(policy_path, policies_yaml(simple("two")))
        wait_until(lambda: names(kube, kube_namespace) == {"pimesh-two"})
        write(policy_path, policies_yaml(simple("Two")))
        wait_until(lambda: sync.status().last_error is not None)
        assert "(entry 1): name:" in str(sync.status().last_error)
        assert names(kube, kube_namespace) == {"pimesh-two"}
        policy_path.unlink()
        wait_until(lambda: names(kube, kube_namespace) == set())
        assert sync.status().last_error is None
    finally:
        sync.stop()


def test_resync_repairs_drift(kube: Kube, kube_namespace: str, policy_path: Path) -> None:
    write(policy_path, policies_yaml(simple("one")))
    sync = PolicySync(
        kube, namespace=kube_namespace, path=policy_path, poll_interval_s=0.05, resync_s=0.1
    )
    sync.start()
    try:
        wait_until(lambda: names(kube, kube_namespace) == {"pimesh-one"})
        kube.delete(AUTHORIZATION_POLICIES, "pimesh-one", namespace=kube_namespace)
        wait_until(lambda: names(kube, kube_namespace) == {"pimesh-one"})
    finally:
        sync.stop()


def test_thread_survives_an_unreachable_api(tmp_path: Path, policy_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    kube = Kube(load_api_client(kubeconfig), timeout_s=2.0)
    write(policy_path, policies_yaml(simple("one")))
    sync = PolicySync(kube, namespace="pi-fleet", path=policy_path, poll_interval_s=0.05)
    sync.start()
    try:
        # Retried on every tick although the file did not change, and the thread lives on.
        wait_until(lambda: sync.status().failures >= 2, timeout_s=20)
        assert sync.status().syncs == 0
        assert "127.0.0.1" in str(sync.status().last_error)
    finally:
        sync.stop()
        kube.close()
