"""Intake checks for a client's JSON Schema (``response_format.json_schema.schema``).

The worker hands an accepted schema to vLLM's structured outputs (xgrammar), so a schema is accepted only if
it is small, valid and made of what xgrammar turns into a grammar faithfully. The checks run in this order,
cheapest first, and the first failure is the answer (``param`` is the caller's base plus the JSON path):

==============================  ======  ==============================================================
code                            status  why
==============================  ======  ==============================================================
``invalid_schema``              422     not a JSON object, not plain JSON, ``nullable`` not a boolean, a
                                        ``$ref`` that resolves to nothing, or invalid against the JSON
                                        Schema 2020-12 meta-schema (``jsonschema``), whatever ``$schema``
                                        names
``schema_too_large``            413     over ``max_nodes`` JSON values, or over ``max_bytes`` serialized
``schema_too_deep``             422     objects and arrays nested deeper than ``max_depth``
``schema_unsupported_keyword``  422     a keyword outside ``SUPPORTED_KEYWORDS``, a ``format`` outside
                                        ``SUPPORTED_FORMATS``, ``$id`` below the root, ``maxLength`` or
                                        ``minLength`` beside ``pattern`` or ``format``, ``allOf`` with more
                                        than one branch, or a ``false`` subschema other than
                                        ``additionalProperties`` / ``items``
``schema_remote_ref``           422     a ``$ref`` other than ``#``, ``#/$defs/<name>`` or
                                        ``#/definitions/<name>``: the gateway never fetches a schema
``schema_recursive_ref``        422     a ``$ref`` that leads back into itself, directly or through defs
==============================  ======  ==============================================================

Size and depth are measured by one iterative walk that stops at the first cap it crosses, before anything
recursive (serializing, the meta-schema, the keyword walk) runs: a 1 MB or 100,000-deep schema costs little and
never raises ``RecursionError``. The combinations refused are those vLLM 0.32 itself refuses for xgrammar
(``has_xgrammar_unsupported_json_features``) or that xgrammar rejects (``false`` subschemas), so an accepted
schema does not fail later in the worker. ``$id`` is accepted on the root only, where it renames the document
and changes nothing for ``#`` references; below the root it would start an embedded resource.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from gateway.errors import PayloadTooLargeError, UnprocessableError

SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "title", "description",
    "default", "examples", "$schema", "$id", "nullable",
})
SUPPORTED_FORMATS = frozenset({"date", "date-time", "time", "email", "uri", "uuid"})

# Keywords whose value is one subschema, a list of them, or a map of names to them; every other supported
# keyword holds plain data (enum, const, default, examples) or a scalar.
_ONE_SCHEMA = ("items", "additionalProperties")
_SCHEMA_LIST = ("prefixItems", "anyOf", "oneOf", "allOf")
_SCHEMA_MAP = ("properties", "$defs", "definitions")
_DEFS = ("$defs", "definitions")
_MESSAGE_CHARS = 200

Path = tuple[str, ...]


@dataclass(frozen=True)
class SchemaLimits:
    """Caps on a client's schema. ``max_depth`` counts nested objects and arrays (one object property is two:
    ``properties`` and the property's schema), so 32 allows about the 10 levels of object nesting OpenAI does;
    vLLM refuses more than 64."""

    max_bytes: int = 32768
    max_depth: int = 32
    max_nodes: int = 10000


DEFAULT_LIMITS = SchemaLimits()


def check_schema(schema: object, param: str, limits: SchemaLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """``schema`` itself if it is acceptable for structured output; else the first problem, as an ApiError
    whose ``param`` is ``param`` plus the path to the problem."""
    if not isinstance(schema, dict):
        raise UnprocessableError("invalid_schema", "the JSON schema must be a JSON object", param)
    _check_shape(schema, param, limits)
    _check_size(schema, param, limits)
    _check_meta(schema, param)
    targets = _ref_targets(schema)
    for path, keyword, node in _subschemas(schema, (), skip_defs=False):
        _check_node(node, path, keyword, param, targets)
    _check_acyclic(schema, param, targets)
    return schema


def _check_shape(schema: dict[str, Any], param: str, limits: SchemaLimits) -> None:
    """Counts values and depth without recursion, stopping at the first cap crossed."""
    stack: list[tuple[object, int]] = [(schema, 1)]
    nodes = 1
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, dict | list):
            continue
        if depth > limits.max_depth:
            raise UnprocessableError(
                "schema_too_deep", f"the JSON schema nests objects and arrays deeper than {limits.max_depth}", param)
        nodes += len(value)
        if nodes > limits.max_nodes:
            raise PayloadTooLargeError(
                "schema_too_large", f"the JSON schema holds more than {limits.max_nodes} values", param)
        if isinstance(value, dict) and not all(isinstance(key, str) for key in value):
            raise UnprocessableError("invalid_schema", "the JSON schema's object keys must be strings", param)
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)


def _check_size(schema: dict[str, Any], param: str, limits: SchemaLimits) -> None:
    try:
        text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UnprocessableError("invalid_schema", "the JSON schema is not plain JSON", param) from exc
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise PayloadTooLargeError(
            "schema_too_large", f"the JSON schema is {size} bytes; at most {limits.max_bytes} are accepted", param)


def _check_meta(schema: dict[str, Any], param: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        message = f"the JSON schema is invalid: {exc.message}"
        raise UnprocessableError("invalid_schema", _trim(message), _join(param, exc.absolute_path)) from exc


def _subschemas(node: object, path: Path, *, skip_defs: bool) -> Iterator[tuple[Path, str | None, object]]:
    """Every subschema under ``node`` (itself first) with its path and the keyword holding it, in document
    order, without recursion."""
    stack: list[tuple[Path, str | None, object]] = [(path, None, node)]
    while stack:
        here, keyword, current = stack.pop()
        yield here, keyword, current
        if isinstance(current, dict):
            children = list(_children(current, skip_defs))
            stack.extend((here + rel, rel[0], child) for rel, child in reversed(children))


def _children(schema: dict[str, Any], skip_defs: bool) -> Iterator[tuple[Path, object]]:
    for key in _ONE_SCHEMA:
        if key in schema:
            yield (key,), schema[key]
    for key in _SCHEMA_LIST:
        if isinstance(schema.get(key), list):
            yield from (((key, str(index)), child) for index, child in enumerate(schema[key]))
    for key in _SCHEMA_MAP:
        if isinstance(schema.get(key), dict) and not (skip_defs and key in _DEFS):
            yield from (((key, name), child) for name, child in schema[key].items())


def _check_node(node: object, path: Path, keyword: str | None, param: str, targets: dict[str, Path]) -> None:
    if isinstance(node, bool):
        if node is False and keyword not in _ONE_SCHEMA:
            _unsupported("a false subschema accepts nothing; only additionalProperties and items may be false",
                         param, path)
        return
    if not isinstance(node, dict):
        return
    for key in node:
        if key not in SUPPORTED_KEYWORDS or (key == "$id" and path):
            _unsupported(f"the JSON Schema keyword {key!r} is not supported", param, (*path, key))
    _check_values(node, path, param)
    if "$ref" in node:
        _resolve(node["$ref"], param, (*path, "$ref"), targets)


def _check_values(node: dict[str, Any], path: Path, param: str) -> None:
    fmt = node.get("format")
    if fmt is not None and fmt not in SUPPORTED_FORMATS:
        _unsupported(f"the format {fmt!r} is not supported; supported: {', '.join(sorted(SUPPORTED_FORMATS))}",
                     param, (*path, "format"))
    for key in ("minLength", "maxLength"):
        if key in node and ("pattern" in node or "format" in node):
            _unsupported(f"{key!r} cannot be combined with 'pattern' or 'format'", param, (*path, key))
    if len(node.get("allOf", ())) > 1:
        _unsupported("'allOf' with more than one subschema is not supported", param, (*path, "allOf"))
    if "nullable" in node and not isinstance(node["nullable"], bool):
        raise UnprocessableError("invalid_schema", "'nullable' must be a boolean", _join(param, (*path, "nullable")))


def _unsupported(message: str, param: str, path: Path) -> None:
    raise UnprocessableError("schema_unsupported_keyword", _trim(message), _join(param, path))


def _ref_targets(schema: dict[str, Any]) -> dict[str, Path]:
    """What a local ``$ref`` may point at: the root and each top-level def, by canonical ref."""
    targets: dict[str, Path] = {"#": ()}
    for key in _DEFS:
        if isinstance(schema.get(key), dict):
            targets.update({f"#/{key}/{name}": (key, name) for name in schema[key]})
    return targets


def _resolve(ref: object, param: str, path: Path, targets: dict[str, Path]) -> str:
    """The canonical form of a local ``ref`` (a key of ``targets``); anything else refused."""
    canonical = _canonical(ref)
    if canonical is None:
        raise UnprocessableError(
            "schema_remote_ref", _trim(f"$ref {ref!r} is not supported: only '#', '#/$defs/<name>' and "
                                       "'#/definitions/<name>' are"), _join(param, path))
    if canonical not in targets:
        raise UnprocessableError("invalid_schema", _trim(f"$ref {ref!r} resolves to nothing"), _join(param, path))
    return canonical


def _canonical(ref: object) -> str | None:
    """``#`` or ``#/$defs/<name>`` (percent-decoded, JSON-pointer unescaped), or None for any other ref."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    fragment = unquote(ref[1:])
    if not fragment:
        return "#"
    segments = fragment.split("/")
    if len(segments) != 3 or segments[0] or segments[1] not in _DEFS:
        return None
    name = segments[2].replace("~1", "/").replace("~0", "~")
    return f"#/{segments[1]}/{name}"


def _edges(schema: dict[str, Any], param: str, targets: dict[str, Path]) -> dict[str, list[tuple[str, Path]]]:
    """For the root and each def, the refs its own subschemas make (defs excluded), with where each is."""
    edges: dict[str, list[tuple[str, Path]]] = {}
    for canonical, base in targets.items():
        node = schema[base[0]][base[1]] if base else schema
        edges[canonical] = [
            (_resolve(sub["$ref"], param, (*path, "$ref"), targets), (*path, "$ref"))
            for path, _, sub in _subschemas(node, base, skip_defs=True)
            if isinstance(sub, dict) and "$ref" in sub
        ]
    return edges


def _check_acyclic(schema: dict[str, Any], param: str, targets: dict[str, Path]) -> None:
    """Depth-first search over refs with an explicit stack: a ref to a target still open closes a cycle."""
    edges = _edges(schema, param, targets)
    done: set[str] = set()
    for start in edges:
        if start not in done:
            _search(start, edges, done, param)


def _search(start: str, edges: dict[str, list[tuple[str, Path]]], done: set[str], param: str) -> None:
    trail = [start]
    stack = [iter(edges[start])]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            done.add(trail.pop())
            stack.pop()
            continue
        target, where = step
        if target in trail:
            cycle = " -> ".join([*trail[trail.index(target):], target])
            raise UnprocessableError(
                "schema_recursive_ref", _trim(f"recursive $ref ({cycle}) is not supported"), _join(param, where))
        if target not in done:
            trail.append(target)
            stack.append(iter(edges[target]))


def _join(param: str, path: Iterable[object]) -> str:
    return ".".join([param, *(str(part) for part in path)])


def _trim(message: str) -> str:
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."
