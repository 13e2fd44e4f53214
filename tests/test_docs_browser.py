"""The documentation as a reader sees it: built with Sphinx, served on
127.0.0.1 and opened in a real browser (Debian's Chromium) at a desktop's
1280 x 900 and a phone's 390 x 844.

Every page must fit the window (no horizontal scrolling of the page, nor of
any code block or table inside it); the index shows the architecture
diagram, generated at build time, scaled to the column and adapted to dark
mode; the configuration reference has one section per declared variable
with the exact error of each refused value; a copy button copies runnable
code. Screenshots of what the browser showed are saved for a person to look
at (the test run prints the folder).
"""

from __future__ import annotations

import base64
import functools
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from librecache.variables import VARIABLES
from tests.browser import chromium, save_screenshot, screenshot_dir, set_viewport

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILT = DOCS / "_build" / "html"

#: (name, width, height, mobile)
WINDOWS = [("desktop", 1280, 900, False), ("phone", 390, 844, True)]

# What sticks out, measured in the page: the page itself, anything in the
# text column that scrolls sideways inside its own box (code blocks and
# tables do, and the page's width does not reveal it), and anything that
# ends past the window's right edge.
OVERFLOW = """
const root = document.documentElement;
const out = [];
const describe = (el) => `${el.tagName.toLowerCase()}.${el.className}: `
    + (el.textContent || "").trim().slice(0, 60);
if (root.scrollWidth > window.innerWidth) {
  out.push(`page: scrollWidth ${root.scrollWidth} > innerWidth ${window.innerWidth}`);
}
for (const el of document.querySelectorAll("article, article *")) {
  if (el.offsetParent === null) continue;
  const scrolls = ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  if (scrolls && el.scrollWidth > el.clientWidth + 1) {
    out.push(`scrolls ${el.scrollWidth} > ${el.clientWidth}: ${describe(el)}`);
  }
  const right = el.getBoundingClientRect().right;
  if (right > window.innerWidth + 1) {
    out.push(`ends at ${Math.round(right)}: ${describe(el)}`);
  }
}
return out.slice(0, 20);
"""


# Code blocks that would need a horizontal scroll bar if they did not wrap
# (the stylesheet wraps long lines so that nothing ever scrolls; this finds
# the lines that do wrap).
WRAPPED = """
const out = [];
for (const pre of document.querySelectorAll(arguments[0])) {
  if (pre.offsetParent === null) continue;
  pre.style.whiteSpace = "pre";
  pre.style.overflowWrap = "normal";
  if (pre.scrollWidth > pre.clientWidth + 1) {
    const longest = pre.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), "");
    out.push(`${pre.scrollWidth} > ${pre.clientWidth}: ${longest}`);
  }
  pre.style.whiteSpace = "";
  pre.style.overflowWrap = "";
}
return out;
"""

def _newest_source() -> float:
    sources = [
        path for path in DOCS.rglob("*")
        if path.is_file() and "_build" not in path.parts and "__pycache__" not in path.parts
    ]
    sources += list((ROOT / "librecache").rglob("*.py"))
    return max(path.stat().st_mtime for path in sources)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built HTML site: the test command's fresh docs/_build/html when it
    is newer than every source, otherwise a build of its own."""
    index = BUILT / "index.html"
    if index.exists() and index.stat().st_mtime > _newest_source():
        return BUILT
    out = tmp_path_factory.mktemp("docs-html")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site on http://127.0.0.1:<free port>/."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(1280, 900) as driver:
        yield driver


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const ready = () => document.fonts.ready.then(() => requestAnimationFrame(() => done(true)));"
        "if (document.readyState === 'complete') ready(); else window.addEventListener('load', ready);"
    )


#: Pages also saved whole (top to bottom), for a person to read through.
FULL_PAGE = ("index.html", "configuration.html", "streams.html", "cli.html", "comparison.html")


def _save_full_page(driver: Any, name: str) -> Path:
    """The whole page as one PNG (Chromium's ``captureBeyondViewport``)."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = screenshot_dir() / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _pages(site: Path) -> list[str]:
    return sorted(path.name for path in site.glob("*.html"))


def test_the_site_has_the_pages_the_proof_names(site: Path) -> None:
    pages = _pages(site)
    for page in ("index.html", "configuration.html", "streams.html", "cli.html", "metrics.html"):
        assert page in pages


@pytest.mark.parametrize(("window", "width", "height", "mobile"), WINDOWS, ids=[w[0] for w in WINDOWS])
def test_every_page_fits_the_window(
    browser: Any, served: str, site: Path, window: str, width: int, height: int, mobile: bool
) -> None:
    set_viewport(browser, width, height, mobile=mobile)
    wider: list[str] = []
    problems: dict[str, list[str]] = {}
    for page in _pages(site):
        _open(browser, served + page)
        assert browser.execute_script("return window.innerWidth") == width
        if not browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"):
            wider.append(page)
        found = browser.execute_script(OVERFLOW)
        if found:
            problems[page] = found
        save_screenshot(browser, f"docs-{window}-{page.removesuffix('.html')}")
        if page in FULL_PAGE:
            _save_full_page(browser, f"docs-{window}-{page.removesuffix('.html')}-full")
    assert not wider, (wider, problems)
    assert not problems, problems


def test_code_fits_a_desktop_column_without_wrapping(browser: Any, served: str, site: Path) -> None:
    """The examples are written to fit the text column at 1280 px: wrapping
    (which keeps a phone from scrolling sideways) never cuts a desktop's
    code lines."""
    set_viewport(browser, 1280, 900)
    wrapped: dict[str, list[str]] = {}
    for page in _pages(site):
        _open(browser, served + page)
        found = browser.execute_script(WRAPPED, "article pre")
        if found:
            wrapped[page] = found
    assert not wrapped, wrapped


def test_the_quick_start_fits_a_phone_without_wrapping(browser: Any, served: str) -> None:
    """The first code a newcomer reads is written to a phone's width."""
    set_viewport(browser, 390, 844, mobile=True)
    _open(browser, served + "index.html")
    assert browser.execute_script("return document.querySelectorAll('article pre').length") >= 2
    assert browser.execute_script(WRAPPED, "article pre") == []


def test_the_command_help_fits_a_phone_without_wrapping(browser: Any, served: str) -> None:
    """The CLI reference shows the help formatted for the window's width."""
    set_viewport(browser, 390, 844, mobile=True)
    _open(browser, served + "cli.html")
    assert browser.execute_script("return document.querySelectorAll('.librecache-cli-narrow pre').length") > 1
    assert browser.execute_script(WRAPPED, "article pre") == []
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('.librecache-cli-wide')).every((b) => b.offsetParent === null)"
    )

@pytest.mark.parametrize(("window", "width", "height", "mobile"), WINDOWS, ids=[w[0] for w in WINDOWS])
def test_the_index_shows_the_diagram_scaled_to_the_column(
    browser: Any, served: str, window: str, width: int, height: int, mobile: bool
) -> None:
    set_viewport(browser, width, height, mobile=mobile)
    _open(browser, served + "index.html")
    shown = browser.execute_script(
        """
        const diagram = document.querySelector("article object.graphviz");
        const svg = diagram.contentDocument && diagram.contentDocument.querySelector("svg");
        diagram.scrollIntoView();
        return {
            width: diagram.getBoundingClientRect().width,
            height: diagram.getBoundingClientRect().height,
            column: diagram.closest("article").getBoundingClientRect().width,
            text: svg ? svg.textContent : "",
            filter: getComputedStyle(diagram).filter,
        };
        """
    )
    for label in ("environment", "CacheConfig", "Caches", "region per namespace", "memory", "Redis",
                  "Redis Cluster", "{prefix}::{NAMESPACE}:{key}", "streams", "near cache"):
        assert label in shown["text"]
    assert 0 < shown["width"] <= shown["column"]
    assert shown["height"] > 100  # scaled down, proportions kept: not squashed
    assert shown["filter"] == "none"
    save_screenshot(browser, f"docs-{window}-index-diagram")

    # dark mode (furo's toggle remembers it): the diagram follows
    browser.execute_script("localStorage.setItem('theme', 'dark')")
    try:
        _open(browser, served + "index.html")
        dark = browser.execute_script(
            "const d = document.querySelector('article object.graphviz'); d.scrollIntoView();"
            "return [document.body.dataset.theme, getComputedStyle(d).filter,"
            " getComputedStyle(document.body).backgroundColor];"
        )
        assert dark[0] == "dark"
        assert "invert" in dark[1]
        save_screenshot(browser, f"docs-{window}-index-diagram-dark")
    finally:
        browser.execute_script("localStorage.removeItem('theme')")


def test_the_configuration_reference_has_a_section_per_variable(browser: Any, served: str) -> None:
    set_viewport(browser, 390, 844, mobile=True)
    _open(browser, served + "configuration.html")
    sections = browser.execute_script(
        """
        return Array.from(document.querySelectorAll("section.librecache-variable"), (s) => ({
            id: s.id,
            title: s.querySelector("h3 code").textContent.trim(),
            fields: Array.from(s.querySelectorAll("dl.field-list > dt"), (dt) => dt.textContent.trim()),
            errors: Array.from(s.querySelectorAll(".librecache-error"), (p) => p.textContent.trim()),
        }));
        """
    )
    assert [section["title"] for section in sections] == [variable.name for variable in VARIABLES]
    for section, variable in zip(sections, VARIABLES, strict=True):
        for field in ("Type", "Default", "Example", "Refused"):
            assert any(name.startswith(field) for name in section["fields"]), (variable.name, section["fields"])
        assert len(section["errors"]) == len(variable.bad_values())
        for error in section["errors"]:
            assert variable.name in error
    for name in ("REDIS_URI", "FORCED_IN_MEMORY_CACHE_NAMESPACES"):
        section = next(section["id"] for section in sections if section["title"] == name)
        browser.execute_script(  # the section's top, below the phone's sticky header
            f"const top = document.getElementById('{section}').getBoundingClientRect().top;"
            "window.scrollBy({top: top - 56, behavior: 'instant'});"
        )
        save_screenshot(browser, f"docs-phone-configuration-{section}")


def test_a_copy_button_copies_code_that_runs(browser: Any, served: str) -> None:
    """The quick start's example, copied with its button, has no prompts
    and no output lines: pasted into Python, it runs. (What the button puts
    on the clipboard is read from the page's ``copy`` event: a headless
    browser has no system clipboard to read back.)"""
    from selenium.webdriver.common.action_chains import ActionChains

    set_viewport(browser, 1280, 900)
    _open(browser, served + "index.html")
    button = browser.execute_script(
        """
        window.copiedText = null;
        document.addEventListener("copy", (event) => {
            const field = event.target;
            window.copiedText = field.value !== undefined
                ? field.value.substring(field.selectionStart, field.selectionEnd) : String(document.getSelection());
        }, {capture: true, once: true});
        const block = Array.from(document.querySelectorAll("article div.highlight"))
            .find((b) => b.textContent.includes(">>> import librecache"));
        block.scrollIntoView();
        return block.querySelector("button.copybtn");
        """
    )
    ActionChains(browser).move_to_element(button).click(button).perform()  # a real click: copying needs one
    copied = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const poll = () => window.copiedText !== null ? done(window.copiedText) : setTimeout(poll, 20); poll();"
    )
    assert copied.startswith("import librecache\n"), copied
    assert ">>>" not in copied and "..." not in copied, copied
    assert "['read', 'write']" not in copied  # output lines are left out
    ran = subprocess.run([sys.executable, "-c", copied], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "loading admin\n", copied
