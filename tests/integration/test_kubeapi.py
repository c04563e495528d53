"""The Kubernetes API emulator, driven by the official kubernetes client over HTTP."""

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from sandbox.kubeapi import KubeApiServer
from tests.harness.kubeapi import EDGE_DEVICE_CRD

pytestmark = pytest.mark.timeout(30)

GROUP, VERSION, PLURAL = "pimesh.io", "v1alpha1", "edgedevices"
APPLY = "application/apply-patch+yaml"


def meta(name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "labels": labels} if labels else {"name": name}


def api_error(exc_info: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc_info.value.body or "{}")
    return body


def edge_device(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDevice",
        "metadata": meta(name),
        "spec": spec,
    }


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


# The generated client types every model field as Optional and every body as a model;
# the tests read its answers loosely (Any) rather than None-check each attribute.
@pytest.fixture
def core(kube_client: client.ApiClient) -> Any:
    return client.CoreV1Api(kube_client)


@pytest.fixture
def custom(kube_client: client.ApiClient) -> Any:
    return client.CustomObjectsApi(kube_client)


def watch_events(list_fn: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    events: Iterator[dict[str, Any]] = watch.Watch().stream(list_fn, *args, **kwargs)  # type: ignore[no-untyped-call]
    return events


def test_create_namespace_answers_201_with_server_fields(
    core: Any, kube_api: KubeApiServer, namespace: str
) -> None:
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    created, status, _ = core.create_namespace_with_http_info(body)
    try:
        assert status == 201
        assert created.metadata.uid
        assert int(created.metadata.resource_version) > 0
        assert created.metadata.creation_timestamp is not None
        assert created.metadata.generation == 1
        assert created.status.phase == "Active"
        assert namespace in [ns.metadata.name for ns in core.list_namespace().items]
        sa = core.create_namespaced_service_account(namespace, {"metadata": meta("robot")})
        assert sa.metadata.namespace == namespace
        assert int(sa.metadata.resource_version) > int(created.metadata.resource_version)
    finally:
        core.delete_namespace(namespace)
    assert kube_api.get_object("v1", "serviceaccounts", "robot", namespace=namespace) is None


def test_missing_objects_and_duplicates_answer_kubernetes_statuses(
    core: Any, kube_namespace: str
) -> None:
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", kube_namespace)
    assert missing.value.status == 404
    status = api_error(missing)
    assert {k: status[k] for k in ("kind", "status", "reason", "code", "message")} == {
        "kind": "Status",
        "status": "Failure",
        "reason": "NotFound",
        "code": 404,
        "message": 'configmaps "nope" not found',
    }
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("twice")})
    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_config_map(kube_namespace, {"metadata": meta("twice")})
    assert (duplicate.value.status, api_error(duplicate)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map(f"{kube_namespace}-absent", {"metadata": meta("x")})
    assert no_namespace.value.status == 404


def test_list_filters_by_label_and_field_selectors(core: Any, kube_namespace: str) -> None:
    for name, labels in {
        "a": {"app": "led", "tier": "edge"},
        "b": {"app": "led", "tier": "core"},
        "c": {"app": "web"},
        "d": {},
    }.items():
        core.create_namespaced_config_map(kube_namespace, {"metadata": meta(name, **labels)})

    def names(**kwargs: str) -> list[str]:
        found = core.list_namespaced_config_map(kube_namespace, **kwargs).items
        return sorted(cm.metadata.name for cm in found)

    assert names() == ["a", "b", "c", "d"]
    assert names(label_selector="app=led") == ["a", "b"]
    assert names(label_selector="app==led,tier=core") == ["b"]
    assert names(label_selector="app!=led") == ["c", "d"]
    assert names(label_selector="tier in (edge, core),app") == ["a", "b"]
    assert names(label_selector="tier notin (edge)") == ["b", "c", "d"]
    assert names(label_selector="!app") == ["d"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c", label_selector="app") == ["a", "b"]
    everywhere = core.list_config_map_for_all_namespaces(label_selector="app=web").items
    assert [(cm.metadata.namespace, cm.metadata.name) for cm in everywhere] == [
        (kube_namespace, "c")
    ]


def test_put_with_a_stale_resource_version_conflicts(core: Any, kube_namespace: str) -> None:
    first = core.create_namespaced_config_map(
        kube_namespace, {"metadata": meta("cm"), "data": {"k": "1"}}
    )
    first.data = {"k": "2"}
    second = core.replace_namespaced_config_map("cm", kube_namespace, first)
    assert second.data == {"k": "2"}
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert second.metadata.uid == first.metadata.uid
    assert second.metadata.generation == 2

    first.data = {"k": "stale"}
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("cm", kube_namespace, first)
    assert (stale.value.status, api_error(stale)["reason"]) == (409, "Conflict")
    assert core.read_namespaced_config_map("cm", kube_namespace).data == {"k": "2"}


def test_patch_flavours(core: Any, kube_namespace: str) -> None:
    created = core.create_namespaced_config_map(
        kube_namespace,
        {"metadata": meta("cm", keep="yes", drop="yes"), "data": {"a": "1", "b": "2"}},
    )
    merged = core.patch_namespaced_config_map(
        "cm",
        kube_namespace,
        {"metadata": {"labels": {"drop": None}}, "data": {"b": None, "c": "3"}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels == {"keep": "yes"}
    assert merged.data == {"a": "1", "c": "3"}
    assert int(merged.metadata.resource_version) > int(created.metadata.resource_version)

    same = core.patch_namespaced_config_map("cm", kube_namespace, {"data": {"a": "1"}})
    assert same.metadata.resource_version == merged.metadata.resource_version  # no-op write

    patched = core.patch_namespaced_config_map(
        "cm", kube_namespace, [{"op": "replace", "path": "/data/a", "value": "9"}]
    )
    assert patched.data == {"a": "9", "c": "3"}
    with pytest.raises(ApiException) as failed_test:
        core.patch_namespaced_config_map(
            "cm", kube_namespace, [{"op": "test", "path": "/data/a", "value": "1"}]
        )
    assert failed_test.value.status == 422


def test_server_side_apply_creates_then_updates_a_custom_object(
    custom: Any, kube_api: KubeApiServer, kube_namespace: str
) -> None:
    def apply(body: dict[str, Any]) -> Any:
        return custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, "pi-1", body,
            _content_type=APPLY, field_manager="pimesh", force=True,
        )  # fmt: skip

    # The generated client only deserialises 200: on 201 it returns None (DESIGN.md).
    assert apply(edge_device("pi-1", app="led", approved=False)) is None
    assert kube_api.requests[-1].status == 201
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "pi-1")
    assert stored["spec"] == {"app": "led", "approved": False}
    assert stored["metadata"]["namespace"] == kube_namespace

    updated = apply(edge_device("pi-1", app="led", approved=True))
    assert kube_api.requests[-1].status == 200
    assert updated["spec"] == {"app": "led", "approved": True}
    assert updated["metadata"]["uid"] == stored["metadata"]["uid"]
    assert updated["metadata"]["generation"] == 2

    # Apply owns what it set: a field the manager stops applying is removed.
    assert apply(edge_device("pi-1", approved=True))["spec"] == {"approved": True}
    with pytest.raises(ApiException) as no_manager:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, "pi-1", edge_device("pi-1"), _content_type=APPLY
        )
    assert no_manager.value.status == 400


def test_server_side_apply_of_a_service_account(
    core: Any, kube_api: KubeApiServer, kube_namespace: str
) -> None:
    def apply(labels: dict[str, str]) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "pi-1", "labels": labels},
        }
        return core.patch_namespaced_service_account(
            "pi-1", kube_namespace, body, _content_type=APPLY, field_manager="pimesh", force=True
        )

    created = apply({"app": "led"})
    assert kube_api.requests[-1].status == 201
    assert created.metadata.labels == {"app": "led"}
    again = apply({"app": "led"})
    assert kube_api.requests[-1].status == 200
    assert again.metadata.resource_version == created.metadata.resource_version
    assert apply({"app": "web"}).metadata.labels == {"app": "web"}


def test_status_subresource_separates_spec_and_status(custom: Any, kube_namespace: str) -> None:
    body = edge_device("pi-1", app="led") | {"status": {"phase": "Ignored"}}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, body)
    assert "status" not in created  # dropped on create, as for any CRD with a status subresource

    with_status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, PLURAL, "pi-1",
        {"status": {"phase": "Pending"}, "spec": {"app": "ignored"}},
    )  # fmt: skip
    assert with_status["status"] == {"phase": "Pending"}
    assert with_status["spec"] == {"app": "led"}
    assert with_status["metadata"]["generation"] == 1  # status writes never bump generation

    main = custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "pi-1",
        {"status": {"phase": "Ignored"}, "spec": {"approved": True}},
    )  # fmt: skip
    assert main["status"] == {"phase": "Pending"}
    assert main["spec"] == {"app": "led", "approved": True}
    assert main["metadata"]["generation"] == 2

    main["status"] = {"phase": "Enrolled"}
    replaced = custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, PLURAL, "pi-1", main
    )
    assert replaced["status"] == {"phase": "Enrolled"}
    fetched = custom.get_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, PLURAL, "pi-1"
    )
    assert fetched["status"] == {"phase": "Enrolled"}


def test_token_request_mints_distinct_bound_tokens(
    core: Any, kube_api: KubeApiServer, kube_namespace: str
) -> None:
    sa = core.create_namespaced_service_account(kube_namespace, {"metadata": meta("pi-1")})
    request = {"spec": {"audiences": ["istio-ca"], "expirationSeconds": 7200}}
    first = core.create_namespaced_service_account_token("pi-1", kube_namespace, request)
    second = core.create_namespaced_service_account_token("pi-1", kube_namespace, request)
    assert first.status.token != second.status.token

    claims = jwt_claims(first.status.token)
    assert claims["aud"] == ["istio-ca"]
    assert claims["sub"] == f"system:serviceaccount:{kube_namespace}:pi-1"
    assert claims["exp"] - claims["iat"] == 7200
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "pi-1", "uid": sa.metadata.uid}
    assert int(first.status.expiration_timestamp.timestamp()) == claims["exp"]
    signed, _, signature = first.status.token.rpartition(".")
    kube_api.token_public_key.verify(
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        signed.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    issued = [t for t in kube_api.issued_tokens if t.namespace == kube_namespace]
    assert [(t.service_account, t.audiences) for t in issued] == [("pi-1", ("istio-ca",))] * 2
    assert issued[0].token not in repr(issued[0])

    with pytest.raises(ApiException) as too_short:
        core.create_namespaced_service_account_token(
            "pi-1", kube_namespace, {"spec": {"audiences": ["x"], "expirationSeconds": 599}}
        )
    assert (too_short.value.status, api_error(too_short)["reason"]) == (422, "Invalid")
    with pytest.raises(ApiException) as unknown:
        core.create_namespaced_service_account_token("ghost", kube_namespace, request)
    assert unknown.value.status == 404


def test_watch_replays_from_a_resource_version_and_streams_live(
    core: Any, kube_namespace: str
) -> None:
    start = core.list_namespaced_config_map(kube_namespace).metadata.resource_version
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("cm", app="led")})
    core.patch_namespaced_config_map("cm", kube_namespace, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("cm", kube_namespace)
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("other")})

    seen: list[tuple[str, str]] = []
    live = threading.Event()

    def consume() -> None:
        stream = watch_events(
            core.list_namespaced_config_map, kube_namespace,
            resource_version=start, label_selector="app=led", timeout_seconds=5,
        )  # fmt: skip
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 4:
                live.set()
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("late", app="led")})
    assert live.wait(10)
    consumer.join(10)
    assert seen == [("ADDED", "cm"), ("MODIFIED", "cm"), ("DELETED", "cm"), ("ADDED", "late")]


def test_watch_without_resource_version_starts_with_the_current_state(
    core: Any, kube_namespace: str
) -> None:
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("a")})
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("b")})
    events = watch_events(core.list_namespaced_config_map, kube_namespace, timeout_seconds=1)
    assert sorted((e["type"], e["object"].metadata.name) for e in events) == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]


def test_deleting_an_owner_collects_its_dependents(core: Any, kube_namespace: str) -> None:
    owners = [
        core.create_namespaced_config_map(kube_namespace, {"metadata": meta(name)})
        for name in ("owner-1", "owner-2")
    ]
    refs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name, "uid": o.metadata.uid}
        for o in owners
    ]
    core.create_namespaced_secret(
        kube_namespace, {"metadata": {"name": "only-1", "ownerReferences": refs[:1]}}
    )
    core.create_namespaced_secret(
        kube_namespace, {"metadata": {"name": "both", "ownerReferences": refs}}
    )
    core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "grandchild", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Secret", "name": "only-1",
             "uid": core.read_namespaced_secret("only-1", kube_namespace).metadata.uid},
        ]}},
    )  # fmt: skip

    def remaining() -> list[str]:
        secrets = core.list_namespaced_secret(kube_namespace).items
        maps = core.list_namespaced_config_map(kube_namespace).items
        return sorted(o.metadata.name for o in [*secrets, *maps])

    core.delete_namespaced_config_map("owner-1", kube_namespace)
    assert remaining() == ["both", "owner-2"]
    core.delete_namespaced_config_map("owner-2", kube_namespace)
    assert remaining() == []


def test_finalizers_hold_deletion_and_secrets_fold_string_data(
    core: Any, kube_namespace: str
) -> None:
    core.create_namespaced_secret(
        kube_namespace,
        {"metadata": {"name": "s", "finalizers": ["pimesh.io/cleanup"]}, "stringData": {"k": "v"}},
    )
    assert core.read_namespaced_secret("s", kube_namespace).data == {"k": "dg=="}
    core.delete_namespaced_secret("s", kube_namespace)
    held = core.read_namespaced_secret("s", kube_namespace)
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_secret(
        "s", kube_namespace, {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_secret("s", kube_namespace)
    assert gone.value.status == 404


def test_injected_faults_reach_the_client_as_api_exceptions(
    core: Any, kube_api: KubeApiServer, kube_namespace: str
) -> None:
    path = f"/namespaces/{kube_namespace}/configmaps"
    kube_api.inject(method="POST", path_regex=path, status=429, retry_after=3, times=1)
    kube_api.inject(method="GET", path_regex=path, status=500, times=2)
    with pytest.raises(ApiException) as throttled:
        core.create_namespaced_config_map(kube_namespace, {"metadata": meta("cm")})
    assert throttled.value.status == 429
    assert (throttled.value.headers or {})["Retry-After"] == "3"
    core.create_namespaced_config_map(kube_namespace, {"metadata": meta("cm")})  # used up
    for _ in range(2):
        with pytest.raises(ApiException) as failing:
            core.read_namespaced_config_map("cm", kube_namespace)
        assert failing.value.status == 500
    assert core.read_namespaced_config_map("cm", kube_namespace).metadata.name == "cm"

    mine = [r for r in kube_api.requests if path in r.path]
    assert [(r.method, r.status, r.injected) for r in mine] == [
        ("POST", 429, True),
        ("POST", 201, False),
        ("GET", 500, True),
        ("GET", 500, True),
        ("GET", 200, False),
    ]


@pytest.fixture
def fresh_api(tmp_path: Path) -> Iterator[tuple[KubeApiServer, client.ApiClient]]:
    with KubeApiServer(strict_namespaces=False) as server:
        kubeconfig_path = server.write_kubeconfig(tmp_path / "kc")
        api_client: client.ApiClient = config.new_client_from_config(str(kubeconfig_path))  # type: ignore[no-untyped-call]
        yield server, api_client
        api_client.close()  # type: ignore[no-untyped-call]


def test_creating_a_crd_serves_its_resource(
    fresh_api: tuple[KubeApiServer, client.ApiClient], namespace: str
) -> None:
    server, api_client = fresh_api
    custom: Any = client.CustomObjectsApi(api_client)
    extensions: Any = client.ApiextensionsV1Api(api_client)
    with pytest.raises(ApiException) as unknown:
        custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert unknown.value.status == 404

    crd = yaml.safe_load(EDGE_DEVICE_CRD.read_text())
    created = extensions.create_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in created.status.conditions}
    assert conditions["Established"] == "True"
    resources = custom.get_api_resources(GROUP, VERSION).resources
    assert {(r.name, r.kind, r.namespaced) for r in resources} >= {
        ("edgedevices", "EdgeDevice", True),
        ("edgedevices/status", "EdgeDevice", True),
    }

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, edge_device("pi-1"))
    assert server.get_object(f"{GROUP}/{VERSION}", PLURAL, "pi-1", namespace=namespace) is not None
    extensions.delete_custom_resource_definition(crd["metadata"]["name"])
    with pytest.raises(ApiException) as removed:
        custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert removed.value.status == 404


def test_register_resource_and_stop_with_an_open_watch(
    fresh_api: tuple[KubeApiServer, client.ApiClient], namespace: str
) -> None:
    server, api_client = fresh_api
    server.register_resource("example.io", "v1", "widgets", "Widget")
    custom: Any = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        "example.io",
        "v1",
        namespace,
        "widgets",
        {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": meta("w")},
    )
    response = custom.list_namespaced_custom_object(
        "example.io", "v1", namespace, "widgets", watch=True, _preload_content=False
    )
    first = json.loads(response.readline())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "w")
    server.stop()  # must not hang on the open stream
    response.release_conn()
