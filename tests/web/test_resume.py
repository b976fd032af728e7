"""Nothing is lost to a reload or a dropped connection: the conversation and its in-flight request ids live
in localStorage; a stream re-attaches with Last-Event-ID (no event missed or seen twice), and a POST whose
answer never arrived is re-sent with the same Idempotency-Key (the gateway returns the request it made)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import make_image
from tests.web.conftest import Watched
from tests.web.pagekit import add_images, answer, ask, log_lines, png, saved_turns, wait_state

pytestmark = pytest.mark.browser



def reopen(page: Any) -> Any:
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    return page.locator(".turn").first


def test_a_reload_mid_stream_resumes_and_the_answer_completes(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turn = ask(page, "Reload while you answer.", png("reload.png", make_image((250, 180, 20))))
    expect(turn.locator('.answer[data-kind="streaming"]')).to_be_visible()
    turn = reopen(page)
    wait_state(turn, "done")
    saved = saved_turns(page)[0]
    assert saved["text"] == saved["final"]["result"]["text"]  # nothing lost, nothing twice
    resumed = [line for line in log_lines(page, saved["request_id"]) if "Last-Event-ID:" in line]
    assert resumed and int(resumed[-1].rsplit(" ", 1)[1]) >= 1, resumed
    assert answer(turn) == saved["final"]["result"]["text"]


def test_a_reload_before_the_post_is_answered_resends_it_and_gets_the_same_request(
        open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    held: list[dict[str, Any]] = []

    def hold(route: Any) -> None:  # the gateway gets the POST; its answer never reaches the page
        held.append(route.fetch().json())

    page.route("**/api/infer", hold)
    add_images(page, png("held.png", make_image((123, 45, 67))))
    page.fill("#prompt", "Will you answer?")
    page.press("#prompt", "Enter")
    turn = page.locator(".turn").first
    expect(turn).to_have_attribute("data-state", "sending")
    page.wait_for_timeout(300)
    assert len(held) == 1 and held[0]["request_id"]
    page.unroute("**/api/infer")
    turn = reopen(page)
    wait_state(turn, "done")
    saved = saved_turns(page)[0]
    assert saved["request_id"] == held[0]["request_id"]  # one request, not two
    assert json.loads(json.dumps(saved["final"]["result"]["text"])) == answer(turn)


def test_a_stream_cut_off_midway_reconnects_after_its_last_event(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    cut: list[str] = []

    def cut_off(route: Any) -> None:  # the first connection ends after four events, as a dropped one does
        if cut:
            route.continue_()
            return
        events = route.fetch().text().split("\n\n")
        cut.append("\n\n".join(events[:4]) + "\n\n")
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=cut[0])

    page.route("**/api/stream?*", cut_off)
    turn = ask(page, "Lose the line while you answer.", png("cut.png", make_image((44, 55, 66))))
    wait_state(turn, "done", timeout_ms=20_000)
    assert "event: done" not in cut[0] and "id: 4" in cut[0]
    saved = saved_turns(page)[0]
    assert saved["text"] == saved["final"]["result"]["text"]  # nothing missed, nothing twice
    lines = log_lines(page, saved["request_id"])
    assert any("reconnecting" in line for line in lines), lines
    assert any(line.endswith("GET /api/stream · Last-Event-ID: 4") for line in lines), lines
