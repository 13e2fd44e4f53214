"""A real browser for the tests: Debian's Chromium driven by Selenium.

Headless Chromium from the ``chromium`` and ``chromium-driver`` packages
(the README's test command installs them when missing), started with the
flags that keep it off the network: it only ever loads pages served on
127.0.0.1. Screenshots go under :func:`screenshot_dir`, which the test run
prints so that a person can look at what a user would have seen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Where screenshots go (LC_TEST_SCREENSHOTS overrides it).
_DEFAULT_DIR = Path(tempfile.gettempdir()) / "librecache-screenshots"


def screenshot_dir() -> Path:
    """The folder screenshots are saved in (created)."""
    folder = Path(os.environ.get("LC_TEST_SCREENSHOTS", str(_DEFAULT_DIR)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[object]:
    """A headless Chromium window of ``width`` x ``height`` CSS pixels; a
    Selenium ``WebDriver``. Skips the test when Chromium is not installed."""
    if not browser_available():
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="librecache-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        set_viewport(driver, width, height)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver: object, width: int, height: int, mobile: bool = False) -> None:
    """Make the page's viewport exactly ``width`` x ``height`` CSS pixels
    (``mobile`` also emulates a phone: meta viewport honoured, touch)."""
    driver.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def save_screenshot(driver: object, name: str) -> Path:
    """Save the current page as ``<screenshot_dir>/<name>.png``; return the path."""
    path = screenshot_dir() / f"{name}.png"
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    return path
