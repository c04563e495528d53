"""The policy file (`--policy-file`, PROTOCOL.md): its entries, and the objects they become.

Every entry of the file becomes an AuthorizationPolicy `pimesh-NAME` (security.istio.io/v1)
in the fleet namespace; the file is the desired state, so an entry removed from it (or the
whole file removed) deletes the pimesh-managed policies it no longer names. An invalid file
is refused whole, with the offending entry named, and changes nothing in the cluster: a
half-applied policy set could open exactly the traffic a DENY entry was written to stop.

Rendering follows Istio's AuthorizationPolicy reference: a rule matches when all its parts
match, and a rule with no parts (`rules: [{}]`) matches every request, so an entry with
neither `from` nor `ports` applies its action to all traffic reaching the selected
workloads (ALLOW: allow all, DENY: deny all). An empty `rules` list would instead match
nothing, which for ALLOW silently denies everything; that is never rendered.

ztunnel enforces ALLOW and DENY at L4 (principals, namespaces, ports). AUDIT is valid in
the CRD (its `action` enum is ALLOW, DENY, AUDIT, CUSTOM) but istiod does not hand AUDIT
policies to ztunnel (pilot's ambient `convertAuthorizationPolicy` skips every action but
ALLOW and DENY); only a waypoint with an audit provider acts on it.
"""

import logging
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.errors import PermanentError
from controller.resources import DEVICE_LABEL, GROUP_LABEL_PREFIX, MANAGED_BY
from shared.fields import DeviceId, DnsLabel

log = logging.getLogger(__name__)

Manifest = dict[str, Any]

POLICY_LABEL = "pimesh.io/policy"
NAME_PREFIX = "pimesh-"
# Ours: made by pimesh *and* from the policy file; other pimesh objects are not touched.
MANAGED_POLICIES = ",".join([*(f"{k}={v}" for k, v in MANAGED_BY.items()), POLICY_LABEL])
_MAX_OBJECT_NAME = 63  # the rendered name is also a label value: at most 63 characters


def _fits_object_name(name: str) -> str:
    if len(NAME_PREFIX + name) > _MAX_OBJECT_NAME:
        limit = _MAX_OBJECT_NAME - len(NAME_PREFIX)
        msg = f"too long: at most {limit} characters, so that `{NAME_PREFIX}NAME` is a valid name"
        raise ValueError(msg)
    return name


PolicyName = Annotated[DnsLabel, AfterValidator(_fits_object_name)]
Peer = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
_MODEL = ConfigDict(frozen=True, extra="forbid")
# pydantic's wording where it would puzzle someone editing YAML (which has no tuples).
_MESSAGES = {
    "extra_forbidden": "unknown field",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "tuple_type": "expected a list",
}


class Selector(BaseModel):
    """Which workloads a policy applies to: exactly one of an app, a group or a device."""

    model_config = _MODEL

    app: DnsLabel | None = None
    group: DeviceId | None = None
    device: DeviceId | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum(value is not None for value in (self.app, self.group, self.device)) != 1:
            msg = "give exactly one of app, group, device"
            raise ValueError(msg)
        return self

    def match_labels(self) -> dict[str, str]:
        """The WorkloadEntry labels (controller.resources.workload_labels) to select on."""
        if self.app is not None:
            return {"app": self.app}
        if self.group is not None:
            return {GROUP_LABEL_PREFIX + self.group: "true"}
        return {DEVICE_LABEL: str(self.device)}


class Source(BaseModel):
    """Where traffic comes from; both lists empty means from anywhere."""

    model_config = _MODEL

    principals: tuple[Peer, ...] = ()
    namespaces: tuple[Peer, ...] = ()


class PolicyEntry(BaseModel):
    """One entry of the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True)

    name: PolicyName
    action: Literal["ALLOW", "DENY", "AUDIT"]
    selector: Selector
    from_: Source = Field(default_factory=Source, alias="from")
    ports: tuple[Port, ...] = ()


class PolicyFile(BaseModel):
    """The whole file: `policies:` and nothing else."""

    model_config = _MODEL

    policies: tuple[PolicyEntry, ...] = ()

    @field_validator("policies", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        # `policies:` with nothing under it is YAML null: no policies, like `policies: []`.
        return () if value is None else value

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        first_seen: dict[str, int] = {}
        for number, entry in enumerate(self.policies, start=1):
            if entry.name in first_seen:
                msg = (
                    f"policy {entry.name!r} (entries {first_seen[entry.name]} and {number}): "
                    "name used twice"
                )
                raise ValueError(msg)
            first_seen[entry.name] = number
        return self


def load_policy_file(path: Path) -> list[PolicyEntry]:
    """Read the policy file; a missing or empty file means no policies.

    Removing the whole file is how an operator deletes every pimesh policy at once.

    Raises:
        PermanentError: the file cannot be read or is invalid; the reason names the
            offending entry (`policy 'deny-sleep' (entry 1): selector: ...`).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"policy file {path}: cannot read it: {exc}"
        raise PermanentError(msg) from exc
    return parse_policies(text, source=f"policy file {path}")


def parse_policies(text: str, *, source: str = "policy file") -> list[PolicyEntry]:
    """Parse the text of a policy file; `source` starts every error reason.

    Raises:
        PermanentError: not YAML, or not a valid policy file.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{source}: not valid YAML: {' '.join(str(exc).split())}"
        raise PermanentError(msg) from exc
    if data is None:
        return []
    if not isinstance(data, dict):
        msg = f"{source}: expected a mapping with a `policies` list"
        raise PermanentError(msg)
    try:
        return list(PolicyFile.model_validate(data).policies)
    except ValidationError as exc:
        msg = f"{source}: {_describe(exc, data)}"
        raise PermanentError(msg) from exc


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    """Turn pydantic's errors into `policy 'NAME' (entry N): field: problem; ...`."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        where, label = loc, ""
        if loc[:1] == ("policies",) and len(loc) > 1 and isinstance(loc[1], int):
            where, label = loc[2:], _entry_label(data.get("policies"), loc[1]) + ": "
        field = ".".join(str(part) for part in where)
        message = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
        problems.append(f"{label}{field}: {message}" if field else f"{label}{message}")
    return "; ".join(problems)


def _entry_label(entries: object, index: int) -> str:
    raw = entries[index] if isinstance(entries, list) and index < len(entries) else None
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str) and name:
        return f"policy {name!r} (entry {index + 1})"
    return f"policy entry {index + 1}"


def policy_name(entry: PolicyEntry) -> str:
    """The AuthorizationPolicy's name: `pimesh-NAME`."""
    return NAME_PREFIX + entry.name


def render(entry: PolicyEntry, namespace: str) -> Manifest:
    """The AuthorizationPolicy for one entry, ready for server-side apply."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": policy_name(entry),
            "namespace": namespace,
            "labels": {**MANAGED_BY, POLICY_LABEL: entry.name},
        },
        "spec": {
            "selector": {"matchLabels": entry.selector.match_labels()},
            "action": entry.action,
            "rules": [_rule(entry)],
        },
    }


def _rule(entry: PolicyEntry) -> Manifest:
    """One rule with its empty parts left out; `{}` matches every request (Istio semantics)."""
    rule: Manifest = {}
    source: Manifest = {}
    if entry.from_.principals:
        source["principals"] = list(entry.from_.principals)
    if entry.from_.namespaces:
        source["namespaces"] = list(entry.from_.namespaces)
    if source:
        rule["from"] = [{"source": source}]
    if entry.ports:
        # The CRD types operation.ports as strings.
        rule["to"] = [{"operation": {"ports": [str(port) for port in entry.ports]}}]
    return rule
