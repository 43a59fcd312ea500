"""Headless Debian `chromium` for page tests: the DOM after the page loaded, or a screenshot."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.require import require_binary

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
)


def _run(directory: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = require_binary("chromium")
    profile = directory / "chromium-profile"  # fresh per call: no state shared between tests
    profile.mkdir(parents=True, exist_ok=False)
    argv = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, start_new_session=True)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done


def dump_dom(directory: Path, url: str, timeout: float = 60.0) -> str:
    """The serialized DOM of url once loaded (what the browser built, not the bytes served)."""
    return _run(directory / "dom", ["--dump-dom", url], timeout).stdout.decode("utf-8")


def screenshot(directory: Path, url: str, size: tuple[int, int] = (1280, 900), timeout: float = 60.0) -> Path:
    path = directory / "screenshot.png"
    _run(directory / "shot", [f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", url], timeout)
    return path
