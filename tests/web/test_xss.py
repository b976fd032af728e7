"""Hostile text in a prompt and in a model answer is shown as text and runs nothing. The instant engine
echoes the first 32 characters of the prompt in its answer, so one prompt tests both places."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.conftest import make_image
from tests.web.conftest import Watched
from tests.web.pagekit import answer, ask, png, wait_state

pytestmark = pytest.mark.browser
LONG = "<img src=x onerror=window.__xss=1>"
SHORT = "<img src=x onerror=__xss=2>"  # fits the engine's 32-character echo whole
LINK = "[x](javascript:__xss=3)"


def test_html_in_a_prompt_is_text(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turn = ask(page, LONG, png("a.png", make_image((1, 1, 1))))
    wait_state(turn, "done")
    expect(turn.locator(".prompt")).to_have_text(LONG)
    assert turn.locator(".msg.user img").count() == 1  # only the uploaded picture
    assert page.evaluate("window.__xss") is None


@pytest.mark.parametrize("payload", [SHORT, LINK])
def test_html_and_script_links_in_a_model_answer_do_nothing(open_page: Callable[..., Watched], payload: str) -> None:
    page = open_page().page
    turn = ask(page, payload, png("b.png", make_image((2, 2, 2))))
    wait_state(turn, "done")
    assert turn.locator(".answer img, .answer script, .answer [onerror]").count() == 0
    hrefs = turn.locator(".answer a").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
    assert not any(href and href.lower().startswith("javascript") for href in hrefs), hrefs
    if payload == SHORT:
        assert payload in answer(turn)  # shown literally, not dropped
    assert page.evaluate("window.__xss") is None


def test_markdown_in_an_answer_is_rendered(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turn = ask(page, "**bold** and `code`", png("c.png", make_image((3, 3, 3))))
    wait_state(turn, "done")
    expect(turn.locator(".answer .markdown strong")).to_have_text("bold")
    expect(turn.locator(".answer .markdown code")).to_have_text("code")
