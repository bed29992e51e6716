"""Hostile input in the web client (Debian's chromium): script and HTML payloads, RTL and
combining characters, 2,000-character messages. Every one shows as inert text, exactly as
typed, on the sender's and another user's screen; nothing runs; the layout holds on a
phone and on a big screen (no sideways scrolling, every message inside the list, the input
still on screen). Screenshots: /tmp/hostile-phone.png, /tmp/hostile-screen{,-top}.png."""

from __future__ import annotations

import re
import unicodedata

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.browser.test_site import Tab, contexts, join, new_room, open_tab, say, texts
from tests.chatstack import ChatInstance

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.faults,
              pytest.mark.timeout(240)]

__all__ = ["contexts"]  # the fixture, shared with test_site.py

PAYLOADS = [
    "<script>alert('xss')</script>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=alert(2)>",
    "\"><iframe src=javascript:alert(3)></iframe>",
    "<a href=\"javascript:alert(4)\">click me</a>",
    "<style>body{display:none}</style>hidden?",
    "{{constructor.constructor('alert(5)')()}} ${alert(6)}",
    "&lt;b&gt;not bold&lt;/b&gt; &amp; <b>nor this</b>",
    "\u202etxt.exe \u202dnormal again",
    "مرحبا بالعالم — שלום עולם — mixed RTL",
    "Z\u0351\u0352\u0353\u0354\u0355a" + "\u0301" * 120 + "lgo",
    "a\u200b\u200c\u200d\ufeffzero widths",
    "가" * 2000,
    "W" * 2000,
]


def pretty_layout(tab: Tab) -> dict[str, object]:
    return tab.page.evaluate("""() => {
        const list = document.querySelector('[data-testid=message-list]');
        const lr = list.getBoundingClientRect();
        const outside = [...list.querySelectorAll('[data-testid=message]')].filter(m => {
            const r = m.getBoundingClientRect();
            return r.left < lr.left - 1 || r.right > lr.right + 1;
        }).length;
        const input = document.querySelector('[data-testid=message-input]')
            .getBoundingClientRect();
        return {overflow: document.documentElement.scrollWidth
                    - document.documentElement.clientWidth,
                outside: outside,
                input_visible: input.bottom <= window.innerHeight && input.top >= 0
                    && input.width > 0,
                foreign: list.querySelectorAll(
                    'script, img, svg, iframe, style, a, b, object, embed').length};
    }""")


def test_hostile_messages_are_inert_text_and_the_layout_holds(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, green = site_pair
    room = new_room()
    phone = open_tab(browser, contexts, blue.url + "/", viewport={"width": 390, "height": 780})
    screen = open_tab(browser, contexts, green.url + "/",
                      viewport={"width": 1600, "height": 900})
    join(phone, "mallory", room)
    join(screen, "bigscreen", room)
    for i, text in enumerate(PAYLOADS):
        phone.page.get_by_test_id("message-input").fill(text)
        phone.page.get_by_test_id("send-button").click()
        mine = phone.page.get_by_test_id("message-list").get_by_test_id("message")
        expect(mine).to_have_count(i + 1)
        expect(mine.last.get_by_test_id("message-status")).to_have_text("sent", timeout=15000)
    expect(screen.page.get_by_test_id("message-list").get_by_test_id("message")).to_have_count(
        len(PAYLOADS))
    screen.page.wait_for_timeout(500)  # give any would-be handler its chance to fire
    for tab in (phone, screen):
        assert texts(tab) == PAYLOADS  # exactly as typed, in order, once
        layout = pretty_layout(tab)
        assert layout["foreign"] == 0, layout  # no element came from a message
        assert layout["overflow"] <= 0, layout  # no sideways scrolling
        assert layout["outside"] == 0, layout
        assert layout["input_visible"] is True, layout
        tab.ok()  # no dialog, no page error, no CSP violation
    phone.page.screenshot(path="/tmp/hostile-phone.png")
    screen.page.screenshot(path="/tmp/hostile-screen.png")
    screen.page.get_by_test_id("message-list").get_by_test_id("message").first.evaluate(
        "el => el.scrollIntoView({block: 'start'})")
    screen.page.screenshot(path="/tmp/hostile-screen-top.png")


def test_a_hostile_nickname_is_refused_and_a_strange_valid_one_is_text(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    blue, _ = site_pair
    room = new_room()
    tab = open_tab(browser, contexts, blue.url + "/")
    tab.page.get_by_test_id("name-input").fill("<img src=x onerror=alert(1)>")
    tab.page.get_by_test_id("room-input").fill(room)
    tab.page.get_by_test_id("join-button").click()
    tab.page.wait_for_timeout(300)
    assert tab.page.get_by_test_id("badge").text_content() in ("", None)
    other = open_tab(browser, contexts, blue.url + "/")
    join(other, "민수.k-2 ﷺ", room)  # letters of any script are allowed
    other.page.get_by_test_id("message-input").fill("hi")
    other.page.get_by_test_id("send-button").click()
    # shown as the server keeps it: NFKC spells the ligature out
    expect(other.page.get_by_test_id("message-list")).to_contain_text(
        unicodedata.normalize("NFKC", "민수.k-2 ﷺ"))
    for t in (tab, other):
        t.ok()


def test_two_users_with_the_same_display_name_are_told_apart(
        browser: Browser, contexts: list[BrowserContext],
        site_pair: tuple[ChatInstance, ChatInstance]) -> None:
    """Two "speaker"s (one typed in fullwidth letters and padded with spaces, which the
    server folds to the same name) send a message each: a third user sees the same name
    twice, each followed by a different per-user mark."""
    blue, green = site_pair
    room = new_room()
    first = open_tab(browser, contexts, blue.url + "/")
    second = open_tab(browser, contexts, green.url + "/")
    viewer = open_tab(browser, contexts, blue.url + "/")
    join(first, "speaker", room)
    join(second, "  ｓｐｅａｋｅｒ ", room)
    join(viewer, "viewer", room)
    say(first, "I am the real speaker")
    expect(viewer.page.get_by_test_id("message-list")).to_contain_text("I am the real speaker")
    say(second, "no, I am")
    expect(viewer.page.get_by_test_id("message-list")).to_contain_text("no, I am")
    items = viewer.page.get_by_test_id("message-list").get_by_test_id("message")
    expect(items).to_have_count(2)
    names = items.get_by_test_id("message-name").all_text_contents()
    marks = items.get_by_test_id("message-mark").all_text_contents()
    assert names == ["speaker", "speaker"]
    assert all(re.fullmatch(r"#[0-9a-z]+", m) for m in marks), marks
    assert marks[0] != marks[1]
    # each sender sees its own mark on its own message, the one others see
    own = first.page.get_by_test_id("message-list").get_by_test_id("message").first
    expect(own.get_by_test_id("message-mark")).to_have_text(marks[0])
    viewer.page.screenshot(path="/tmp/same-names.png")
    for t in (first, second, viewer):
        t.ok()
