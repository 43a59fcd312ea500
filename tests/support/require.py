"""Real peers are required: a missing server binary fails the test (never skips it)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, package: str | None = None) -> str:
    """Path of an executable, or a failing test that says how to install it."""
    for candidate in (name, f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/usr/lib/postfix/sbin/{name}"):
        path = shutil.which(candidate) if "/" not in candidate else (candidate if os.access(candidate, os.X_OK) else None)
        if path:
            return path
    pytest.fail(
        f"{name} is required by this test but not installed; run scripts/test (it installs the Debian "
        f"package {package or name}) or apt-get install {package or name}",
        pytrace=False,
    )


def require_root(reason: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"this test needs root ({reason}); run the test suite as root as CI does", pytrace=False)


def require_module(name: str, package: str) -> None:
    """A Python package a test's peer needs (from the `test` extra), or a failing test that says how to get it."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        pytest.fail(
            f"{package} is required by this test but not installed; run scripts/setup (it installs the `test` extra)",
            pytrace=False,
        )
