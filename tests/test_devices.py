"""devices.resolve_device: one rule for every job, command and widget."""

import pytest
import torch

from napari_sim_uq.core.devices import DEVICE_CHOICES, resolve_device
from napari_sim_uq.core.errors import InputError


def test_explicit_and_automatic_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    auto = resolve_device("auto")
    assert resolve_device(None) == auto
    if expected:
        assert auto.type == expected
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        assert auto == torch.device("cpu")
    assert set(DEVICE_CHOICES) == {"auto", "cpu", "cuda", "mps"}


def test_unavailable_or_unknown_devices_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
