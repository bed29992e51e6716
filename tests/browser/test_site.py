"""The web client and the deploy board in Debian's chromium, against real blue and green chat
instances (which serve site/ with their strict Content-Security-Policy)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, WebSocket, WebSocketRoute, expect

from tests.browser.conftest import haproxy_front
from tests.chatstack import ChatInstance, ChatStack
from tests.conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]

XSS = "<img src=x onerror=alert(1)>"
BACKOFF_CAP_MS = 15_000   # site/app.js: the longest wait between two resend rounds
NO_RATE_LIMIT = {"CHAT_RATE_PER_S": "1000", "CHAT_RATE_BURST": "1000"}


@dataclass
class Tab:
    page: Page
    dialogs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # page errors and CSP violations

    def ok(self) -> None:
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.problems == [], f"errors in the page: {self.problems}"


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for c in made:
        c.close()


def open_tab(browser: Browser, contexts: list[BrowserContext], url: str,
             locale: str = "en-US", viewport: dict[str, int] | None = None) -> Tab:
    ctx = browser.new_context(locale=locale, viewport=viewport or {"width": 1000, "height": 760})
    contexts.append(ctx)
    page = ctx.new_page()
    tab = Tab(page)

    def on_dialog(d: object) -> None:
        tab.dialogs.append(getattr(d, "message", "?"))
        d.dismiss()  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: tab.problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: tab.problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text else None)
    page.goto(url)
    return tab


def join(tab: Tab, name: str, room: str) -> None:
    p = tab.page
    p.get_by_test_id("name-input").fill(name)
    p.get_by_test_id("room-input").fill(room)
    p.get_by_test_id("join-button").click()
    expect(p.get_by_test_id("badge")).not_to_have_text("")


def say(tab: Tab, text: str) -> None:
    tab.page.get_by_test_id("message-input").fill(text)
    tab.page.get_by_test_id("send-button").click()


def texts(tab: Tab) -> list[str]:
    items = tab.page.get_by_test_id("message-list").get_by_test_id("message-text")
    return items.all_text_contents()


def wait_for_frames(page: Page, done: Callable[[], bool], seconds: float = 10) -> None:
    """Wait in real time, letting Playwright dispatch WebSocket events, until `done()`
    or `seconds` have passed (the caller asserts what it needed)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        page.wait_for_timeout(50)


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def test_two_users_chat_across_blue_and_green(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, green = site_pair
    room = new_room()
    alice = open_tab(browser, contexts, blue.url + "/")
    bob = open_tab(browser, contexts, green.url + "/")
    join(alice, "alice", room)
    join(bob, "bob", room)

    say(alice, "hello from blue")
    expect(bob.page.get_by_test_id("message-list")).to_contain_text("hello from blue")
    mine = alice.page.get_by_test_id("message-list").get_by_test_id("message").last
    expect(mine.get_by_test_id("message-status")).to_have_text("sent")
    expect(mine).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    say(bob, "안녕, from green")
    expect(alice.page.get_by_test_id("message-list")).to_contain_text("안녕, from green")

    # each side shows each message once, in the same order
    expect(alice.page.get_by_test_id("message-list").get_by_test_id("message")).to_have_count(2)
    assert texts(alice) == texts(bob) == ["hello from blue", "안녕, from green"]
    expect(alice.page.get_by_test_id("online")).to_contain_text("2")
    # a late joiner gets the history
    carol = open_tab(browser, contexts, blue.url + "/")
    join(carol, "carol", room)
    expect(carol.page.get_by_test_id("message-list").get_by_test_id("message")).to_have_count(2)
    alice.page.screenshot(path="/tmp/chat.png")
    for t in (alice, bob, carol):
        t.ok()


def test_markup_in_a_message_is_shown_as_text_and_never_runs(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, green = site_pair
    room = new_room()
    sender = open_tab(browser, contexts, blue.url + "/")
    reader = open_tab(browser, contexts, green.url + "/")
    join(sender, "mallory", room)
    join(reader, "victim", room)
    say(sender, XSS)
    for tab in (sender, reader):
        text = tab.page.get_by_test_id("message-list").get_by_test_id("message-text").last
        expect(text).to_have_text(XSS)
        assert tab.page.locator("[data-testid=message-list] img").count() == 0
    # a nickname is user text too
    evil = open_tab(browser, contexts, blue.url + "/")
    join(evil, "b.o-b_1", room)
    say(evil, "second")
    expect(reader.page.get_by_test_id("message-list")).to_contain_text("second")
    reader.page.wait_for_timeout(300)  # give a would-be onerror handler its chance to fire
    for t in (sender, reader, evil):
        t.ok()


def test_badge_names_the_serving_color_and_version(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, green = site_pair
    room = new_room()
    on_blue = open_tab(browser, contexts, blue.url + "/")
    on_green = open_tab(browser, contexts, green.url + "/")
    join(on_blue, "b", room)
    join(on_green, "g", room)
    expect(on_blue.page.get_by_test_id("badge")).to_have_text("served by blue v1")
    expect(on_blue.page.get_by_test_id("badge")).to_have_attribute("data-color", "blue")
    expect(on_green.page.get_by_test_id("badge")).to_have_text("served by green v2")
    on_blue.ok()
    on_green.ok()


def test_korean_browser_gets_the_korean_ui(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/", locale="ko-KR")
    expect(tab.page.get_by_test_id("join-button")).to_have_text("입장")
    assert tab.page.evaluate("document.documentElement.lang") == "ko"
    join(tab, "민수", "한국어 방")
    expect(tab.page.get_by_test_id("badge")).to_have_text("blue v1 서버 연결")
    say(tab, "안녕하세요")
    mine = tab.page.get_by_test_id("message-list").get_by_test_id("message").last
    expect(mine.get_by_test_id("message-status")).to_have_text("전송됨")
    tab.ok()


def test_invalid_nickname_is_refused_before_connecting(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/")
    tab.page.get_by_test_id("name-input").fill("<script>")
    tab.page.get_by_test_id("join-button").click()
    expect(tab.page.get_by_test_id("join-error")).to_be_visible()
    expect(tab.page.get_by_test_id("chat-view")).to_be_hidden()
    tab.ok()


def test_phone_layout_fits_the_screen(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/", viewport={"width": 375, "height": 700})
    join(tab, "phone user", new_room())
    say(tab, "a rather long message " * 12)
    expect(tab.page.get_by_test_id("message-status").last).to_have_text("sent")
    overflow = tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page scrolls sideways by {overflow}px on a phone"
    box = tab.page.get_by_test_id("composer").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 700   # composer on screen
    tab.page.screenshot(path="/tmp/chat-phone.png")
    tab.ok()


def test_board_renders_the_figures_and_the_canary_steps(
        browser: Browser, contexts: list[BrowserContext], chat_stack: ChatStack,
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, green = site_pair
    for body in ({"action": "step", "weights": {"blue": 90, "green": 10}, "ok": True,
                  "gates": {"error_rate": {"value": 0.0, "threshold": 0.05, "ok": True},
                            "p95_ms": {"value": 14.2, "threshold": 250, "ok": True}},
                  "message": "10% to green"},
                 {"action": "step", "weights": {"blue": 50, "green": 50}, "ok": True,
                  "gates": {"error_rate": 0.001, "p95_ms": 18.5}, "message": "50/50"}):
        status, _ = chat_stack.admin(blue, "/api/admin/deploy-event", body)
        assert status == 201
    # live connections on both colors so the board has something to count
    room = new_room()
    users = [open_tab(browser, contexts, inst.url + "/") for inst in (blue, green, green)]
    for i, u in enumerate(users):
        join(u, f"user{i}", room)
    say(users[0], "load")

    board = open_tab(browser, contexts, green.url + "/board",
                     viewport={"width": 1600, "height": 900})
    page = board.page
    expect(page.get_by_test_id("freshness")).to_have_attribute("data-state", "live")
    blue_card = page.locator("[data-testid=color-card][data-color=blue]")
    green_card = page.locator("[data-testid=color-card][data-color=green]")
    expect(blue_card.get_by_test_id("weight")).to_have_text("50")
    expect(green_card.get_by_test_id("weight")).to_have_text("50")
    # instances publish their figures every second: wait for the connections to show
    expect(blue_card.get_by_test_id("connections")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(green_card.get_by_test_id("connections")).to_have_text(re.compile(r"^[2-9]\d*$"))
    expect(blue_card.locator(".color-version")).to_have_text("v1")
    expect(green_card.get_by_test_id("new-share")).to_have_text(re.compile(r"^\d+%"))
    expect(blue_card.get_by_test_id("error-rate")).to_have_text(re.compile(r"^\d+\.\d\d%$"))
    events = page.get_by_test_id("event")
    expect(events).to_have_count(2)
    expect(events.first).to_contain_text("50 / 50")       # newest first
    expect(events.last).to_contain_text("error_rate 0 / 0.05 ✓ · p95_ms 14.2 / 250 ✓")
    expect(page.get_by_test_id("split-live").locator(".split-figures")).to_have_text(
        re.compile(r"^\d+ / \d+$"))
    page.wait_for_timeout(1600)  # one more refresh cycle: still live, still no errors
    expect(page.get_by_test_id("freshness")).to_have_attribute("data-state", "live")
    page.screenshot(path="/tmp/board.png")
    board.ok()
    for u in users:
        u.ok()


def test_migrate_moves_the_page_to_blue_without_a_visible_interruption(
        browser: Browser, contexts: list[BrowserContext], chat_stack: ChatStack,
        site_pair: tuple[ChatInstance, ChatInstance], green_first_proxy: str) -> None:
    """Through HAProxy (green first, blue as backup): drain green, the page follows migrate."""
    blue, green = site_pair
    room = new_room()
    tab = open_tab(browser, contexts, green_first_proxy + "/")
    other = open_tab(browser, contexts, blue.url + "/")
    join(tab, "mover", room)
    join(other, "stayer", room)
    page = tab.page
    expect(page.get_by_test_id("badge")).to_have_text("served by green v2")
    # record whether the "connection lost" line ever shows, however briefly
    page.evaluate("""() => {
        window.__statusShown = [];
        const s = document.querySelector('[data-testid=status]');
        new MutationObserver(() => { if (!s.hidden) window.__statusShown.push(s.textContent); })
            .observe(s, {attributes: true, childList: true, characterData: true, subtree: true});
    }""")
    say(other, "before drain")
    expect(page.get_by_test_id("message-list")).to_contain_text("before drain")
    try:
        status, _ = chat_stack.admin(green, "/api/admin/drain", {"color": "green"})
        assert status in (200, 202)
        expect(page.get_by_test_id("badge")).to_have_text("served by blue v1", timeout=20_000)
        say(other, "after drain")
        say(tab, "me too")
        expect(page.get_by_test_id("message-list")).to_contain_text("after drain")
        expect(page.get_by_test_id("message-status").last).to_have_text("sent")
        expect(other.page.get_by_test_id("message-list")).to_contain_text("me too")
    finally:
        chat_stack.admin(green, "/api/admin/undrain", {"color": "green"})
    assert texts(tab) == ["before drain", "after drain", "me too"]   # once each, in order
    assert page.evaluate("window.__statusShown") == []
    tab.ok()
    other.ok()


def test_a_crashed_instance_is_left_with_backoff_and_the_page_resumes_with_since(
        browser: Browser, contexts: list[BrowserContext], chat_stack: ChatStack,
        site_pair: tuple[ChatInstance, ChatInstance], tmp_path: Path) -> None:
    """SIGKILL the instance serving the page: it reconnects (through HAProxy, to blue) and
    gets what was said meanwhile exactly once, from `since`."""
    blue, _ = site_pair
    doomed = chat_stack.start("green", version="v2", static=REPO / "site")
    room = new_room()
    with haproxy_front(doomed, blue, tmp_path) as front:
        tab = open_tab(browser, contexts, front + "/")
        other = open_tab(browser, contexts, blue.url + "/")
        join(tab, "survivor", room)
        join(other, "witness", room)
        expect(tab.page.get_by_test_id("badge")).to_have_text("served by green v2")
        say(other, "one")
        expect(tab.page.get_by_test_id("message-list")).to_contain_text("one")
        doomed.proc.kill()
        doomed.proc.wait(10)
        say(tab, "typed while cut off")       # stays "sending…", is resent after reconnect
        say(other, "two, while you were away")
        expect(tab.page.get_by_test_id("badge")).to_have_text("served by blue v1",
                                                              timeout=30_000)
        expect(tab.page.get_by_test_id("message-list")).to_contain_text("while you were away")
        expect(tab.page.get_by_test_id("outbox").get_by_test_id("message")).to_have_count(0)
        say(tab, "three")
        expect(other.page.get_by_test_id("message-list")).to_contain_text("three")
        expect(tab.page.get_by_test_id("status")).to_be_hidden()
        expect(tab.page.locator(".mine [data-testid=message-status]")).to_have_text(
            ["sent", "sent"])
        assert sorted(texts(tab)) == sorted(["one", "typed while cut off",
                                             "two, while you were away", "three"])
        assert texts(tab) == texts(other)     # once each, same order on both sides
        tab.ok()
        other.ok()


def test_a_frame_lost_on_the_way_is_fetched_over_http_and_shown_in_order(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Drop one message frame between server and page: the page sees the gap in seq and
    asks GET /api/rooms/<room>/messages?since= for it."""
    blue, green = site_pair
    room = new_room()
    tab = open_tab(browser, contexts, green.url + "/")
    dropped: list[int] = []

    def intercept(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "message" and frame.get("text") == "lost" and not dropped:
                dropped.append(frame["seq"])
                return
            ws.send(message)

        server.on_message(from_server)

    tab.page.route_web_socket(re.compile(r".*/ws\?.*"), intercept)
    other = open_tab(browser, contexts, blue.url + "/")
    join(tab, "reader", room)
    join(other, "writer", room)
    for text in ("first", "lost", "after"):
        say(other, text)
        expect(other.page.get_by_test_id("message-status").last).to_have_text("sent")
    expect(tab.page.get_by_test_id("message-list")).to_contain_text("after")
    expect(tab.page.get_by_test_id("message-list")).to_contain_text("lost")
    assert dropped, "the frame was not intercepted"
    assert texts(tab) == ["first", "lost", "after"]
    tab.ok()
    other.ok()


def test_own_message_shows_sending_until_the_server_confirms_it(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Hold the server's ack (and the echo) back: the bubble says sending… until they pass."""
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/")
    held: list[str | bytes] = []
    routes: list[WebSocketRoute] = []

    def intercept(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        routes.append(ws)

        def from_server(message: str | bytes) -> None:
            if json.loads(message).get("type") in ("ack", "message"):
                held.append(message)
                return
            ws.send(message)

        server.on_message(from_server)

    tab.page.route_web_socket(re.compile(r".*/ws\?.*"), intercept)
    join(tab, "patient", new_room())
    say(tab, "wait for it")
    bubble = tab.page.get_by_test_id("outbox").get_by_test_id("message")
    expect(bubble.get_by_test_id("message-status")).to_have_text("sending…")
    expect(bubble).to_have_attribute("data-status", "sending")
    # the server does answer: ack and echo, held by us
    wait_for_frames(tab.page, lambda: len(held) >= 2, seconds=15)
    assert len(held) >= 2, held
    expect(bubble.get_by_test_id("message-status")).to_have_text("sending…")
    for m in held:
        routes[0].send(m)
    mine = tab.page.get_by_test_id("message-list").get_by_test_id("message")
    expect(mine).to_have_count(1)
    expect(mine.get_by_test_id("message-status")).to_have_text("sent")
    expect(tab.page.get_by_test_id("outbox").get_by_test_id("message")).to_have_count(0)
    tab.ok()


def test_board_says_so_when_it_has_no_data(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    _, green = site_pair
    ctx = browser.new_context(locale="en-US")
    contexts.append(ctx)
    page = ctx.new_page()
    page.route("**/api/stats", lambda route: route.fulfill(status=500, body="boom"))
    page.goto(green.url + "/board")
    expect(page.get_by_test_id("freshness")).to_have_attribute("data-state", "down")
    expect(page.get_by_test_id("freshness")).to_contain_text("HTTP 500")
    # once the API answers again, the board recovers by itself
    page.unroute("**/api/stats")
    expect(page.get_by_test_id("freshness")).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("color-card")).not_to_have_count(0)


def test_board_goes_stale_when_its_requests_hang(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """/api/stats stops answering at all (no error, no close): the board drops its "live"
    within STALE_MS + FETCH_TIMEOUT_MS (9 s) and says since when its figures are old; a
    board that never had data says nobody answered."""
    _, green = site_pair
    ctx = browser.new_context(locale="en-US")
    contexts.append(ctx)
    page = ctx.new_page()
    page.goto(green.url + "/board")
    fresh = page.get_by_test_id("freshness")
    expect(fresh).to_have_attribute("data-state", "live")
    page.route("**/api/stats", lambda route: None)     # held: never answered
    expect(fresh).to_have_attribute("data-state", "stale", timeout=15_000)
    expect(fresh).to_contain_text("STALE · last update")

    cold = ctx.new_page()
    cold.route("**/api/stats", lambda route: None)
    cold.goto(green.url + "/board")
    expect(cold.get_by_test_id("freshness")).to_have_attribute("data-state", "down",
                                                               timeout=10_000)
    expect(cold.get_by_test_id("freshness")).to_have_text("no data: no answer in 4 s")


def test_a_busy_room_keeps_only_the_newest_messages_in_the_page(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Frames injected into the real connection: 450 messages, then repeats of old ones."""
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/")
    routes: list[WebSocketRoute] = []

    def intercept(ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        routes.append(ws)

    tab.page.route_web_socket(re.compile(r".*/ws\?.*"), intercept)
    room = new_room()
    join(tab, "watcher", room)
    base = 10_000   # far above anything the real room has: no HTTP gap fill is needed

    def frame(seq: int) -> str:
        return json.dumps({"type": "message", "room": room, "seq": seq, "user_id": 999_999,
                           "name": "bot", "text": f"m{seq}", "ts": 1_764_270_000_000,
                           "color": "green"})

    routes[0].send(json.dumps({"type": "history", "messages": [json.loads(frame(base))]}))
    for seq in range(base + 1, base + 450):
        routes[0].send(frame(seq))
    items = tab.page.get_by_test_id("message-list").get_by_test_id("message")
    expect(items.last).to_have_attribute("data-seq", str(base + 449))
    expect(items).to_have_count(400)
    expect(items.first).to_have_attribute("data-seq", str(base + 50))
    routes[0].send(frame(base + 3))          # a late repeat of a message already dropped
    routes[0].send(frame(base + 449))        # and of one still shown
    routes[0].send(frame(base + 450))
    expect(items.last).to_have_attribute("data-seq", str(base + 450))
    expect(items).to_have_count(400)
    expect(items.first).to_have_attribute("data-seq", str(base + 51))
    # reading old messages: a new one does not yank the view, a button offers to jump
    jump = tab.page.get_by_test_id("jump")
    expect(jump).to_be_hidden()
    tab.page.get_by_test_id("scroller").evaluate("s => { s.scrollTop = 0; }")
    routes[0].send(frame(base + 451))
    expect(items.last).to_have_attribute("data-seq", str(base + 451))
    expect(jump).to_be_visible()
    assert tab.page.get_by_test_id("scroller").evaluate("s => s.scrollTop") == 0
    tab.page.screenshot(path="/tmp/chat-jump.png")
    jump.click()
    expect(jump).to_be_hidden()
    expect(items.last).to_be_in_viewport()
    tab.ok()


def test_typing_does_not_push_back_the_retry_of_a_refused_message(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """The first send is answered `unavailable` (injected on the page's socket), the second
    goes through. The retry of the first is due within 1 s (backoff after one refused
    round) and must stay so: the second message's 10 s ack timeout does not replace it."""
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/")
    tab.page.clock.install()
    refused: list[str] = []

    def intercept(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "send" and not refused:
                refused.append(frame["text"])
                ws.send(json.dumps({"type": "error", "code": "unavailable",
                                    "message": "refused by the test"}))
                return
            server.send(message)

        ws.on_message(from_page)

    tab.page.route_web_socket(re.compile(r".*/ws\?.*"), intercept)
    join(tab, "typist", new_room())
    tab.page.clock.pause_at(tab.page.evaluate("Date.now()") + 1000)
    say(tab, "refused once")
    mine = tab.page.get_by_test_id("message-list").get_by_test_id("message")
    outbox = tab.page.get_by_test_id("outbox").get_by_test_id("message")
    expect(outbox).to_have_count(1)
    wait_for_frames(tab.page, lambda: bool(refused))
    assert refused == ["refused once"]
    say(tab, "through at once")
    expect(mine).to_have_count(1)
    expect(mine.get_by_test_id("message-text")).to_have_text("through at once")
    expect(outbox).to_have_count(1)            # the refused one still waits for its retry
    tab.page.clock.fast_forward(1000)
    expect(outbox).to_have_count(0)
    expect(mine.get_by_test_id("message-text")).to_have_text(["through at once",
                                                              "refused once"])
    expect(mine.get_by_test_id("message-status")).to_have_text(["sent", "sent"])
    tab.ok()


def test_a_long_outbox_is_resent_within_the_servers_rate_limit(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Twenty messages whose sends were lost on the way (swallowed on the page's socket)
    are resent after the ack timeout eight at a time, 2 s apart: the server (burst 10,
    5 frames/s) answers none of them `rate_limited`, and all twenty end up sent once.
    The page's clock stands; each step moves it as far as real time has gone, so the
    server's real-time rate limit sees the pace the page would keep."""
    blue, _ = site_pair
    tab = open_tab(browser, contexts, blue.url + "/")
    tab.page.clock.install()
    swallowed: list[str] = []
    forwarded: list[str] = []
    answers: list[str] = []

    def intercept(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "send":
                if len(swallowed) < 20:
                    swallowed.append(frame["text"])
                    return
                forwarded.append(frame["text"])
            server.send(message)

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") in ("ack", "error"):
                answers.append(frame.get("code", "ack"))
            ws.send(message)

        ws.on_message(from_page)
        server.on_message(from_server)

    def step(ms: int, forwarded_by_then: int) -> None:
        tab.page.wait_for_timeout(ms)              # real time, as much as the page's
        tab.page.clock.fast_forward(ms)
        wait_for_frames(tab.page, lambda: len(answers) >= forwarded_by_then)
        assert len(forwarded) == len(answers) == forwarded_by_then, (forwarded, answers)

    tab.page.route_web_socket(re.compile(r".*/ws\?.*"), intercept)
    join(tab, "commuter", new_room())
    tab.page.clock.pause_at(tab.page.evaluate("Date.now()") + 1000)
    typed = [f"typed {i}" for i in range(20)]
    for text in typed:
        say(tab, text)
    outbox = tab.page.get_by_test_id("outbox").get_by_test_id("message")
    expect(outbox).to_have_count(20)
    assert swallowed == typed
    tab.page.clock.fast_forward(10_000)            # the ack timeout: the first round
    step(0, 8)
    step(2000, 16)
    step(2000, 20)
    assert answers == ["ack"] * 20, answers
    assert forwarded == typed                      # oldest first, each once
    expect(outbox).to_have_count(0)
    mine = tab.page.get_by_test_id("message-list").get_by_test_id("message-text")
    expect(mine).to_have_text(typed)
    tab.ok()


def test_sends_refused_by_a_faulty_release_are_retried_until_sent(
        browser: Browser, contexts: list[BrowserContext], chat_stack: ChatStack,
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Green with CHAT_FAULT_RATE=0.7: the page resends with the same client_id; every
    message ends up sent, and the other user sees each exactly once.

    The page's clock is fast-forwarded past the longest backoff (15 s) between rounds:
    what is asserted is that the resending goes on until every message is through, and
    waiting out up to 15 s of full jitter per round in real time would make the test a
    draw on how many rounds fit in its timeout. The server's per-connection rate limit
    runs on real time, which the page's compressed rounds outpace: it is lifted here
    (tests/integration/test_chat_abuse_limits.py tests it)."""
    blue, _ = site_pair
    faulty = chat_stack.start("green", version="v2-bad", static=REPO / "site",
                              env={"CHAT_FAULT_RATE": "0.7", **NO_RATE_LIMIT})
    try:
        room = new_room()
        tab = open_tab(browser, contexts, faulty.url + "/")
        tab.page.clock.install()
        errors: list[str] = []
        tab.page.on("websocket", lambda ws: ws.on(
            "framereceived", lambda payload: errors.append(json.loads(payload)["code"])
            if '"type":"error"' in str(payload) else None))
        other = open_tab(browser, contexts, blue.url + "/")
        join(tab, "unlucky", room)
        join(other, "reader", room)
        sent = [f"try {i}" for i in range(8)]
        for text in sent:
            say(tab, text)
        statuses = tab.page.get_by_test_id("message-list").get_by_test_id("message-status")
        deadline = time.monotonic() + 60
        while statuses.count() < 8 and time.monotonic() < deadline:
            tab.page.clock.fast_forward(BACKOFF_CAP_MS)
            tab.page.wait_for_timeout(200)
        expect(statuses).to_have_count(8)
        expect(statuses).to_have_text(["sent"] * 8)
        expect(tab.page.get_by_test_id("outbox").get_by_test_id("message")).to_have_count(0)
        expect(other.page.get_by_test_id("message-list").get_by_test_id("message")).to_have_count(8)
        assert "unavailable" in errors        # the fault switch did refuse some sends
        expect(tab.page.get_by_test_id("status")).to_be_hidden()   # no stale "retrying"
        assert sorted(texts(other)) == sorted(sent)
        assert texts(tab) == texts(other)       # same order on both sides
        tab.ok()
        other.ok()
    finally:
        faulty.stop()


def test_a_refused_round_of_resends_counts_as_one_attempt(
        browser: Browser, contexts: list[BrowserContext], chat_stack: ChatStack) -> None:
    """Every send refused (CHAT_FAULT_RATE=1): eight waiting messages refused together
    raise the backoff by one step, not eight. Full jitter with base 0.5 s puts the
    resend after the n-th refused round within 0.5 * 2^n s, so with the page's clock
    paused, moving it on 1 s, then 2 s, then 4 s must each bring one round of all eight
    again; counted per refused frame, the wait would be anywhere up to the 15 s cap.
    The rate limit is lifted as above: 32 sends in a few real seconds would trip it."""
    faulty = chat_stack.start("green", version="v2-bad", static=REPO / "site",
                              env={"CHAT_FAULT_RATE": "1", **NO_RATE_LIMIT})
    try:
        tab = open_tab(browser, contexts, faulty.url + "/")
        tab.page.clock.install()
        sends: list[str] = []
        refusals: list[str] = []

        def on_ws(ws: WebSocket) -> None:
            ws.on("framesent", lambda payload: sends.append(str(payload))
                  if '"type":"send"' in str(payload) else None)
            ws.on("framereceived", lambda payload: refusals.append(str(payload))
                  if '"code":"unavailable"' in str(payload) else None)

        def until(what: str, frames: int) -> None:
            """Wait (real time, the page's clock standing) for `frames` sends and refusals."""
            wait_for_frames(tab.page, lambda: min(len(sends), len(refusals)) >= frames)
            assert min(len(sends), len(refusals)) >= frames, \
                f"{what}: {len(sends)} sends, {len(refusals)} refusals"

        tab.page.on("websocket", on_ws)
        join(tab, "unlucky", new_room())
        now = tab.page.evaluate("Date.now()")
        tab.page.clock.pause_at(now + 1000)    # no timer fires while the messages are typed
        for i in range(8):
            say(tab, f"never {i}")
        until("the eight first sends refused", 8)
        assert len(sends) == 8
        for n, step_ms in enumerate((1000, 2000, 4000), start=1):
            tab.page.clock.fast_forward(step_ms)
            until(f"resend round {n} after {step_ms} ms", 8 * (n + 1))
        expect(tab.page.get_by_test_id("outbox").get_by_test_id("message")).to_have_count(8)
        tab.ok()
    finally:
        faulty.stop()
