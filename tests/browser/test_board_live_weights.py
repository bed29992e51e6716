"""The deploy board in Debian's chromium shows the weights HAProxy really has, before any
canary step (issue 13, item 3): a real HAProxy (90/10, as site.yml leaves it) serving the
read-only stats CSV on its admin listener, real chat blue and green behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Service
from tests.lbstack import WeightedStack, weighted_stack

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(moto_server: Service, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[WeightedStack]:
    with weighted_stack(moto_server, tmp_path_factory.mktemp("board-lbw")) as s:
        yield s


def open_board(browser: Browser, url: str, problems: list[str]) -> Page:
    ctx = browser.new_context(locale="en-US", viewport={"width": 1600, "height": 900})
    page = ctx.new_page()
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text else None)
    page.goto(url)
    return page


def weights_shown(page: Page, blue: int, green: int) -> None:
    blue_card = page.locator("[data-testid=color-card][data-color=blue]")
    green_card = page.locator("[data-testid=color-card][data-color=green]")
    expect(blue_card.get_by_test_id("weight")).to_have_text(str(blue))
    expect(green_card.get_by_test_id("weight")).to_have_text(str(green))
    expect(page.get_by_test_id("split-weights").locator(".split-figures")).to_have_text(
        f"{blue}% / {green}%")


def test_board_shows_haproxys_weights_before_any_canary_step(
        browser: Browser, stack: WeightedStack) -> None:
    problems: list[str] = []
    # through HAProxy's public door, as an audience member's or the presenter's browser
    page = open_board(browser, stack.url + "/board", problems)
    expect(page.get_by_test_id("freshness")).to_have_attribute("data-state", "live")
    weights_shown(page, 90, 10)
    source = page.get_by_test_id("weights-source")
    expect(source).to_have_text("read from HAProxy")
    expect(source).to_have_attribute("data-state", "live")
    expect(page.locator("#no-events")).to_be_visible()
    expect(page.get_by_test_id("event")).to_have_count(0)
    page.screenshot(path="/tmp/board-lb-weights.png")

    # a weight changed by hand on the runtime API: the open page follows, no reload
    stack.set_weight("blue", 40)
    stack.set_weight("green", 60)
    weights_shown(page, 40, 60)

    # HAProxy gone: the page served by a chat directly keeps the last weights and says so
    direct = open_board(browser, stack.blue.url + "/board", problems)
    weights_shown(direct, 40, 60)
    stack.stop_haproxy()
    expect(direct.get_by_test_id("weights-source")).to_have_attribute("data-state", "stale")
    expect(direct.get_by_test_id("weights-source")).to_contain_text("HAProxy unreachable")
    weights_shown(direct, 40, 60)
    assert problems == []
    page.context.close()
    direct.context.close()
