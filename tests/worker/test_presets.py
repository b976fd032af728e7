"""Task presets: the shipped schemas pass the gateway's intake and the meta-schema, accept the answers they
describe and refuse others, stay bounded for the random-weight test model; GUI boxes convert to pixels."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.response_format import DEFAULT_LIMITS, check_schema
from worker.presets import GRID, GUI_PROMPT, OCR_PROMPT, Preset, Task, gui_boxes_to_pixels, preset

STRUCTURED = [Task.OCR, Task.GUI]


def schema_of(task: Task) -> dict[str, Any]:
    schema = preset(task).schema
    assert schema is not None
    return schema


def valid(task: Task, document: object) -> bool:
    return Draft202012Validator(schema_of(task)).is_valid(document)


def nodes(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for key in ("items", "additionalProperties"):
            yield from nodes(schema.get(key))
        for child in schema.get("properties", {}).values():
            yield from nodes(child)


OCR_DOC: dict[str, Any] = {
    "text": "ACME GmbH Invoice 2024-017 ...",
    "fields": {"document_type": "invoice", "vendor": "ACME GmbH", "invoice_number": "2024-017",
               "date": "2024-03-01", "currency": "EUR", "subtotal": "100.00", "tax": "19.00", "total": "119.00",
               "line_items": [{"description": "Widget", "quantity": "2", "unit_price": "50.00",
                               "amount": "100.00"}]},
}
GUI_DOC: dict[str, Any] = {
    "elements": [{"type": "button", "label": "Log in", "purpose": "submits the login form",
                  "bbox": [500, 250, 750, 500]},
                 {"type": "input", "label": "Email", "purpose": "where the email goes", "bbox": [0, 0, 1000, 1000]}],
}


def changed(document: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    result = copy.deepcopy(document)
    node = result
    for part in path[:-1]:
        node = node[part]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return result


# -- tasks and presets --------------------------------------------------------------------------------------------

def test_the_tasks_and_their_names() -> None:
    assert [task.value for task in Task] == ["vqa", "ocr", "gui"]
    assert Task("vqa") is Task.VQA


def test_vqa_is_free_text_without_a_system_prompt() -> None:
    assert preset(Task.VQA) == Preset(Task.VQA, None, None, None)


@pytest.mark.parametrize("task, name, prompt", [(Task.OCR, "vlq_ocr", OCR_PROMPT), (Task.GUI, "vlq_gui", GUI_PROMPT)])
def test_structured_presets_carry_prompt_schema_and_name(task: Task, name: str, prompt: str) -> None:
    chosen = preset(task)
    assert (chosen.task, chosen.system_prompt, chosen.schema_name) == (task, prompt, name)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)  # OpenAI's json_schema.name rule
    assert chosen.schema is not None
    assert chosen.schema["type"] == "object"


@pytest.mark.parametrize("name", ["ocr.json", "gui.json"])
def test_schemas_ship_as_package_files(name: str) -> None:
    assert resources.files("worker").joinpath("schemas", name).is_file()


def test_each_call_gets_its_own_copy_of_the_schema() -> None:
    first = schema_of(Task.OCR)
    first["properties"]["text"]["maxLength"] = 1
    assert schema_of(Task.OCR)["properties"]["text"]["maxLength"] == 120


def test_prompts_name_what_the_schemas_hold() -> None:
    fields = schema_of(Task.OCR)["properties"]["fields"]["properties"]
    for name in [*fields, *fields["line_items"]["items"]["properties"]]:
        assert name in OCR_PROMPT
    assert f"from 0 to {GRID}" in GUI_PROMPT
    assert "[x1, y1, x2, y2]" in GUI_PROMPT


def test_the_gui_preset_grounds_on_the_thousand_grid() -> None:
    assert GRID == 1000
    bbox = schema_of(Task.GUI)["properties"]["elements"]["items"]["properties"]["bbox"]
    assert bbox["items"] == {"type": "integer", "minimum": 0, "maximum": 1000}
    assert (bbox["minItems"], bbox["maxItems"]) == (4, 4)


def test_presets_import_nothing_heavy() -> None:
    code = ("import sys, worker.presets; heavy = {'vllm', 'torch', 'transformers', 'jsonschema'} & set(sys.modules);"
            " print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- the schemas --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", STRUCTURED)
def test_preset_schemas_pass_the_gateway_intake(task: Task) -> None:
    schema = schema_of(task)
    assert check_schema(schema, "response_format.json_schema.schema", DEFAULT_LIMITS) == schema_of(task)


@pytest.mark.parametrize("task", STRUCTURED)
def test_preset_schemas_are_valid_2020_12(task: Task) -> None:
    schema = schema_of(task)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("task, count", [(Task.OCR, 17), (Task.GUI, 8)])
def test_every_node_is_bounded_and_closed(task: Task, count: int) -> None:
    # The random-weight test model fills every string and array the grammar allows: each needs a bound.
    checked = 0
    for node in nodes(schema_of(task)):
        checked += 1
        if node["type"] == "string":
            assert "enum" in node or 1 <= node["maxLength"] <= 200, node
        elif node["type"] == "array":
            assert 1 <= node["maxItems"] <= 4, node
        elif node["type"] == "object":
            assert node["additionalProperties"] is False
            assert sorted(node["required"]) == sorted(node["properties"])
        else:
            assert node["type"] == "integer"
            assert (node["minimum"], node["maximum"]) == (0, 1000)
    assert checked == count  # the walk saw every node


def test_a_full_ocr_answer_is_valid() -> None:
    assert valid(Task.OCR, OCR_DOC)


def test_an_ocr_answer_with_empty_fields_is_valid() -> None:
    empty = {key: "" for key in OCR_DOC["fields"]} | {"document_type": "other", "line_items": []}
    assert valid(Task.OCR, {"text": "", "fields": empty})


@pytest.mark.parametrize("path, value", [
    (("text",), KeyError),
    (("fields", "total"), KeyError),
    (("fields", "document_type"), "bill"),
    (("fields", "total"), 119.0),
    (("fields", "vendor"), None),
    (("fields", "extra"), "x"),
    (("text",), "x" * 121),
    (("fields", "line_items"), [OCR_DOC["fields"]["line_items"][0]] * 4),
    (("fields", "line_items", 0, "amount"), KeyError),
    (("fields", "line_items", 0, "sku"), "A-1"),
])
def test_broken_ocr_answers_are_invalid(path: tuple[Any, ...], value: object) -> None:
    assert not valid(Task.OCR, changed(OCR_DOC, path, value))


def test_a_gui_answer_is_valid() -> None:
    assert valid(Task.GUI, GUI_DOC)
    assert valid(Task.GUI, {"elements": []})


@pytest.mark.parametrize("path, value", [
    (("elements",), KeyError),
    (("elements", 0, "type"), "slider"),
    (("elements", 0, "bbox"), [1, 2, 3]),
    (("elements", 0, "bbox"), [1, 2, 3, 4, 5]),
    (("elements", 0, "bbox"), [0, 0, 1001, 10]),
    (("elements", 0, "bbox"), [-1, 0, 10, 10]),
    (("elements", 0, "bbox"), [1.5, 0, 10, 10]),
    (("elements", 0, "label"), "x" * 25),
    (("elements", 0, "purpose"), KeyError),
    (("elements", 0, "score"), 0.9),
    (("elements",), [GUI_DOC["elements"][0]] * 4),
])
def test_broken_gui_answers_are_invalid(path: tuple[Any, ...], value: object) -> None:
    assert not valid(Task.GUI, changed(GUI_DOC, path, value))


# -- GUI boxes to pixels ------------------------------------------------------------------------------------------

def boxes(value: object) -> list[object]:
    assert isinstance(value, dict)
    return [element["bbox"] for element in value["elements"]]


def test_boxes_become_pixels_of_the_original_image() -> None:
    assert boxes(gui_boxes_to_pixels(GUI_DOC, 1280, 720)) == [[640, 180, 960, 360], [0, 0, 1280, 720]]


def test_labels_and_other_keys_are_kept_and_the_input_is_not_changed() -> None:
    before = copy.deepcopy(GUI_DOC)
    value = {**GUI_DOC, "note": "kept"}
    result = gui_boxes_to_pixels(value, 1280, 720)
    assert isinstance(result, dict)
    assert result["note"] == "kept"
    assert result["elements"][0] == {"type": "button", "label": "Log in", "purpose": "submits the login form",
                                     "bbox": [640, 180, 960, 360]}
    assert before == GUI_DOC


@pytest.mark.parametrize("bbox, size, pixels", [
    ([1, 1, 3, 3], (500, 500), [1, 1, 2, 2]),              # 0.5 and 1.5 round half up
    ([333, 0, 667, 1000], (1920, 1080), [639, 0, 1281, 1080]),
    ([750, 500, 500, 250], (1280, 720), [640, 180, 960, 360]),  # corners put in order
    ([-50, -1, 1200, 5000], (1280, 720), [0, 0, 1280, 720]),  # clamped to the image
    ([500.4, 250.0, 750, 500], (1000, 1000), [500, 250, 750, 500]),
    ([1e308, -1e308, 1e308, 0], (640, 480), [640, 0, 640, 0]),
])
def test_box_conversion(bbox: list[float], size: tuple[int, int], pixels: list[int]) -> None:
    result = gui_boxes_to_pixels({"elements": [{"bbox": bbox}]}, *size)
    assert boxes(result) == [pixels]
    converted = boxes(result)[0]
    assert isinstance(converted, list)
    assert all(type(value) is int for value in converted)


JUNK_ELEMENTS: list[object] = [
    None, "button", 5, [1, 2, 3, 4], {"type": "button"}, {"bbox": None}, {"bbox": [1, 2, 3]},
    {"bbox": [1, 2, 3, 4, 5]}, {"bbox": ["1", 2, 3, 4]}, {"bbox": [True, 0, 10, 10]},
    {"bbox": [float("nan"), 0, 10, 10]}, {"bbox": [float("inf"), 0, 10, 10]}, {"bbox": {"x1": 1}},
]


def test_junk_elements_are_left_as_they_are_beside_good_ones() -> None:
    value = {"elements": [*JUNK_ELEMENTS, {"bbox": [0, 0, 500, 500]}]}
    result = gui_boxes_to_pixels(value, 200, 100)
    assert isinstance(result, dict)
    assert len(result["elements"]) == len(JUNK_ELEMENTS) + 1
    # The very objects (a NaN never equals itself, so compare identities).
    assert all(got is junk for got, junk in zip(result["elements"], JUNK_ELEMENTS, strict=False))
    assert result["elements"][-1] == {"bbox": [0, 0, 100, 50]}


@pytest.mark.parametrize("value", [None, "text", 3, [GUI_DOC], {}, {"elements": "none"}, {"elements": None},
                                   {"items": GUI_DOC["elements"]}])
def test_junk_answers_come_back_unchanged(value: object) -> None:
    assert gui_boxes_to_pixels(value, 1280, 720) is value


@pytest.mark.parametrize("size", [(0, 720), (1280, 0), (-1, -1)])
def test_a_degenerate_image_size_leaves_boxes_alone(size: tuple[int, int]) -> None:
    assert gui_boxes_to_pixels(GUI_DOC, *size) is GUI_DOC
