"""How bytes become a message and back: the transport rules, decoding, encoding, schemas.

Receivers go through `decode`, which enforces the transport rules pydantic cannot see
(size, UTF-8, no floats, no nulls, no duplicate keys, bounded nesting; PROTOCOL.md,
Transport) and turns every failure into one `InvalidMessage` whose reason names the
field. Senders build models from `shared.messages` and call `encode`.

Signatures cover the canonical JSON of the object as received, minus `sig`, unknown
fields included (PROTOCOL.md, Device identity and signatures). `decode` therefore
remembers those bytes on each message it returns, and `signing_bytes` hands them to
`shared.crypto`; a message built locally is signed over its own wire form.
`wire_json_schema` describes that same wire form for third-party clients.
"""

import json
from collections.abc import Mapping
from typing import Any, Final, NoReturn, TypeVar

from pydantic import ConfigDict, SecretStr, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, core_schema

from shared.canonical import canonical_json
from shared.errors import InvalidMessage
from shared.fields import check_version, quoted
from shared.messages import MESSAGE_TYPES, BundleContent, Message, MessageBase, WireModel, kind_of

MAX_PAYLOAD_BYTES: Final = 65_536
"""Largest payload accepted or produced (PROTOCOL.md, Transport)."""

MAX_NESTING: Final = 32
"""Deepest nesting of lists and objects accepted; v1 needs 4, the rest is for new fields."""

M = TypeVar("M", bound=MessageBase)

# The adapter has its own validator: hide inputs there too, or a token could reach a log.
_MESSAGE_ADAPTER: Final[TypeAdapter[Message]] = TypeAdapter(
    Message, config=ConfigDict(hide_input_in_errors=True)
)


class _JsonRules:
    """json.loads hooks that enforce PROTOCOL.md's transport rules while parsing."""

    @staticmethod
    def no_float(text: str) -> NoReturn:
        msg = f"floats are not allowed ({quoted(text)}); use an integer"
        raise InvalidMessage(msg)

    @staticmethod
    def no_constant(text: str) -> NoReturn:
        msg = f"{text} is not allowed (not JSON, and no floats anyway)"
        raise InvalidMessage(msg)

    @staticmethod
    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                msg = f"key {quoted(key)} appears twice in one object"
                raise InvalidMessage(msg)
            result[key] = value
        return result


_JSON_TYPE_NAMES: Final[Mapping[type, str]] = {
    list: "array",
    str: "string",
    int: "number",
    bool: "boolean",
    type(None): "null",
}


def _render_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            continue
        elif part.isidentifier() or not text:
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _check_tree(root: Mapping[str, Any], *, name: str) -> None:
    """Refuse nulls anywhere and nesting deeper than MAX_NESTING (iteratively: no recursion)."""
    stack: list[tuple[object, tuple[int | str, ...]]] = [(root, (name,))]
    while stack:
        value, path = stack.pop()
        if value is None:
            where = _render_loc(path)
            msg = f"{where}: null is not allowed (leave out a field that has no value)"
            raise InvalidMessage(msg)
        if len(path) > MAX_NESTING:
            msg = f"payload is nested deeper than {MAX_NESTING} levels"
            raise InvalidMessage(msg)
        if isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))


def _load_object(payload: bytes) -> dict[str, Any]:
    """Parse a payload under the transport rules into a JSON object."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        msg = f"payload is {len(payload)} bytes, more than the limit of {MAX_PAYLOAD_BYTES}"
        raise InvalidMessage(msg)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        msg = "payload is not UTF-8"
        raise InvalidMessage(msg) from None
    try:
        obj = json.loads(
            text,
            parse_float=_JsonRules.no_float,
            parse_constant=_JsonRules.no_constant,
            object_pairs_hook=_JsonRules.unique_keys,
        )
    except json.JSONDecodeError as exc:
        msg = f"payload is not JSON ({exc.msg} at character {exc.pos})"
        raise InvalidMessage(msg) from None
    except (ValueError, RecursionError):
        # Integers beyond sys.get_int_max_str_digits(), or arrays nested past the stack.
        msg = "payload is not JSON that can be read safely"
        raise InvalidMessage(msg) from None
    if not isinstance(obj, dict):
        msg = f"payload is a JSON {_JSON_TYPE_NAMES.get(type(obj), 'value')}, not an object"
        raise InvalidMessage(msg)
    return obj


def _unsigned_canonical(obj: Mapping[str, Any]) -> bytes:
    """The canonical bytes of `obj` without `sig`: what the signature covers."""
    try:
        return canonical_json({key: value for key, value in obj.items() if key != "sig"})
    except UnicodeEncodeError:
        msg = "payload contains an unpaired UTF-16 surrogate escape"
        raise InvalidMessage(msg) from None


def _reason(exc: ValidationError, *, root: str = "") -> str:
    """One short sentence for the first problem pydantic found, naming the field."""
    # Only the first: later ones are often echoes of it (a bad item, then "too short").
    first = exc.errors(include_url=False)[0]
    loc = (root, *first["loc"]) if root else first["loc"]
    return f"{_render_loc(loc) or 'message'}: {_error_text(first)}"


def _error_text(error: ErrorDetails) -> str:
    ctx = error.get("ctx", {})
    if error["type"] in {"too_long", "too_short"}:
        unit = "characters" if isinstance(error.get("input"), str | SecretStr) else "items"
        bound = "at most" if error["type"] == "too_long" else "at least"
        limit = ctx.get("max_length", ctx.get("min_length"))
        return f"must have {bound} {limit} {unit}"
    text = error["msg"].removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


def _check_envelope(obj: Mapping[str, Any]) -> str:
    """Check `v` and `kind` first, so their reasons are the clearest ones; return the kind."""
    if "v" not in obj:
        msg = "v: missing (this is pimesh protocol version 1)"
        raise InvalidMessage(msg)
    try:
        check_version(obj["v"])
    except ValueError as exc:
        raise InvalidMessage(f"v: {exc}") from None
    if "kind" not in obj:
        msg = "kind: missing"
        raise InvalidMessage(msg)
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        msg = f"kind: unknown kind {quoted(kind)}"
        raise InvalidMessage(msg)
    return kind


def decode(payload: bytes) -> Message:
    """Turn a received payload into a message, or refuse it.

    Raises:
        InvalidMessage: for every way `payload` can fail to be a pimesh v1 message; its
            reason names the field, e.g. "announce.addresses[0]: '999.1.1.1' is not an
            IP address".
    """
    obj = _load_object(payload)
    _check_tree(obj, name=_check_envelope(obj))
    signed = _unsigned_canonical(obj)
    try:
        message = _MESSAGE_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        raise InvalidMessage(_reason(exc)) from exc
    message._signing_bytes = signed
    return message


def decode_as(payload: bytes, kind_cls: type[M]) -> M:
    """Decode a payload that must be of one kind (the kind its topic carries).

    Raises:
        InvalidMessage: the payload is invalid or of another kind.
    """
    message = decode(payload)
    if not isinstance(message, kind_cls):
        msg = f"kind: expected {kind_of(kind_cls)!r} here, got {message.kind!r}"
        raise InvalidMessage(msg)
    return message


def decode_bundle_content(plaintext: bytes) -> BundleContent:
    """Turn an opened bundle's plaintext into its content, or refuse it.

    Raises:
        InvalidMessage: the plaintext is not a valid bundle content; the reason never
            contains the token.
    """
    obj = _load_object(plaintext)
    _check_tree(obj, name="bundle_content")
    _unsigned_canonical(obj)
    try:
        return BundleContent.model_validate_json(plaintext)
    except ValidationError as exc:
        raise InvalidMessage(_reason(exc, root="bundle_content")) from exc


def to_wire(msg: MessageBase | BundleContent) -> dict[str, Any]:
    """The JSON object of a message as it goes on the wire: no nulls, secrets revealed."""
    return msg.model_dump(mode="json", exclude_none=True)


def encode(msg: MessageBase | BundleContent) -> bytes:
    """The compact UTF-8 JSON of a message, ready to publish (or to seal, for content).

    Raises:
        InvalidMessage: the result would exceed MAX_PAYLOAD_BYTES, or a string holds an
            unpaired surrogate (possible in a Python str, impossible in UTF-8).
    """
    what = getattr(msg, "kind", "bundle_content")
    text = json.dumps(to_wire(msg), separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        reason = f"{what}: contains an unpaired UTF-16 surrogate, which UTF-8 cannot carry"
        raise InvalidMessage(reason) from None
    if len(data) > MAX_PAYLOAD_BYTES:
        reason = f"{what}: encodes to {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}"
        raise InvalidMessage(reason)
    return data


def signing_bytes(msg: MessageBase) -> bytes:
    """The bytes `msg.sig` covers: as received for a decoded message, else its wire form."""
    if msg._signing_bytes is not None:
        return msg._signing_bytes
    return _unsigned_canonical(to_wire(msg))


class _WireJsonSchema(GenerateJsonSchema):
    """JSON Schema of the wire form: optional fields are omitted there, never null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            del json_schema["default"]
        return json_schema


def wire_json_schema(cls: type[WireModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) a third-party client can validate against."""
    return cls.model_json_schema(schema_generator=_WireJsonSchema, mode="validation")
