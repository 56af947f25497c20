"""The task registry: model families by name and by checkpoint model type.

Tasks are named by module path only (nothing is imported until asked for), so importing the
registry is cheap and a task never depends on another.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from napari_sim_uq.core.errors import InputError

#: task name -> (module holding ``TASK``, checkpoint model types, title)
REGISTRY: dict[str, tuple[str, tuple[str, ...], str]] = {
    "sim": ("napari_sim_uq.tasks.sim.task", ("sim_uq_net",), "SIM reconstruction"),
    "ae2d": ("napari_sim_uq.tasks.ae2d.task", ("ae2d",), "2D autoencoder"),
    "vae2d": ("napari_sim_uq.tasks.vae2d.task", ("vae2d",), "VAE posterior"),
    "mae2d": ("napari_sim_uq.tasks.mae2d.task", ("mae2d",), "masked reconstruction"),
}


def task_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_task(name: str) -> Any:
    """The :class:`~napari_sim_uq.core.task.Task` called ``name``."""
    if name not in REGISTRY:
        raise InputError(f"unknown task {name!r}; the tasks are {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name][0]).TASK


def task_name_for_model_type(model_type: str) -> str | None:
    for name, (_, types, _) in REGISTRY.items():
        if model_type in types:
            return name
    return None


def check_checkpoint_task(checkpoint: str | Path, model_type: str, wanted: str) -> None:
    """Raise a clear :class:`InputError` if a checkpoint of ``model_type`` does not belong to
    task ``wanted`` (e.g. a SIM model given to the 2D reconstruction)."""
    owner = task_name_for_model_type(model_type)
    if owner == wanted:
        return
    need = REGISTRY[wanted][2]
    if owner is None:
        raise InputError(
            f"checkpoint '{checkpoint}' is for model {model_type!r}, which no task of this "
            f"version knows; this needs a {need} checkpoint"
        )
    raise InputError(
        f"checkpoint '{checkpoint}' is for model {model_type!r} (a {REGISTRY[owner][2]} "
        f"model), but this is the {need} task: use a checkpoint trained with "
        f"`sim-uq {get_task(wanted).train_command}`"
    )


def load_task_checkpoint(checkpoint: str | Path, wanted: str, map_location: Any = "cpu"):
    """Load a checkpoint for task ``wanted`` (clear error for another task's checkpoint)."""
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint, map_location=map_location)
    check_checkpoint_task(checkpoint, ck.model_type, wanted)
    return ck


def load_task_model(
    checkpoint: str | Path, wanted: str, build: Any, device: Any = "cpu", *, full_config=False
):
    """``(model in eval mode on device, Checkpoint)`` of a checkpoint of task ``wanted``:
    ``build(model_config_dict)`` (``build(model_config_dict, config)`` with
    ``full_config``) makes the network, the stored weights are loaded into it; clear errors
    for another task's checkpoint or weights that do not fit."""
    ck = load_task_checkpoint(checkpoint, wanted, map_location="cpu")
    model_cfg = ck.config.get("model")
    if not isinstance(model_cfg, dict):
        raise InputError(f"checkpoint '{checkpoint}' has no model configuration")
    model = build(model_cfg, ck.config) if full_config else build(model_cfg)
    try:
        model.load_state_dict(ck.model_state)
    except RuntimeError as err:
        raise InputError(
            f"checkpoint '{checkpoint}': weights do not fit the stored model configuration "
            f"({str(err).splitlines()[0]})"
        ) from None
    model.eval().to(device)
    return model, ck
