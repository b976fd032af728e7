"""A gateway with API keys: without a key the page says one is needed; a wrong one is reported; with a valid
one it works. The key stays in sessionStorage, travels only as a header and never appears in the curl line."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.conftest import make_image
from tests.web.conftest import API_KEY, Watched, WebStack
from tests.web.pagekit import ask, png, wait_state

pytestmark = pytest.mark.browser


def test_without_a_key_the_page_says_one_is_needed(open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    page = open_page(web_stack.keyed).page
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("requires an API key")
    page.fill("#prompt", "Hello?")
    page.press("#prompt", "Enter")
    expect(page.locator("#composer-error")).to_contain_text("requires an API key")
    assert page.locator(".turn").count() == 0
    assert page.evaluate("document.activeElement.id") == "api-key"


def test_a_wrong_key_is_reported(open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    page = open_page(web_stack.keyed).page
    page.fill("#api-key", "vlq_not-a-key")
    page.set_input_files("#file", files=[png("x.png", make_image((9, 9, 9)))])
    expect(page.locator('.attachment[data-status="error"] .att-status')).to_have_text("the API key is not valid")
    expect(page.locator("#banner")).to_contain_text("refused the API key")
    expect(page.locator("#banner")).to_contain_text("invalid_api_key")


def test_with_a_key_it_works_and_the_key_stays_out_of_urls_storage_and_curl(
        open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    page = open_page(web_stack.keyed).page
    seen: list[tuple[str, str | None]] = []
    page.on("request", lambda r: seen.append((r.url, r.headers.get("authorization"))))
    page.fill("#api-key", API_KEY)
    expect(page.locator("#banner")).to_be_hidden()
    turn = ask(page, "With a key.", png("k.png", make_image((70, 20, 120))))
    wait_state(turn, "done")
    api_calls = [(url, auth) for url, auth in seen if "/api/" in url]
    assert {url.split("?")[0].rsplit("/", 1)[1] for url, _ in api_calls} >= {"media", "infer", "stream"}
    assert all(auth == f"Bearer {API_KEY}" for _, auth in api_calls)
    assert all(API_KEY not in url for url, _ in seen)
    assert page.evaluate("sessionStorage.getItem('vlq.api-key')") == API_KEY
    local = page.evaluate("JSON.stringify(Object.entries(localStorage))")
    assert API_KEY not in local
    curl = page.locator(".log-request .curl").first.text_content()
    assert '"Authorization: Bearer $VLQ_API_KEY"' in curl and API_KEY not in curl
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator(".log-request button.copy-curl").first.click()
    expect(page.locator(".log-request button.copy-curl").first).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == curl
    page.reload()  # the same tab keeps the key
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#api-key") == API_KEY
    expect(page.locator("#banner")).to_be_hidden()
