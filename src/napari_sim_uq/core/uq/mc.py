"""Seeded Monte Carlo dropout randomness that never touches the caller's random state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["RngStream", "image_seed", "mc_chunk_seed"]


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a run with ``seed`` (its degradation, mask and passes):
    independent streams per image, the same for the same ``(seed, index)`` whatever the other
    images."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def mc_chunk_seed(seed: int, chunk: int) -> int:
    """Seed of the dropout RNG for MC chunk ``chunk`` (0-based) of a call with ``seed``."""
    return (int(seed) * 1_000_003 + 7919 * int(chunk)) % (2**63 - 1)


class RngStream:
    """Private dropout randomness on ``device``: inside :meth:`active(chunk)` the global
    generator(s) are seeded with :func:`mc_chunk_seed`; the caller's state is restored on
    exit (yields of the job never leak or consume the caller's random state). Seeding per
    chunk, not continuing one stream, makes chunk ``c`` draw the same dropout masks in every
    tile and in the encoder-only pooling pass."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = int(seed)
        self.device = device
        self.cuda = device.type == "cuda"

    @contextmanager
    def active(self, chunk: int) -> Iterator[None]:
        idx = self.device.index
        if self.cuda and idx is None:
            idx = torch.cuda.current_device()
        devices = [idx] if self.cuda else []
        s = mc_chunk_seed(self.seed, chunk)
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.default_generator.manual_seed(s)
            if self.cuda:
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(s)
            elif self.device.type != "cpu":
                torch.manual_seed(s)
            yield
