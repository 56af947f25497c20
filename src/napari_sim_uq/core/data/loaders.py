"""File lists and deterministic data loaders for training (PyTorch; no Qt, no napari).

:func:`resolve_files` turns a glob, a folder or a list into image files; :func:`make_loader`
builds a ``DataLoader`` whose order depends only on the seed and the epoch
(:func:`set_loader_epoch`), on one process or under ``torch.distributed``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.tiff_io import READ_SUFFIXES

__all__ = ["EpochSampler", "make_loader", "positive_int", "resolve_files", "set_loader_epoch"]


def positive_int(v: Any, name: str, allow_none: bool = True) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def resolve_files(pattern_or_paths: str | os.PathLike | Iterable) -> list[Path]:
    """The files named by a glob (``"D/train/*.tif"``, sorted), a folder (its image files,
    sorted) or a list of paths (kept in the given order)."""
    if isinstance(pattern_or_paths, (str, os.PathLike)):
        spec = os.fspath(pattern_or_paths)
        p = Path(spec).expanduser()
        if p.is_dir():
            files = sorted(
                q
                for q in p.iterdir()
                if q.is_file() and q.suffix.lower() in READ_SUFFIXES and not q.name.startswith(".")
            )
            if not files:
                raise InputError(f"no image files ({', '.join(READ_SUFFIXES)}) in folder '{p}'")
            return files
        if any(c in spec for c in "*?["):
            matches = glob.glob(os.path.expanduser(spec), recursive=True)
            files = sorted(Path(m) for m in matches if Path(m).is_file())
            if not files:
                raise InputError(f"no files match '{spec}'")
            return files
        if not p.exists():
            raise InputError(f"no files match '{spec}' (no such file or folder)")
        return [p]
    try:
        files = [Path(os.fspath(q)) for q in pattern_or_paths]
    except TypeError:
        raise InputError(
            "expected a glob pattern, a folder or a list of file paths, got "
            f"{type(pattern_or_paths).__name__}"
        ) from None
    if not files:
        raise InputError("the list of input files is empty")
    return files


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled (optionally) by a permutation that depends only on
    ``seed`` and the epoch (:meth:`set_epoch`), like ``DistributedSampler`` on one process."""

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0) -> None:
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator()
        g.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A deterministic DataLoader over ``dataset``.

    The order depends only on ``seed`` and the epoch: call :func:`set_loader_epoch` at the
    start of every epoch (it also selects the dataset's random crops); without it every
    epoch repeats epoch 0. With ``distributed=True`` a ``DistributedSampler`` splits the
    items between the ranks of the initialised ``torch.distributed`` process group.
    Workers are not persistent, so they see the dataset's current epoch; the item
    randomness (crops) is explicit in the dataset, and PyTorch seeds each worker's
    ``random``/NumPy/torch state from the loader's seeded generator.
    """
    batch_size = positive_int(batch_size, "batch_size", False)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InputError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if batch_size > 1 and hasattr(dataset, "check_batchable"):
        dataset.check_batchable()  # e.g. SimStackDataset: items of one shape
    if distributed:
        import torch.distributed as dist
        from torch.utils.data.distributed import DistributedSampler

        if not (dist.is_available() and dist.is_initialized()):
            raise InputError(
                "distributed=True needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group, e.g. under torchrun)"
            )
        world, rank = dist.get_world_size(), dist.get_rank()
        sampler: Sampler = DistributedSampler(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
        )
        per_rank = len(sampler)
    else:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=int(seed))
        per_rank = len(dataset)
    if drop_last and per_rank < batch_size:
        raise InputError(
            f"only {per_rank} items per process but batch_size={batch_size} with "
            "drop_last=True: no batch would be produced; lower batch_size"
        )
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=g,
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Start ``epoch``: sets the sampler's shuffle and the dataset's crops (if they have
    ``set_epoch``)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
