"""Label and field selectors for list and watch, as kube-apiserver parses them.

kmock ignores `labelSelector` and `fieldSelector`, so a controller listing "the
objects pimesh manages" would see everything. Grammar and semantics follow
k8s.io/apimachinery/pkg/labels (`selector.go`): comma-separated requirements, all of
which must hold; `!=` and `notin` also match objects without the label.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.kubeapi.errors import BadRequestError

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"[-A-Za-z0-9_.]*"
_NOT_EXISTS = re.compile(rf"!\s*({_KEY})")
_SET = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)")
_EQUALITY = re.compile(rf"({_KEY})\s*(==|=|!=)\s*({_VALUE})")
_EXISTS = re.compile(_KEY)


@dataclass(frozen=True)
class Requirement:
    """One clause: `key` with operator `op` in {=, !=, in, notin, exists, !} over `values`."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this clause."""
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return present
            case "!":
                return not present
            case "=" | "in":
                return present and value in self.values
            case _:  # "!=" and "notin" also select objects lacking the key
                return not present or value not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `in (...)` value lists."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _parse_requirement(clause: str) -> Requirement:
    if match := _NOT_EXISTS.fullmatch(clause):
        return Requirement(match[1], "!")
    if match := _SET.fullmatch(clause):
        values = frozenset(v.strip() for v in match[3].split(",") if v.strip())
        return Requirement(match[1], match[2], values)
    if match := _EQUALITY.fullmatch(clause):
        op = "=" if match[2] == "==" else match[2]
        return Requirement(match[1], op, frozenset({match[3]}))
    if _EXISTS.fullmatch(clause):
        return Requirement(clause, "exists")
    raise BadRequestError(f"unable to parse requirement: {clause!r}")


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a `labelSelector` query value; empty means "everything"."""
    return tuple(_parse_requirement(clause) for clause in _split_top_level(text or ""))


@dataclass(frozen=True)
class FieldRequirement:
    """One `fieldSelector` clause: a dotted field path compared for (in)equality."""

    path: tuple[str, ...]
    value: str
    negated: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object's field (stringified, "" when absent) satisfies the clause."""
        current: Any = obj
        for part in self.path:
            current = current.get(part) if isinstance(current, Mapping) else None
        actual = "" if current is None else str(current)
        return (actual == self.value) != self.negated


def parse_field_selector(text: str | None) -> tuple[FieldRequirement, ...]:
    """Parse a `fieldSelector` (e.g. `metadata.name=foo`); only =, == and != exist."""
    requirements = []
    for clause in _split_top_level(text or ""):
        match = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", clause)
        if match is None:
            raise BadRequestError(f"invalid field selector: {clause!r}")
        path = tuple(match[1].split("."))
        requirements.append(FieldRequirement(path, match[3].strip(), match[2] == "!="))
    return tuple(requirements)


@dataclass(frozen=True)
class Selector:
    """A parsed label plus field selector, applied to whole objects."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> "Selector":
        """Build from a request's `labelSelector` and `fieldSelector` parameters."""
        return cls(
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
        )

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object is selected by every clause."""
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(
            f.matches(obj) for f in self.fields
        )
