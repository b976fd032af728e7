"""The page itself: served with its security headers, loaded under a CSP that really holds, labelled and
keyboard reachable, usable at phone width."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import expect

from gateway.web import CSP
from tests.web.conftest import PHONE, Watched, WebStack

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(("path", "content_type"), [
    ("/", "text/html; charset=utf-8"),
    ("/static/main.js", "text/javascript; charset=utf-8"),
    ("/static/vendor/dompurify/purify.es.mjs", "text/javascript; charset=utf-8"),
    ("/static/app.css", "text/css; charset=utf-8"),
    ("/static/favicon.svg", "image/svg+xml"),
])
def test_page_and_files_carry_the_security_headers(web_stack: WebStack, path: str, content_type: str) -> None:
    response = httpx.get(web_stack.open.base + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/static/vendor/revendor.sh", "/static/vendor/SHA256SUMS",
                                  "/static/vendor/marked/LICENSE", "/static/../web.py", "/static/%2e%2e/web.py",
                                  "/static/nope.js", "/static//etc/passwd"])
def test_only_the_page_files_are_served(web_stack: WebStack, path: str) -> None:
    response = httpx.get(web_stack.open.base + path)
    assert response.status_code == 404
    assert "import" not in response.text


def test_info_reports_the_gateway_settings(web_stack: WebStack) -> None:
    opened = httpx.get(web_stack.open.base + "/api/info").json()
    keyed = httpx.get(web_stack.keyed.base + "/api/info").json()  # no key needed to learn that one is
    assert opened["auth_required"] is False and keyed["auth_required"] is True
    assert opened["limits"] == {"max_images": 3, "max_image_bytes": 10 * 1024 * 1024, "max_tokens_limit": 4096,
                                "max_prompt_chars": 16_000}
    assert opened["tasks"] == ["vqa", "ocr", "gui"]
    assert opened["model"] == keyed["model"] != ""


def test_page_loads_under_its_csp_without_violations(open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    watch = open_page()
    page = watch.page
    info = httpx.get(web_stack.open.base + "/api/info").json()
    expect(page.locator("#model")).to_have_text(info["model"])
    assert page.evaluate("typeof window.vlqChat") == "object"  # every module loaded and ran
    assert watch.csp_violations() == []
    assert [line for line in watch.console if line.startswith("error")] == []


def test_the_csp_refuses_inline_script(open_page: Callable[..., Watched]) -> None:
    watch = open_page()
    page = watch.page
    page.evaluate("""() => {
        const s = document.createElement('script');
        s.textContent = 'window.__inline = 1';
        document.body.append(s);
        const d = document.createElement('div');
        d.setAttribute('onclick', 'window.__handler = 1');
        document.body.append(d);
        d.click();
    }""")
    assert page.evaluate("window.__inline") is None
    assert page.evaluate("window.__handler") is None
    violations = page.evaluate("window.__csp")
    assert any(v.startswith("script-src") for v in violations), violations
    assert any("Content Security Policy" in line for line in watch.console)
    watch.forget_csp_violations()


def test_every_control_is_labelled_and_reachable_by_keyboard(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map((el) => el.id || el.outerHTML.slice(0, 60))""")
    assert unlabelled == []
    reached = []
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    for control in ("api-key", "new-chat", "file", "prompt", "send", "p-task", "p-schema"):
        assert control in reached, (control, reached)


def test_phone_width_has_no_sideways_scrolling(open_page: Callable[..., Watched]) -> None:
    page = open_page(viewport=PHONE).page
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(page.locator("#prompt")).to_be_visible()
    expect(page.locator("#send")).to_be_in_viewport()
    box = page.locator("#prompt").bounding_box()
    assert box is not None and box["width"] > 250
