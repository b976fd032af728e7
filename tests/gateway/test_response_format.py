"""Intake checks of a client's JSON Schema: what is accepted as it is, and each refusal's exact class, status,
code and param. Pure unit tests: no Redis, no app."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

from gateway import response_format
from gateway.errors import ApiError, PayloadTooLargeError, UnprocessableError
from gateway.response_format import DEFAULT_LIMITS, SchemaLimits, check_schema

BASE = "response_format.json_schema.schema"


def refused(schema: object, cls: type[ApiError], status: int, code: str, param: str,
            limits: SchemaLimits = DEFAULT_LIMITS) -> ApiError:
    with pytest.raises(ApiError) as info:
        check_schema(schema, BASE, limits)
    error = info.value
    assert type(error) is cls
    assert (error.status, error.code, error.param) == (status, code, param)
    assert len(error.message) <= 200
    return error


def invoice(total: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"total": total}, "required": ["total"], "additionalProperties": False}


def nested(levels: int) -> dict[str, Any]:
    """``levels`` object schemas inside one another: 2 * levels + 1 JSON levels deep."""
    schema: dict[str, Any] = {"type": "string", "maxLength": 8}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def no_meta_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the meta-schema (the first recursive step) fail the test if it is reached."""
    def reached(schema: object) -> None:
        raise AssertionError("the meta-schema check ran")
    monkeypatch.setattr(response_format.Draft202012Validator, "check_schema", staticmethod(reached))


# -- accepted ------------------------------------------------------------------------------------------------

class LineItem(BaseModel):
    description: str = Field(max_length=32)
    amount: float | None = None


class Invoice(BaseModel):
    vendor: str = Field(max_length=40, description="who issued it")
    kind: str = Field(json_schema_extra={"enum": ["invoice", "receipt"]})
    items: list[LineItem] = Field(max_length=4)


@pytest.mark.parametrize("schema", [
    invoice({"type": "string", "maxLength": 16}),
    Invoice.model_json_schema(),
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://example.com/invoice.json",
     "title": "t", "description": "d", "type": ["string", "null"], "nullable": True, "default": None,
     "examples": ["a"]},
    {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "exclusiveMaximum": 10}],
     "items": False, "minItems": 1, "maxItems": 1},
    {"anyOf": [{"const": {"a": [1]}}, {"enum": ["x", 1, None]}], "oneOf": [{"type": "number"}, True],
     "allOf": [{"exclusiveMinimum": 0, "maximum": 5}]},
    {"type": "object", "properties": {"not": {"type": "string"}, "if": {"type": "integer"},
                                      "items": {"type": "boolean"}}, "additionalProperties": {"type": "string"}},
    {"type": "string", "format": "date-time"},
    {"type": "string", "pattern": "^[A-Z]{3}$"},
], ids=["plain", "pydantic", "annotations", "tuple", "combinators", "keyword-named-properties", "format",
        "pattern"])
def test_acceptable_schemas_come_back_unchanged(schema: dict[str, Any]) -> None:
    assert check_schema(schema, BASE, DEFAULT_LIMITS) is schema


def test_the_pydantic_schema_uses_defs_and_refs() -> None:
    # The case above is only worth something if pydantic really emitted local refs.
    schema = Invoice.model_json_schema()
    assert schema["properties"]["items"]["items"] == {"$ref": "#/$defs/LineItem"}


@pytest.mark.parametrize("ref, defs", [
    ("#/$defs/a", {"$defs": {"a": {"type": "string"}}}),
    ("#/definitions/a", {"definitions": {"a": {"type": "string"}}}),
    ("#/$defs/a%20b", {"$defs": {"a b": {"type": "string"}}}),
    ("#/$defs/a~1b~0c", {"$defs": {"a/b~c": {"type": "string"}}}),
    ("#/%24defs/a", {"$defs": {"a": {"type": "string"}}}),
])
def test_local_refs_are_accepted(ref: str, defs: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}, **defs}
    assert check_schema(schema, BASE, DEFAULT_LIMITS) is schema


def test_a_def_used_twice_and_a_chain_of_defs_are_not_recursion() -> None:
    schema = {"type": "object",
              "properties": {"from": {"$ref": "#/$defs/party"}, "to": {"$ref": "#/$defs/party"}},
              "$defs": {"party": {"type": "object", "properties": {"address": {"$ref": "#/$defs/address"}}},
                        "address": {"type": "string", "maxLength": 64}}}
    assert check_schema(schema, BASE, DEFAULT_LIMITS) is schema


def test_depth_at_the_cap_is_accepted_one_more_is_not() -> None:
    limits = SchemaLimits(max_depth=31)
    assert check_schema(nested(15), BASE, limits)["type"] == "object"
    refused(nested(16), UnprocessableError, 422, "schema_too_deep", BASE, limits)


def test_the_default_depth_does_not_strain_the_meta_schema() -> None:
    schema = nested((DEFAULT_LIMITS.max_depth - 1) // 2)
    assert check_schema(schema, BASE, DEFAULT_LIMITS) is schema


def test_size_just_under_the_cap_is_accepted() -> None:
    schema = invoice({"type": "string", "description": "x" * 32000})
    assert check_schema(schema, BASE, DEFAULT_LIMITS) is schema


# -- size and depth, before anything recursive ------------------------------------------------------------------

def test_a_one_megabyte_string_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    no_meta_check(monkeypatch)
    schema = invoice({"type": "string", "description": "x" * 1_000_000})
    error = refused(schema, PayloadTooLargeError, 413, "schema_too_large", BASE)
    assert "32768" in error.message


def test_a_one_megabyte_enum_is_too_large_and_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    no_meta_check(monkeypatch)
    schema = invoice({"enum": [f"v{i:05d}" for i in range(125_000)]})  # about 1 MB as JSON
    started = time.perf_counter()
    error = refused(schema, PayloadTooLargeError, 413, "schema_too_large", BASE)
    assert time.perf_counter() - started < 0.5
    assert "10000 values" in error.message


def test_the_byte_cap_is_the_configured_one() -> None:
    schema = invoice({"type": "string", "description": "é" * 100})
    error = refused(schema, PayloadTooLargeError, 413, "schema_too_large", BASE, SchemaLimits(max_bytes=200))
    assert "at most 200" in error.message


def test_ten_thousand_levels_are_too_deep_and_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    no_meta_check(monkeypatch)
    schema = nested(10_000)
    started = time.perf_counter()
    error = refused(schema, UnprocessableError, 422, "schema_too_deep", BASE)
    assert time.perf_counter() - started < 0.5
    assert "32" in error.message


def test_deep_arrays_count_as_depth() -> None:
    schema: Any = "x"
    for _ in range(100_000):
        schema = [schema]
    refused({"enum": schema}, UnprocessableError, 422, "schema_too_deep", BASE)


# -- not a schema at all -------------------------------------------------------------------------------------

@pytest.mark.parametrize("schema", [None, [], "{}", 5, True])
def test_a_non_object_is_refused(schema: object) -> None:
    error = refused(schema, UnprocessableError, 422, "invalid_schema", BASE)
    assert "JSON object" in error.message


@pytest.mark.parametrize("schema", [invoice({"type": "number", "maximum": float("nan")}),
                                    invoice({"type": "number", "default": object()}),
                                    {"type": "object", "properties": {1: {"type": "string"}}}])
def test_values_that_are_not_plain_json_are_refused(schema: dict[str, Any]) -> None:
    refused(schema, UnprocessableError, 422, "invalid_schema", BASE)


@pytest.mark.parametrize("schema, path, words", [
    ({"type": 5}, ".type", "5 is not valid"),
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, ".properties.a.type", "'strin'"),
    ({"required": "a"}, ".required", "not of type 'array'"),
    ({"maxLength": -1}, ".maxLength", "minimum of 0"),
    ({"type": "string", "pattern": "("}, ".pattern", "regex"),
    ({"items": [{"type": "string"}]}, ".items", "not of type"),
    ({"anyOf": []}, ".anyOf", "should be non-empty"),
])
def test_invalid_against_the_meta_schema(schema: dict[str, Any], path: str, words: str) -> None:
    error = refused(schema, UnprocessableError, 422, "invalid_schema", BASE + path)
    assert words in error.message


def test_nullable_must_be_a_boolean() -> None:
    refused(invoice({"type": "string", "nullable": "yes"}), UnprocessableError, 422, "invalid_schema",
            BASE + ".properties.total.nullable")


# -- references --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", [
    "http://example.com/invoice.json", "https://example.com/invoice.json#/$defs/a", "file:///etc/passwd",
    "other.json", "other.json#/$defs/a", "urn:uuid:5f0c6f0e-0b1b-4a4e-9f43-0c6c1f2d6a11", "#anchor",
    "#/properties/b", "#/$defs/a/properties/b", "#/$defs/a%2Fb", "//evil.example/x",
])
def test_remote_and_other_refs_are_refused(ref: str) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": ref}, "b": {"type": "string"}},
              "$defs": {"a": {"type": "string"}}}
    error = refused(schema, UnprocessableError, 422, "schema_remote_ref", BASE + ".properties.a.$ref")
    assert "only '#'" in error.message


def test_a_remote_ref_in_an_unused_nested_def_is_refused_too() -> None:
    schema = {"type": "string", "$defs": {"a": {"$defs": {"b": {"$ref": "http://example.com/b.json"}}}}}
    refused(schema, UnprocessableError, 422, "schema_remote_ref", BASE + ".$defs.a.$defs.b.$ref")


def test_a_ref_to_a_missing_def_is_refused() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "$defs": {"b": True}}
    error = refused(schema, UnprocessableError, 422, "invalid_schema", BASE + ".properties.a.$ref")
    assert "#/$defs/missing" in error.message


def test_a_ref_to_the_root_from_inside_it_is_recursive() -> None:
    schema = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    error = refused(schema, UnprocessableError, 422, "schema_recursive_ref", BASE + ".properties.child.$ref")
    assert "# -> #" in error.message


def test_a_def_that_refers_to_itself_is_recursive() -> None:
    schema = {"$ref": "#/$defs/node",
              "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}}
    error = refused(schema, UnprocessableError, 422, "schema_recursive_ref",
                    BASE + ".$defs.node.properties.next.$ref")
    assert "#/$defs/node -> #/$defs/node" in error.message


def test_defs_that_refer_to_each_other_are_recursive() -> None:
    schema = {"$ref": "#/$defs/a",
              "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}, {"type": "null"}]},
                        "b": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/a"}}}}
    error = refused(schema, UnprocessableError, 422, "schema_recursive_ref", BASE + ".$defs.b.items.$ref")
    assert "#/$defs/a -> #/$defs/b -> #/$defs/a" in error.message


def test_a_definition_that_refers_back_to_the_root_is_recursive() -> None:
    schema = {"type": "object", "properties": {"x": {"$ref": "#/definitions/d"}},
              "definitions": {"d": {"type": "object", "properties": {"up": {"$ref": "#"}}}}}
    error = refused(schema, UnprocessableError, 422, "schema_recursive_ref",
                    BASE + ".definitions.d.properties.up.$ref")
    assert "# -> #/definitions/d -> #" in error.message


def test_an_unused_recursive_def_is_refused_too() -> None:
    schema = {"type": "string", "$defs": {"loop": {"$ref": "#/$defs/loop"}}}
    refused(schema, UnprocessableError, 422, "schema_recursive_ref", BASE + ".$defs.loop.$ref")


def test_a_long_chain_of_defs_closing_a_loop_does_not_recurse() -> None:
    count = 3000
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(count)}
    defs[f"d{count}"] = {"$ref": "#/$defs/d0"}
    refused({"$ref": "#/$defs/d0", "$defs": defs}, UnprocessableError, 422, "schema_recursive_ref",
            BASE + f".$defs.d{count}.$ref", SchemaLimits(max_bytes=1_000_000))


# -- unsupported keywords ------------------------------------------------------------------------------------------

UNSUPPORTED = {
    "not": {"type": "string"}, "if": {"minimum": 1}, "then": {"maximum": 2}, "else": {"maximum": 3},
    "patternProperties": {"^a": {"type": "string"}}, "dependentSchemas": {"a": {"required": ["b"]}},
    "dependentRequired": {"a": ["b"]}, "uniqueItems": True, "contains": {"type": "string"}, "minContains": 1,
    "maxContains": 2, "unevaluatedProperties": False, "unevaluatedItems": False, "multipleOf": 2,
    "propertyNames": {"maxLength": 3}, "minProperties": 1, "maxProperties": 3, "$dynamicRef": "#meta",
    "$dynamicAnchor": "meta", "$anchor": "total", "$comment": "note", "$vocabulary": {}, "deprecated": True,
    "readOnly": True, "writeOnly": True, "contentEncoding": "base64", "contentMediaType": "text/plain",
    "dependencies": {"a": ["b"]}, "x-internal": True,
}


@pytest.mark.parametrize("keyword", sorted(UNSUPPORTED))
def test_each_unsupported_keyword_is_named(keyword: str) -> None:
    schema = invoice({"type": "number", keyword: UNSUPPORTED[keyword]})
    error = refused(schema, UnprocessableError, 422, "schema_unsupported_keyword",
                    f"{BASE}.properties.total.{keyword}")
    assert repr(keyword) in error.message


def test_an_unsupported_keyword_deep_in_anyof_items_is_found() -> None:
    schema = {"anyOf": [{"type": "null"}, {"type": "array", "items": {"type": "integer", "multipleOf": 5}}]}
    refused(schema, UnprocessableError, 422, "schema_unsupported_keyword", BASE + ".anyOf.1.items.multipleOf")


def test_a_very_long_keyword_is_named_in_a_short_message() -> None:
    keyword = "k" * 5000
    error = refused(invoice({keyword: 1}), UnprocessableError, 422, "schema_unsupported_keyword",
                    f"{BASE}.properties.total.{keyword}")
    assert error.message.startswith("the JSON Schema keyword 'kkk")


@pytest.mark.parametrize("fmt", ["ipv4", "hostname", "regex", "duration", "made-up"])
def test_an_unsupported_format_is_refused(fmt: str) -> None:
    error = refused(invoice({"type": "string", "format": fmt}), UnprocessableError, 422,
                    "schema_unsupported_keyword", BASE + ".properties.total.format")
    assert repr(fmt) in error.message


@pytest.mark.parametrize("fmt", sorted(response_format.SUPPORTED_FORMATS))
def test_the_supported_formats_are_accepted(fmt: str) -> None:
    schema = invoice({"type": "string", "format": fmt})
    assert check_schema(schema, BASE, DEFAULT_LIMITS) is schema


@pytest.mark.parametrize("total, keyword", [
    ({"type": "string", "pattern": "^[0-9]+$", "maxLength": 8}, "maxLength"),
    ({"type": "string", "format": "email", "minLength": 3}, "minLength"),
])
def test_a_length_beside_pattern_or_format_is_refused(total: dict[str, Any], keyword: str) -> None:
    error = refused(invoice(total), UnprocessableError, 422, "schema_unsupported_keyword",
                    f"{BASE}.properties.total.{keyword}")
    assert "'pattern' or 'format'" in error.message


def test_allof_with_two_branches_is_refused() -> None:
    schema = invoice({"allOf": [{"type": "string"}, {"enum": ["yes", "no"]}]})
    refused(schema, UnprocessableError, 422, "schema_unsupported_keyword", BASE + ".properties.total.allOf")


def test_id_below_the_root_is_refused() -> None:
    schema = invoice({"$id": "total", "type": "string"})
    refused(schema, UnprocessableError, 422, "schema_unsupported_keyword", BASE + ".properties.total.$id")


@pytest.mark.parametrize("schema, path", [
    (invoice(False), ".properties.total"),
    ({"type": "object", "properties": {"items": False}}, ".properties.items"),
    ({"anyOf": [False, {"type": "string"}]}, ".anyOf.0"),
])
def test_a_false_subschema_is_refused_outside_items_and_additional_properties(
        schema: dict[str, Any], path: str) -> None:
    error = refused(schema, UnprocessableError, 422, "schema_unsupported_keyword", BASE + path)
    assert "false" in error.message
