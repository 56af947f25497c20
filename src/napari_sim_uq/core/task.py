"""What a task is (DESIGN.md 1): the interface every model family implements.

A task (SIM, the 2D autoencoders, ...) lives in ``napari_sim_uq.tasks.<name>`` and exposes
one object satisfying :class:`Task`; the registry (:mod:`napari_sim_uq.tasks`) finds it by
name or by a checkpoint's model type. The core never imports a task: the generic machinery
(training loop, tiled MC prediction, calibration, metrics, output tables) is handed what it
needs by the task.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from napari_sim_uq.core.io.outputs import OutputSpec

__all__ = ["Prediction", "Task"]


@dataclass
class Prediction:
    """A task's result: named arrays (means and std maps, keyed as in the task's output
    table) and metadata (model, options, timings)."""

    arrays: dict[str, Any]
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """One model family."""

    #: registry key, e.g. ``"sim"``
    name: str
    #: for messages, e.g. ``"SIM reconstruction"``
    title: str
    #: ``config["model_type"]`` values of this task's checkpoints
    model_types: tuple[str, ...]
    #: how the arrays of a :class:`Prediction` are named, placed and shown (files and layers)
    outputs: tuple[OutputSpec, ...]
    #: the training config dataclass (a ``TrainOptions`` subclass); its field metadata
    #: generates the CLI options and widget fields
    train_config: type
    #: the command that trains this task's checkpoints (for messages)
    train_command: str

    def train(self, cfg: Any) -> Generator:
        """The training job (events; returns a summary)."""
        ...

    def load_model(self, checkpoint: Any, device: Any = "cpu") -> tuple[Any, Any]:
        """``(model in eval mode, Checkpoint)``; clear errors for another task's file."""
        ...
