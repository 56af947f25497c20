"""Shared fixtures. Widget/viewer tests are marked ``gui`` and need a display (xvfb-run)."""

from __future__ import annotations

import os

import numpy as np
import pytest


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_collection_modifyitems(config, items):
    if _has_display():
        return
    skip = pytest.mark.skip(reason="needs a display for napari's OpenGL canvas: run under xvfb-run")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
