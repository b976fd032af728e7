"""A conversation on the page against a real gateway, Redis and worker (instant engine): streaming, cache
hits, several turns, cancel, regenerate, waiting with no worker up, JSON and GUI answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.conftest import make_image
from tests.web.conftest import Watched, WebStack
from tests.web.pagekit import answer, ask, log_lines, png, saved_turns, status, wait_state

pytestmark = pytest.mark.browser
DONE = re.compile(r"^done · \d+(\.\d)? s · (MISS|HIT-L1|HIT-L2|COALESCED)$")


def test_an_answer_streams_in_and_ends_done_with_the_streamed_text(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turn = ask(page, "What colour is it?", png("red.png", make_image((200, 30, 30))))
    expect(turn.locator('.answer[data-kind="streaming"]')).to_be_visible()  # a delta shown before the end
    partial = answer(turn)
    wait_state(turn, "done")
    assert DONE.match(status(turn)) and status(turn).endswith("MISS"), status(turn)
    saved = saved_turns(page)[0]
    result = saved["final"]["result"]["text"]
    assert saved["text"] == result  # every delta, once each, in order
    assert result.startswith(partial) and len(partial) < len(result)
    assert "prompt='What colour is it?'" in result and answer(turn) == result
    events = [line.split(" ", 2)[1:] for line in log_lines(page, saved["request_id"])]
    kinds = [words[1].split(" ")[0] for words in events if words[0].startswith("#")]
    assert kinds[0] == "queued" and "running" in kinds and "delta" in kinds and kinds[-1] == "done"
    assert page.locator(".log-request .log-cache").first.inner_text() == "X-Cache: MISS"


def test_asking_the_same_again_is_a_cache_hit(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    image = png("same.png", make_image((10, 200, 90)))
    first = ask(page, "Is this green?", image)
    wait_state(first, "done")
    page.click("#new-chat")
    again = ask(page, "Is this green?", image)
    wait_state(again, "done", timeout_ms=3_000)
    assert re.match(r"^done · .* · HIT-L[12]$", status(again)), status(again)
    assert answer(again) == saved_turns(page)[0]["final"]["result"]["text"]


def test_a_three_turn_conversation_sends_each_answer_back(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turns = [ask(page, "First: what is this?", png("blue.png", make_image((20, 20, 220))))]
    wait_state(turns[0], "done")
    for question in ("Second: and the border?", "Third: anything else?"):
        turns.append(ask(page, question))
        wait_state(turns[-1], "done")
    saved = saved_turns(page)
    assert [re.search(r"turns=(\d+)", answer(t)).group(1) for t in turns] == ["1", "3", "5"]
    messages = saved[2]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == saved[0]["final"]["result"]["text"]
    assert messages[3]["content"] == saved[1]["final"]["result"]["text"]
    first_image = messages[0]["content"][0]["image_url"]["url"]
    assert first_image == f"vlq://media/{saved[0]['media'][0]['media_id']}"
    assert messages[4]["content"] == "Third: anything else?"


def test_cancel_stops_a_running_turn(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turn = ask(page, "Take your time.", png("slow.png", make_image((90, 90, 90))))
    wait_state(turn, "running")
    turn.locator("button.cancel").click()
    wait_state(turn, "canceled")
    assert status(turn) == "canceled"
    request_id = saved_turns(page)[0]["request_id"]
    assert any(f"DELETE /api/result?request_id={request_id}" in line for line in log_lines(page, request_id))
    expect(turn.locator("button.cancel")).to_be_hidden()


def test_regenerate_asks_again_past_the_cache(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    turn = ask(page, "Say it again.", png("again.png", make_image((1, 2, 3))))
    wait_state(turn, "done")
    first_id = saved_turns(page)[0]["request_id"]
    turn.locator("button.regenerate").click()
    wait_state(turn, "done")
    saved = saved_turns(page)[0]
    assert saved["request_id"] != first_id
    assert saved["body"]["cache"] == "off" and status(turn).endswith("MISS")


def test_enter_sends_and_shift_enter_is_a_newline(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    page.fill("#prompt", "line one")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#prompt") == "line one\nline two"
    assert page.locator(".turn").count() == 0
    page.press("#prompt", "Enter")
    turn = page.locator(".turn").first
    expect(turn.locator(".prompt")).to_have_text("line one\nline two")
    wait_state(turn, "done")


def test_a_bad_schema_is_refused_before_sending_and_a_good_one_gives_pretty_json(
        open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    page.fill("#p-schema", '{"type": "object", "properties": ')
    page.fill("#prompt", "Fields please")
    page.press("#prompt", "Enter")
    expect(page.locator("#composer-error")).to_contain_text("JSON schema")
    assert page.locator(".turn").count() == 0
    page.fill("#p-schema", '{"type": "thing"}')
    page.press("#prompt", "Enter")
    expect(page.locator("#composer-error")).to_contain_text('unknown type "thing"')
    schema = {"type": "object", "properties": {"instant": {"type": "boolean"}}}
    page.fill("#p-schema", json.dumps(schema))
    page.press("#prompt", "Enter")
    turn = page.locator(".turn").first
    wait_state(turn, "done")
    body = saved_turns(page)[0]["body"]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    expect(turn.locator("pre.json")).to_have_text('{\n  "instant": true\n}')


def test_gui_boxes_are_drawn_over_the_screenshot_at_its_displayed_scale(open_page: Callable[..., Watched]) -> None:
    page = open_page().page
    page.select_option("#p-task", "gui")
    turn = ask(page, "Find the buttons.", png("screen.png", make_image((240, 240, 240), size=(1000, 600))))
    wait_state(turn, "done")
    x1, y1, x2, y2 = saved_turns(page)[0]["final"]["result"]["json"]["elements"][0]["bbox"]  # original pixels
    frame = turn.locator(".gui-boxes rect.frame")
    expect(frame).to_have_count(1)
    assert [float(frame.get_attribute(a)) for a in ("x", "y", "width", "height")] == [x1, y1, x2 - x1, y2 - y1]
    assert turn.locator(".gui-boxes").get_attribute("viewBox") == "0 0 1000 600"
    image, box = turn.locator(".gui-frame img").bounding_box(), frame.bounding_box()
    scale = image["width"] / 1000
    assert image["width"] < 1000 and abs(image["height"] / 600 - scale) < 0.01  # shown smaller, same shape
    near = 3  # the frame's bounding box includes its 2 px stroke
    assert abs(box["x"] - image["x"] - x1 * scale) < near and abs(box["width"] - (x2 - x1) * scale) < near
    assert abs(box["y"] - image["y"] - y1 * scale) < near and abs(box["height"] - (y2 - y1) * scale) < near
    expect(turn.locator(".gui-boxes text")).to_have_text("1 button: OK")
    expect(turn.locator("pre.json")).to_contain_text('"elements": [')


def test_with_no_worker_up_a_turn_waits_warming_in_line_and_cancels_from_the_queue(
        open_page: Callable[..., Watched], web_stack: WebStack) -> None:
    page = open_page(web_stack.idle).page
    first = ask(page, "Anyone there?", png("w1.png", make_image((3, 3, 3))))
    wait_state(first, "queued")
    expect(first.locator(".status")).to_have_text("warming · #1 · no worker is up yet")
    second = ask(page, "Still waiting?", png("w2.png", make_image((4, 4, 4))))
    expect(second.locator(".status")).to_have_text("warming · #2 · no worker is up yet")
    assert web_stack.queue_length(web_stack.idle_redis) == 2
    for turn in (first, second):
        turn.locator("button.cancel").click()
        wait_state(turn, "canceled")
    assert web_stack.queue_length(web_stack.idle_redis) == 0
