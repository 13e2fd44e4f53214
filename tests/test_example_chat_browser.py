"""The resumable chat example in a real browser (Debian's Chromium through
Selenium), through nginx in front of several instances on one Redis: what a
user sees when the tab reloads, an instance goes away, a second tab follows
the same answer, Stop is pressed elsewhere, or the producer dies.

Each scenario saves a screenshot of the final page (the folder is printed
at the end of the run) and checks the page's own record of what arrived:
``window.chat`` counts gaps and repeated tokens by their index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from examples.resumable_chat.model import answer_text, answer_tokens
from examples.resumable_chat.run import ChatDeployment
from tests.browser import chromium, save_screenshot, screenshot_dir
from tests.servers import RedisServer
from tests.test_example_chat import deployed

pytestmark = pytest.mark.slow

#: 300 tokens, one each 30 ms: about ten seconds per answer, time enough to
#: reload, stop an instance or open a tab in the middle of it.
DELAY = 0.03
ENV = {"CHAT_TOKEN_DELAY": str(DELAY), "CHAT_PRODUCER_TIMEOUT": "2"}
#: What the browser tests measured, written next to the screenshots.
METRICS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def chat(redis_server: RedisServer) -> Iterator[ChatDeployment]:
    """Three instances behind nginx, for the scenarios that stop none."""
    with deployed(redis_server, 3, ENV) as deployment:
        yield deployment


@pytest.fixture(scope="module", autouse=True)
def metrics_file() -> Iterator[None]:
    """Write what the scenarios measured next to the screenshots."""
    yield
    if METRICS:
        (screenshot_dir() / "chat-metrics.json").write_text(json.dumps(METRICS, indent=2) + "\n")


@pytest.fixture
def own_chat(redis_server: RedisServer) -> Iterator[ChatDeployment]:
    """Three instances behind nginx for a scenario that stops or kills one."""
    with deployed(redis_server, 3, ENV) as deployment:
        yield deployment


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium(1100, 800) as driver:
        driver.set_page_load_timeout(20)
        yield driver


def page_state(driver: Any) -> dict[str, Any]:
    """The page's record of its chat, and what it shows."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """
        const c = window.chat;
        return {id: c.id, text: c.text, shown: document.getElementById('answer').textContent,
                next: c.next, status: c.status, final: c.final, gaps: c.gaps, repeats: c.repeats,
                servedBy: c.servedBy, producer: c.producer, abortVia: c.abortVia, metrics: c.metrics,
                conn: document.getElementById('conn').dataset.state || 'idle',
                notice: document.getElementById('notice').textContent};
        """
    )


def wait_page(driver: Any, condition: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
    """Poll the page until ``condition(state)``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        state = page_state(driver)
        if condition(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; page: { {**state, 'text': state['text'][-80:], 'shown': '...'} }")
        time.sleep(0.02)


def ask(driver: Any, deployment: ChatDeployment, question: str) -> dict[str, Any]:
    driver.get(deployment.url + "/")
    driver.find_element("id", "question").send_keys(question)
    driver.find_element("id", "ask").click()
    return wait_page(driver, lambda s: s["next"] > 0, 20, "the first token")


def finished(state: dict[str, Any]) -> bool:
    return state["status"] in ("done", "aborted", "error", "gone")


def assert_complete(state: dict[str, Any], question: str) -> None:
    assert state["status"] == "done", state["notice"]
    assert state["gaps"] == 0 and state["repeats"] == 0
    assert state["text"] == answer_text(question)
    assert state["shown"] == state["text"]
    assert state["next"] == len(answer_tokens(question))


def served_elsewhere(driver: Any, than: str, tries: int = 8) -> dict[str, Any]:
    """Reload (the page resumes) until its SSE connection is served by an
    instance other than ``than`` (nginx's round robin decides)."""
    for _ in range(tries):
        state = wait_page(driver, lambda s: s["conn"] == "open" and bool(s["servedBy"]), 10, "an open connection")
        if state["servedBy"][-1] != than:
            return state
        driver.refresh()
    raise AssertionError(f"every reload was served by {than}")


def steer_round_robin_past(driver: Any, instance: str) -> None:
    """Make nginx's next request go to another instance than ``instance``:
    its round robin (one worker) goes on in a fixed order, so after a
    request answered by ``instance`` the next one goes elsewhere."""
    for _ in range(10):
        answered = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/health').then(r => r.json()).then(b => done(b.instance));"
        )
        if answered == instance:
            return
    raise AssertionError(f"no request reached {instance}")


def test_reload_mid_answer_continues_with_no_gap_and_no_repeat(browser: Any, chat: ChatDeployment) -> None:
    question = "Does a reload lose anything?"
    ask(browser, chat, question)
    samples = []
    for at in (60, 120, 180):
        before = wait_page(browser, lambda s, at=at: s["next"] >= at, 15, f"{at} tokens")
        browser.refresh()
        after = wait_page(browser, lambda s: s["metrics"]["firstTokenMs"] is not None, 10, "the first resumed token")
        # resumed where the page was (its saved state), not replayed from the start
        assert after["metrics"]["resumedFrom"] >= before["next"]
        assert after["text"].startswith(before["text"])
        marks = after["metrics"]
        samples.append({name: round(marks[key], 1) for name, key in
                        (("script runs", "scriptMs"), ("SSE open", "openMs"), ("first token", "firstTokenMs"))})
    state = wait_page(browser, finished, 20, "the end of the answer")
    save_screenshot(browser, "chat-1-reload-mid-answer")
    assert_complete(state, question)
    METRICS["reload to the first resumed token, ms since the reload (performance.now() of the reloaded page)"] = samples


def test_stopping_the_instance_serving_sse_reconnects_elsewhere(browser: Any, own_chat: ChatDeployment) -> None:
    question = "What if my instance goes away?"
    start = ask(browser, own_chat, question)
    producer = start["producer"]
    state = served_elsewhere(browser, producer)
    serving = state["servedBy"][-1]
    own_chat.instance(serving).stop()  # SIGTERM: uvicorn drops the SSE connection after 1 s
    moved = wait_page(browser, lambda s: s["servedBy"][-1] not in (serving,) or finished(s), 15, "a reconnect")
    state = wait_page(browser, finished, 20, "the end of the answer")
    save_screenshot(browser, "chat-2-sse-instance-stopped")
    assert moved["servedBy"][-1] != serving
    assert state["servedBy"][-1] not in (serving,) and state["producer"] == producer
    assert_complete(state, question)


def test_a_second_tab_ends_with_identical_text(browser: Any, chat: ChatDeployment) -> None:
    question = "Can two tabs watch one answer?"
    first = ask(browser, chat, question)
    wait_page(browser, lambda s: s["next"] >= 40, 10, "40 tokens")
    tab1 = browser.current_window_handle
    browser.switch_to.new_window("tab")
    tab2 = browser.current_window_handle
    browser.get(f"{chat.url}/?s={first['id']}")
    second = wait_page(browser, finished, 20, "the end in the second tab")
    save_screenshot(browser, "chat-3-second-tab")
    browser.switch_to.window(tab1)
    one = wait_page(browser, finished, 10, "the end in the first tab")
    save_screenshot(browser, "chat-3-first-tab")
    assert_complete(one, question)
    assert_complete(second, question)
    assert second["text"] == one["text"]
    browser.switch_to.window(tab2)
    browser.close()
    browser.switch_to.window(tab1)


def test_stop_in_a_tab_served_elsewhere_stops_both_tabs_within_a_second(browser: Any, chat: ChatDeployment) -> None:
    question = "Stop me from another instance"
    first = ask(browser, chat, question)
    producer = first["producer"]
    tab1 = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{chat.url}/?s={first['id']}")
    state = served_elsewhere(browser, producer)
    wait_page(browser, lambda s: s["next"] >= 60, 10, "60 tokens")
    steer_round_robin_past(browser, producer)
    browser.find_element("id", "stop").click()
    two = wait_page(browser, lambda s: finished(s) and s["abortVia"] is not None, 5, "the stop in the tab that pressed it")
    save_screenshot(browser, "chat-4-stop-pressing-tab")
    # the promise: generation stops within a second of the click (measured in the page)
    took = (two["metrics"]["endedAt"] - two["metrics"]["stopClicked"]) / 1000
    assert took < 1.0, took
    assert two["status"] == "aborted" and "Stopped" in two["notice"]
    assert two["abortVia"] != producer  # the Stop reached another instance than the producer
    stopped_at = two["final"]["tokens"]
    assert stopped_at < len(answer_tokens(question))
    browser.switch_to.window(tab1)
    one = wait_page(browser, finished, 5, "the stop in the first tab")
    save_screenshot(browser, "chat-4-stop-other-tab")
    assert one["status"] == "aborted" and "Stopped" in one["notice"]
    assert one["text"] == two["text"] == "".join(answer_tokens(question)[:stopped_at])
    assert one["gaps"] == two["gaps"] == 0 and one["repeats"] == two["repeats"] == 0
    METRICS["stop click to aborted end event in that tab, s"] = round(took, 3)
    METRICS["stop: tab served by / producer / abort handled by"] = [state["servedBy"][-1], producer, two["abortVia"]]


def test_killing_the_producer_shows_the_answer_failed(browser: Any, own_chat: ChatDeployment) -> None:
    question = "And if the writer dies?"
    start = ask(browser, own_chat, question)
    producer = start["producer"]
    wait_page(browser, lambda s: s["next"] >= 40, 10, "40 tokens")
    own_chat.instance(producer).kill()  # SIGKILL: no chance to say goodbye
    killed = time.monotonic()
    state = wait_page(browser, finished, 15, "the page telling the producer died")
    noticed = time.monotonic() - killed
    save_screenshot(browser, "chat-5-producer-killed")
    assert state["status"] == "error"
    assert state["final"]["reason"] == "producer-lost" and state["final"]["producer"] == producer
    assert f"The server writing this answer ({producer}) stopped responding" in state["notice"]
    assert "incomplete" in state["notice"]
    # what was written before the death stays, in order
    assert answer_text(question).startswith(state["text"]) and state["next"] >= 40
    assert state["gaps"] == 0 and state["repeats"] == 0
    METRICS["producer SIGKILL to the page showing the failure, s (CHAT_PRODUCER_TIMEOUT=2)"] = round(noticed, 2)
