"""Compute devices: one rule for every job, command and widget (no Qt, no napari).

``resolve_device("auto")`` picks CUDA if PyTorch sees a GPU, else Apple's MPS, else the CPU;
explicit names (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) are checked and give an
``InputError`` that says what is missing.
"""

from __future__ import annotations

from napari_sim_uq.core.errors import InputError

#: Device names the front ends offer.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str):
    """``auto`` -> CUDA if available, else MPS, else CPU; explicit names are checked."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but PyTorch sees no CUDA GPU")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError("device 'mps' was requested but it is not available")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)
