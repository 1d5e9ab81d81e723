"""Headless Chromium for the HTML report's tests: render a page, screenshot it, collect its console messages.

Chromium's `--enable-logging=stderr` writes every console message of the page
(console.error, an uncaught exception, a Content-Security-Policy refusal) as a
line holding ':CONSOLE'; a report page logs nothing, so any such line is an error.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import STRICT, need

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def chromium() -> str:
    """The chromium executable; skips the test (fails under PARITY_STRICT=1) when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (scripts/install.sh installs Debian's package)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return found


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 1800) -> list[str]:
    """Render `page` into `png`; returns the page's console messages."""
    with tempfile.TemporaryDirectory(prefix="parity-chromium-") as profile:
        result = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={png}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def colours(png: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not white) of a screenshot."""
    need("PIL")  # Pillow, from the test extra
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        counts = rgb.getcolors(maxcolors=1 << 24)
    total = sum(count for count, _ in counts)
    white = sum(count for count, colour in counts if min(colour) >= 250)
    return len(counts), 1.0 - white / total
