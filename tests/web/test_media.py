"""Images on the page: picked, pasted or dropped, previewed, uploaded once to /api/media; a refused file
shows the gateway's own message beside it and nothing is enqueued."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import make_image
from tests.web.conftest import Watched, WebStack
from tests.web.pagekit import add_images, ask, png, saved_turns, wait_state

pytestmark = pytest.mark.browser
NOT_AN_IMAGE = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"


def test_a_bad_file_shows_the_gateways_error_and_nothing_is_enqueued(
        open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    watch = open_page()
    page = watch.page
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" and "/api/infer" in r.url else None)
    refusal = httpx.post(f"{web_stack.open.base}/api/media", files={"file": ("evil.png", NOT_AN_IMAGE, "image/png")})
    assert refusal.status_code in (415, 422), refusal.text
    message = refusal.json()["error"]["message"]
    page.set_input_files("#file", files=[{"name": "evil.png", "mimeType": "image/png", "buffer": NOT_AN_IMAGE}])
    tile = page.locator(".attachment").first
    expect(tile).to_have_attribute("data-status", "error")
    expect(tile.locator(".att-status")).to_have_text(message)
    expect(tile.locator(".att-status")).to_have_attribute("role", "alert")
    page.fill("#prompt", "What is this?")
    page.press("#prompt", "Enter")
    expect(page.locator("#composer-error")).to_contain_text("remove it to send")
    assert page.locator(".turn").count() == 0
    assert posted == []
    assert web_stack.queue_length() == 0
    tile.locator("button.remove").click()  # without it the question goes
    expect(page.locator(".attachment")).to_have_count(0)
    add_images(page, png("fine.png", make_image((5, 5, 250))))
    page.press("#prompt", "Enter")
    wait_state(page.locator(".turn").first, "done")
    assert len(posted) == 1


def test_more_images_than_the_gateway_takes_are_refused_here(open_page: Callable[..., Watched]) -> None:
    page = open_page().page  # the test gateway takes 3 per question
    files = [png(f"{n}.png", make_image((n * 40, 10, 10))) for n in range(4)]
    page.set_input_files("#file", files=files)
    expect(page.locator('.attachment[data-status="ready"]')).to_have_count(3)
    expect(page.locator('.attachment[data-status="error"] .att-status')).to_have_text("at most 3 images per question")


def test_pasted_and_dropped_images_are_previewed_and_uploaded_once(
        open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    page = open_page().page
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if r.method == "POST" and r.url.endswith("/api/media") else None)
    encoded = base64.b64encode(make_image((30, 160, 60), size=(120, 80))).decode()
    page.evaluate("""(encoded) => {
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const file = (name) => new File([bytes], name, { type: 'image/png' });
        const pasted = new DataTransfer();
        pasted.items.add(file('pasted.png'));
        document.getElementById('prompt').dispatchEvent(
            new ClipboardEvent('paste', { clipboardData: pasted, bubbles: true, cancelable: true }));
        const dropped = new DataTransfer();
        dropped.items.add(file('dropped.png'));
        const zone = document.getElementById('dropzone');
        zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dropped, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dropped, bubbles: true, cancelable: true }));
    }""", encoded)
    expect(page.locator('.attachment[data-status="ready"]')).to_have_count(2)
    expect(page.locator(".attachment .att-status").first).to_have_text("120\u00d780")
    assert page.locator(".attachment img").first.get_attribute("src").startswith("blob:")
    turn = ask(page, "Two pictures: same?")
    wait_state(turn, "done")
    turn2 = ask(page, "And now?")
    wait_state(turn2, "done")
    assert len(uploads) == 2  # a later turn refers to them by id, it does not upload them again
    saved = saved_turns(page)
    ids = [m["media_id"] for m in saved[0]["media"]]
    urls = [part["image_url"]["url"] for part in saved[1]["body"]["messages"][0]["content"] if "image_url" in part]
    assert urls == [f"vlq://media/{media_id}" for media_id in ids]
    expect(turn.locator(".turn-media img")).to_have_count(2)
    assert turn.locator(".turn-media img").first.get_attribute("src").startswith("data:image/jpeg")
