"""What a user does on the page, as test steps: add images, ask, wait for a turn's state, read the log."""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.sync_api import Locator, Page, expect

ENDED = ("done", "failed", "canceled", "expired", "error", "lost")


def png(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def add_images(page: Page, *files: dict[str, Any]) -> None:
    """Adds files through the file picker and waits until none is still uploading."""
    before = page.locator(".attachment").count()
    page.set_input_files("#file", files=list(files))
    expect(page.locator(".attachment")).to_have_count(before + len(files))
    expect(page.locator('.attachment[data-status="uploading"]')).to_have_count(0)


def ask(page: Page, prompt: str, *files: dict[str, Any]) -> Locator:
    """Types the question (with images, if any) and presses Enter; the new turn."""
    if files:
        add_images(page, *files)
    before = page.locator(".turn").count()
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    expect(page.locator(".turn")).to_have_count(before + 1)
    return page.locator(".turn").nth(before)


def wait_state(turn: Locator, state: str, timeout_ms: int = 15_000) -> None:
    expect(turn).to_have_attribute("data-state", state, timeout=timeout_ms)


def wait_ended(turn: Locator, timeout_ms: int = 15_000) -> str:
    pattern = "|".join(ENDED)
    expect(turn).to_have_attribute("data-state", re.compile(f"^({pattern})$"), timeout=timeout_ms)
    return str(turn.get_attribute("data-state"))


def status(turn: Locator) -> str:
    return str(turn.locator(".status").inner_text()).strip()


def answer(turn: Locator) -> str:
    return str(turn.locator(".answer").inner_text()).strip()


def saved_turns(page: Page) -> list[dict[str, Any]]:
    """The conversation as the page keeps it in localStorage."""
    raw = page.evaluate("localStorage.getItem('vlq.conversation.v1')")
    return list(json.loads(raw)["turns"]) if raw else []


def log_lines(page: Page, request_id: str) -> list[str]:
    section = page.locator(".log-request").filter(has=page.locator(".log-id", has_text=request_id))
    return [str(line) for line in section.locator(".log-events li").all_inner_texts()]
