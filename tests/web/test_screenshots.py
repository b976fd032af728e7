"""Screenshots of a real conversation at 1280x800 and 375x812, written to docs/screenshots/ (the README's
picture comes from this run): a GUI question with its boxes drawn, then a follow-up."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.web.conftest import DESKTOP, PHONE, SCREENSHOTS, Watched
from tests.web.pagekit import ask, png, wait_state

pytestmark = pytest.mark.browser


def sign_in_screen() -> bytes:
    """A made-up app screen whose OK button sits where the instant engine's GUI answer puts it."""
    image = Image.new("RGB", (1000, 600), (246, 247, 249))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1000, 50), fill=(31, 41, 55))
    draw.text((24, 18), "Acme Cloud - Sign in", fill=(255, 255, 255))
    draw.rectangle((100, 66, 900, 106), outline=(160, 170, 180), width=2, fill=(255, 255, 255))
    draw.text((116, 80), "name@example.com", fill=(120, 130, 140))
    # The instant engine answers bbox [100, 200, 500, 400] on Qwen's 0-1000 grid: these pixels here.
    draw.rounded_rectangle((100, 120, 500, 240), radius=14, fill=(31, 94, 255))
    draw.text((290, 174), "OK", fill=(255, 255, 255))
    draw.text((560, 174), "Forgot your password?", fill=(31, 94, 255))
    draw.rectangle((100, 300, 900, 560), outline=(210, 215, 220), width=2, fill=(255, 255, 255))
    for row in range(5):
        draw.text((124, 324 + row * 44), f"Recent sign-in {row + 1}: 2026-11-{20 + row} from 10.0.0.{row + 7}",
                  fill=(80, 90, 100))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_screenshots_of_a_conversation_at_desktop_and_phone_width(open_page: Callable[..., Watched]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = open_page().page
    page.select_option("#p-task", "gui")
    first = ask(page, "Find the buttons on this screen.", png("sign-in.png", sign_in_screen()))
    wait_state(first, "done")
    expect(first.locator(".gui-boxes rect.frame")).to_have_count(1)
    page.select_option("#p-task", "vqa")
    second = ask(page, "What happens when I press OK?")
    wait_state(second, "done")
    page.locator("#prompt").focus()
    shots = {"page-desktop.png": DESKTOP, "page-phone.png": PHONE}
    for name, viewport in shots.items():
        page.set_viewport_size(viewport)
        page.evaluate("window.scrollTo(0, 0)")
        if viewport == DESKTOP:  # the conversation scrolls inside the page: show the boxes, the follow-up, the log
            page.evaluate("document.getElementById('params-panel').open = false")
            page.locator(".turn .msg.assistant").first.evaluate("(el) => el.scrollIntoView({block: 'start'})")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        page.screenshot(path=str(SCREENSHOTS / name))
    for name, viewport in shots.items():
        with Image.open(SCREENSHOTS / name) as shot:
            assert shot.size == (viewport["width"], viewport["height"])
            assert len(shot.getcolors(1 << 20) or []) > 50  # a drawn page, not a blank one
