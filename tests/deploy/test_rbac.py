"""The controller's RBAC grants exactly what its code calls: every call covered, nothing more.

Every Kubernetes API call of the controller goes through `controller.kube.Kube`. This test
reads controller/*.py with `ast`, finds every call of a Kube method, works out which
resource, namespace and subresource it touches, maps the method to RBAC verbs, and
compares the result with the rules bound to the controller's ServiceAccount in
deploy/kubernetes/rbac.yaml. A new call site (or a new Kube method) that the Roles do not
grant fails here, and so does a grant no call needs.

How a call's resource is found:
- a Resource constant of controller.kube (`self._kube.list(SECRETS, ...)`);
- `self._resource` in controller/sources.py: the constant each list-watch class passes to
  `super().__init__`, in the namespaces the classes are constructed with;
- `apply(manifest)`: the kinds rendered in that module (functions of controller/resources.py
  and controller/policyfile.py returning a manifest literal), or the one renderer called in the
  argument itself (`apply(namespace_manifest(ns))`).
A call's namespace is istio-system when it passes `namespace=ISTIO_NAMESPACE`, the
cluster for non-namespaced resources, and the fleet namespace otherwise.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import controller.kube as kube_module
from controller.cluster import EASTWEST_SERVICE
from controller.kube import BY_KIND, NAMESPACES, SERVICE_ACCOUNTS, Kube, Resource
from controller.leader import DEFAULT_LEASE_NAME

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER = ROOT / "controller"
RBAC = ROOT / "deploy" / "kubernetes" / "rbac.yaml"
FLEET, ISTIO, CLUSTER = "pi-fleet", "istio-system", "(cluster)"
SERVICE_ACCOUNT = ("pimesh-controller", FLEET)

# Kube method -> RBAC verbs. Server-side apply is authorized as `patch`, and as `create`
# too when the object does not exist yet (kubernetes/kubernetes#64892).
VERBS = {
    "get": {"get"},
    "find": {"get"},
    "list": {"list"},
    "watch": {"watch"},
    "create": {"create"},
    "apply": {"patch", "create"},
    "merge_patch": {"patch"},
    "replace": {"update"},
    "delete": {"delete"},
    "request_token": {"create"},  # on serviceaccounts/token
}
RENDERER_MODULES = ("resources", "policyfile")

Grant = tuple[str, str, str, str]  # (namespace or CLUSTER, apiGroup, resource, verb)


@dataclass(frozen=True)
class CallSite:
    module: str
    line: int
    method: str
    call: ast.Call


def _parse(module: str) -> ast.Module:
    return ast.parse((CONTROLLER / f"{module}.py").read_text(), filename=f"{module}.py")


def _modules() -> list[str]:
    return sorted(p.stem for p in CONTROLLER.glob("*.py") if p.stem not in {"kube", "__init__"})


def _kube_methods() -> set[str]:
    public = {n for n, v in vars(Kube).items() if callable(v) and not n.startswith("_")}
    return public - {"close"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def call_sites() -> Iterator[CallSite]:
    methods = _kube_methods()
    for module in _modules():
        for node in ast.walk(_parse(module)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            if node.func.attr in methods and receiver.split(".")[-1].lstrip("_") == "kube":
                yield CallSite(module, node.lineno, node.func.attr, node)


def _constant(name: str) -> Resource | None:
    value = getattr(kube_module, name, None)
    return value if isinstance(value, Resource) else None


def renderers() -> dict[str, str]:
    """Function name -> kind, for functions returning a manifest literal."""
    kinds: dict[str, str] = {}
    for module in RENDERER_MODULES:
        for fn in _parse(module).body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Dict):
                    keys = {
                        k.value: v
                        for k, v in zip(node.keys, node.values, strict=True)
                        if isinstance(k, ast.Constant)
                    }
                    kind = keys.get("kind")
                    if {"apiVersion", "metadata"} <= keys.keys() and isinstance(kind, ast.Constant):
                        kinds[fn.name] = str(kind.value)
    return kinds


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local names of imported renderers: `from controller.resources import namespace as x`."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {
            f"controller.{m}" for m in RENDERER_MODULES
        }:
            for alias in node.names:
                names[alias.asname or alias.name] = alias.name
    return names


def _rendered_kinds(call: ast.Call, tree: ast.Module) -> set[str]:
    """Kinds a call may render: `resources.service(...)`, `render(...)`, an alias."""
    known, aliases = renderers(), _aliases(tree)
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    name = aliases.get(name, name)
    return {known[name]} if name in known else set()


def _by_kind(kind: str) -> Resource:
    return next(r for (_, k), r in BY_KIND.items() if k == kind)


def _applied_kinds(site: CallSite) -> set[str]:
    tree = _parse(site.module)
    argument = site.call.args[0]
    if isinstance(argument, ast.Call):
        return _rendered_kinds(argument, tree)
    # A manifest variable: every kind the module renders may reach it.
    return {
        k
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for k in _rendered_kinds(node, tree)
    }


def list_watch_classes() -> dict[str, Resource]:
    """sources.py: each list-watch class and the Resource it passes to super().__init__."""
    classes: dict[str, Resource] = {}
    for node in _parse("sources").body:
        if isinstance(node, ast.ClassDef):
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and ast.unparse(call.func) == "super().__init__":
                    resource = _constant(ast.unparse(call.args[1]))
                    assert resource is not None, f"{node.name}: unknown resource"
                    classes[node.name] = resource
    return classes


def _scope(namespace: ast.expr | None, resource: Resource) -> str:
    if not resource.namespaced:
        return CLUSTER
    return ISTIO if namespace is not None and ast.unparse(namespace) == "ISTIO_NAMESPACE" else FLEET


def _list_watch_targets() -> set[tuple[str, Resource]]:
    """(scope, resource) of every list-watch object the controller constructs."""
    classes = list_watch_classes()
    targets = set()
    for module in _modules():
        for node in ast.walk(_parse(module)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in classes:
                resource = classes[ast.unparse(node.func)]
                targets.add((_scope(_keyword(node, "namespace"), resource), resource))
    return targets


def targets(site: CallSite) -> set[tuple[str, Resource, str]]:
    """(scope, resource, subresource) a call touches."""
    call = site.call
    if site.method == "request_token":
        return {(FLEET, SERVICE_ACCOUNTS, "token")}
    if site.method == "apply":
        resources = {_by_kind(kind) for kind in _applied_kinds(site)}
        assert resources, f"{site.module}:{site.line}: cannot tell what apply() applies"
        return {(CLUSTER if not r.namespaced else FLEET, r, "") for r in resources}
    argument = ast.unparse(call.args[0])
    sub = _keyword(call, "subresource")
    subresource = str(sub.value) if isinstance(sub, ast.Constant) else ""
    if argument == "self._resource" and site.module == "sources":
        return {(scope, r, subresource) for scope, r in _list_watch_targets()}
    resource = _constant(argument)
    assert resource is not None, f"{site.module}:{site.line}: unknown resource {argument}"
    return {(_scope(_keyword(call, "namespace"), resource), resource, subresource)}


def needed() -> set[Grant]:
    grants: set[Grant] = set()
    for site in call_sites():
        for scope, resource, subresource in targets(site):
            plural = resource.plural + (f"/{subresource}" if subresource else "")
            verbs = VERBS[site.method]
            if resource == NAMESPACES:
                # deploy/kubernetes/namespace.yaml ships the Namespace: the controller's
                # apply only ever patches it (test_the_namespace_is_shipped checks that).
                verbs = verbs - {"create"}
            grants |= {(scope, resource.group, plural, verb) for verb in verbs}
    return grants


# what rbac.yaml grants ---------------------------------------------------------------------


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC.read_text()) if d]


def bound_rules() -> Iterator[tuple[str, dict[str, Any]]]:
    """(scope, rule) of every rule bound to the controller's ServiceAccount."""
    docs = _docs()
    roles = {
        (d["kind"], d["metadata"].get("namespace", CLUSTER), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in {"Role", "ClusterRole"}
    }
    for binding in (d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        subjects = {
            (s["name"], s["namespace"])
            for s in binding["subjects"]
            if s["kind"] == "ServiceAccount"
        }
        assert subjects == {SERVICE_ACCOUNT}, binding["metadata"]["name"]
        scope = binding["metadata"].get("namespace", CLUSTER)
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else CLUSTER, ref["name"])]
        for rule in role["rules"]:
            yield scope, rule


def granted() -> set[Grant]:
    return {
        (scope, group, resource, verb)
        for scope, rule in bound_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# tests ---------------------------------------------------------------------------------------


def test_every_kube_method_has_its_verbs() -> None:
    assert set(VERBS) == _kube_methods()


def test_the_scan_finds_the_known_call_sites() -> None:
    found = {(s.module, s.method) for s in call_sites()}
    assert {("admission", "list"), ("admission", "delete"), ("identity", "create")} <= found
    assert {("issuer", "request_token"), ("policy", "apply"), ("run", "apply")} <= found
    assert {("sources", "watch"), ("events", "create"), ("leader", "replace")} <= found
    assert renderers() == {
        "namespace": "Namespace",
        "service_account": "ServiceAccount",
        "workload_entry": "WorkloadEntry",
        "workload_group": "WorkloadGroup",
        "service": "Service",
        "render": "AuthorizationPolicy",
    }


def test_roles_grant_exactly_what_the_code_calls() -> None:
    need, have = needed(), granted()
    assert not need - have, f"calls without a grant: {sorted(need - have)}"
    assert not have - need, f"grants no call needs: {sorted(have - need)}"


def test_no_wildcards_anywhere() -> None:
    for doc in _docs():
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (doc["metadata"]["name"], field)


def test_secrets_only_for_the_controller_key_and_join_tokens() -> None:
    verbs = {verb for scope, group, resource, verb in granted() if resource == "secrets"}
    # get+create: the controller key Secret; list+delete: join tokens. Never watch/update.
    assert verbs == {"get", "create", "list", "delete"}
    assert {scope for scope, _, resource, _ in granted() if resource == "secrets"} == {FLEET}


def test_names_are_pinned_where_rbac_can_pin_them() -> None:
    pinned = {
        (scope, resource): (rule["resourceNames"], set(rule["verbs"]))
        for scope, rule in bound_rules()
        if "resourceNames" in rule
        for resource in rule["resources"]
    }
    assert pinned == {
        (CLUSTER, "namespaces"): ([FLEET], {"patch"}),
        (ISTIO, "services"): ([EASTWEST_SERVICE], {"get"}),
        (FLEET, "leases"): ([DEFAULT_LEASE_NAME], {"get", "update"}),
    }


def test_the_namespace_is_shipped() -> None:
    kustomization = yaml.safe_load((RBAC.parent / "kustomization.yaml").read_text())
    assert "namespace.yaml" in kustomization["resources"]
    namespace = yaml.safe_load((RBAC.parent / "namespace.yaml").read_text())
    assert (namespace["kind"], namespace["metadata"]["name"]) == ("Namespace", FLEET)
