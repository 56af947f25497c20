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


def _assert_same_noisy_data(a, b, what: str = "") -> None:
    """Equal up to float rounding of the clean data. A shot-noise count that differs (what
    a last-bit change of a Poisson rate does to a rate-dependent sampler, issue 11) changes
    a pixel by at least one count, far above this tolerance."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    bad = np.abs(a - b) > 1e-3 + 1e-6 * np.abs(b)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {a.size} values differ by more than rounding, first at "
        f"{tuple(int(i) for i in np.argwhere(bad)[0])}"
    )


@pytest.fixture
def assert_same_noisy_data():
    """``assert_same_noisy_data(a, b, what)``: generated noisy data equal on any machine."""
    return _assert_same_noisy_data
