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


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny tensors on one torch thread (restored afterwards): on a loaded
    2-core machine the intra-op thread pool waits far longer than it computes (about 20x
    slower measured). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
