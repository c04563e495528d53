"""PATCH semantics: JSON merge patch, JSON patch and a field-owning server-side apply.

kmock merges every PATCH body into the object as a plain dict merge, whatever its
content type, so `null` never deletes, JSON patch lists corrupt objects, and apply
never removes what a manager stopped applying. Implemented here:

- `application/merge-patch+json`: RFC 7386.
- `application/strategic-merge-patch+json`: treated as RFC 7386 (lists are replaced,
  not merged by key; enough for the objects pimesh writes).
- `application/json-patch+json`: RFC 6902 (add, remove, replace, move, copy, test).
- `application/apply-patch+yaml`: server-side apply, approximated per field manager:
  the applied configuration is merged in, and leaf fields the same manager applied
  last time but omits now are removed (KEP-555 ownership, without cross-manager
  conflict detection, so `force` changes nothing).
"""

import copy
from collections.abc import Iterable
from typing import Any

from sandbox.kubeapi.errors import InvalidError, UnsupportedMediaTypeError

MERGE, JSON_PATCH, APPLY = "merge", "json", "apply"
PATCH_KINDS = {
    "application/merge-patch+json": MERGE,
    "application/strategic-merge-patch+json": MERGE,
    "application/json-patch+json": JSON_PATCH,
    "application/apply-patch+yaml": APPLY,
}
# Set by the server, never owned by (or removed for) an applier.
_SERVER_OWNED_METADATA = frozenset(
    {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation"}
)

Path = tuple[str, ...]


def patch_kind(content_type: str) -> str:
    """Which patch flavour a Content-Type asks for (415 for unknown types)."""
    kind = PATCH_KINDS.get(content_type.split(";")[0].strip().lower())
    if kind is None:
        raise UnsupportedMediaTypeError(
            f"the body of the request was in an unknown format: {content_type}"
        )
    return kind


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, `null` deletes a member."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    """RFC 6901 JSON pointer tokens (`~1` is `/`, `~0` is `~`)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise InvalidError(f"invalid JSON pointer: {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    current = doc
    for token in tokens[:-1]:
        try:
            current = current[int(token)] if isinstance(current, list) else current[token]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise InvalidError(f"JSON patch path not found: /{'/'.join(tokens)}") from exc
    if not tokens:
        raise InvalidError("JSON patch may not target the whole document")
    return current, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path))
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise InvalidError(f"JSON patch path not found: {path}") from exc


def _add(doc: Any, path: str, value: Any) -> None:
    parent, last = _parent(doc, _pointer(path))
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise InvalidError(f"JSON patch cannot add below a scalar: {path}")


def _remove(doc: Any, path: str) -> Any:
    value = _get(doc, path)
    parent, last = _parent(doc, _pointer(path))
    del parent[int(last) if isinstance(parent, list) else last]
    return value


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch applied to a copy of `target`."""
    if not isinstance(operations, list):
        raise InvalidError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        match op.get("op"):
            case "add":
                _add(doc, op["path"], copy.deepcopy(op.get("value")))
            case "remove":
                _remove(doc, op["path"])
            case "replace":
                _remove(doc, op["path"])
                _add(doc, op["path"], copy.deepcopy(op.get("value")))
            case "move":
                _add(doc, op["path"], _remove(doc, op["from"]))
            case "copy":
                _add(doc, op["path"], copy.deepcopy(_get(doc, op["from"])))
            case "test" if _get(doc, op["path"]) != op.get("value"):
                raise InvalidError(f"JSON patch test failed at {op['path']}")
            case "test":
                pass
            case other:
                raise InvalidError(f"unknown JSON patch operation: {other!r}")
    return doc


def leaf_paths(obj: Any, prefix: Path = ()) -> frozenset[Path]:
    """Paths to every non-object value (lists and empty objects count as leaves)."""
    if not isinstance(obj, dict) or (not obj and prefix):
        return frozenset({prefix})
    paths: set[Path] = set()
    for key, value in obj.items():
        if prefix == ("metadata",) and key in _SERVER_OWNED_METADATA:
            continue
        paths |= leaf_paths(value, (*prefix, key))
    return frozenset(paths)


def _delete_path(obj: dict[str, Any], path: Path) -> None:
    """Remove one leaf, then prune the objects the removal left empty."""
    chain = [obj]
    for key in path[:-1]:
        child = chain[-1].get(key)
        if not isinstance(child, dict):
            return
        chain.append(child)
    chain[-1].pop(path[-1], None)
    for depth in range(len(chain) - 1, 0, -1):
        if not chain[depth]:
            chain[depth - 1].pop(path[depth - 1], None)


def server_side_apply(
    current: dict[str, Any] | None, applied: dict[str, Any], *, previous: Iterable[Path]
) -> tuple[dict[str, Any], frozenset[Path]]:
    """Apply a manager's configuration; returns the new object and the paths it now owns."""
    owned = leaf_paths(applied)
    result = copy.deepcopy(current or {})
    for path in sorted(set(previous) - owned, key=len, reverse=True):
        _delete_path(result, path)
    merged: dict[str, Any] = merge_patch(result, applied)
    return merged, owned
