"""Task presets: what ``task`` in a request means, as a system prompt and an optional JSON schema.

Import-light on purpose (stdlib only): the gateway imports it to fill in a request's system message and
``response_format`` before the cache key is taken, so a preset is cached like any request, and it must never
load vllm or torch. An explicit ``response_format`` in the request overrides the preset's schema.

Tasks::

    vqa (default)  free text; no system prompt and no schema, so a plain prompt + images request renders
                   and caches exactly as it did before tasks existed.
    ocr            {"text": str, "fields": {document_type, vendor, invoice_number, date, currency, subtotal,
                   tax, total, line_items: [{description, quantity, unit_price, amount}]}} for invoices and
                   receipts; a field the document does not show is "" (or []), amounts are strings as printed.
    gui            {"elements": [{type, label, purpose, bbox: [x1, y1, x2, y2]}]}, the interactive elements of
                   a screenshot for agents that click. The model answers boxes on Qwen3-VL's native 0-1000
                   relative grid; ``gui_boxes_to_pixels`` turns them into pixels of the original image.

The schemas are ``worker/schemas/ocr.json`` and ``worker/schemas/gui.json``, read once. Every string has a
``maxLength``, every array a ``maxItems``, every object ``additionalProperties: false`` with all properties
required: the engine's grammar then has to end, and it ends within 256 tokens even for the test suite's
random-weight model, whose strings run to their ``maxLength`` and whose arrays fill up by chance (greedy, with
xgrammar and no free whitespace, 18 prompts: at most 177 tokens for ``ocr``, 214 for ``gui``). Each GUI element
costs about 60 tokens whatever its strings, so ``elements`` holds at most 3 and OCR ``line_items`` at most 3;
raising them means raising the ``max_tokens`` the tests ask for. No string combines ``maxLength`` with
``pattern`` or ``format``, which xgrammar cannot do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

# Qwen3-VL grounds on a 0..GRID normalised grid whatever the image's size.
GRID = 1000


class Task(StrEnum):
    """What the model is asked to do; each value has a preset."""

    VQA = "vqa"
    OCR = "ocr"
    GUI = "gui"


@dataclass(frozen=True)
class Preset:
    """A task's system prompt (None: no system message) and JSON schema (None: free text)."""

    task: Task
    system_prompt: str | None
    schema: dict[str, Any] | None
    schema_name: str | None


OCR_PROMPT = (
    "You read documents. Answer with one JSON object: \"text\" holds the document's text in reading order; "
    "\"fields\" holds its invoice or receipt fields: document_type (invoice, receipt or other), vendor, "
    "invoice_number, date as YYYY-MM-DD, currency as an ISO 4217 code, subtotal, tax, total and line_items "
    "(description, quantity, unit_price, amount). Write amounts as printed. Leave a field empty (\"\" or []) "
    "when the document does not show it."
)

GUI_PROMPT = (
    "You look at a screenshot of a user interface for an agent that clicks. Answer with one JSON object "
    "{\"elements\": [...]} listing up to three of its interactive elements, the most important first. For each "
    "give its type, its visible label, its purpose (what activating it does) and its bounding box \"bbox\" as "
    f"[x1, y1, x2, y2] in relative coordinates from 0 to {GRID}: (0, 0) is the top-left corner of the image "
    f"and ({GRID}, {GRID}) the bottom-right."
)


@cache
def _schema(name: str) -> dict[str, Any]:
    text = resources.files("worker").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def preset(task: Task) -> Preset:
    """The preset of ``task``; its schema is a fresh copy the caller may change."""
    if task is Task.OCR:
        return Preset(task, OCR_PROMPT, _copy(_schema("ocr")), "vlq_ocr")
    if task is Task.GUI:
        return Preset(task, GUI_PROMPT, _copy(_schema("gui")), "vlq_gui")
    return Preset(Task.VQA, None, None, None)


def _copy(schema: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(schema))
    return copied


def gui_boxes_to_pixels(value: object, width: int, height: int) -> object:
    """A copy of a ``gui`` answer with every element's bbox in integer pixels of a ``width`` x ``height`` image.

    Each coordinate becomes ``c * size / 1000`` rounded half up and clamped to ``0..size``; the corners are
    ordered so that x1 <= x2 and y1 <= y2. The model may emit junk: anything malformed (not a dict with an
    ``elements`` list, an element that is not a dict, a bbox that is not four numbers, a non-positive size)
    is left as it is, and nothing raises.
    """
    if not (isinstance(value, dict) and isinstance(value.get("elements"), list)):
        return value
    if not (_is_number(width) and _is_number(height) and width > 0 and height > 0):
        return value
    elements = [_element_to_pixels(element, width, height) for element in value["elements"]]
    return {**value, "elements": elements}


def _element_to_pixels(element: object, width: int, height: int) -> object:
    if not isinstance(element, dict):
        return element
    box = element.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(c) for c in box)):
        return element
    x1, x2 = sorted((_scale(box[0], width), _scale(box[2], width)))
    y1, y2 = sorted((_scale(box[1], height), _scale(box[3], height)))
    return {**element, "bbox": [x1, y1, x2, y2]}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scale(coordinate: float, size: int) -> int:
    # Clamp on the grid first: a huge coordinate times the size would overflow a float.
    on_grid = min(max(coordinate, 0), GRID)
    return min(math.floor(on_grid * size / GRID + 0.5), size)
