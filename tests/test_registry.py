"""The task registry: every task satisfies the protocol; checkpoints go to their own task."""

from __future__ import annotations

import pytest

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint
from napari_sim_uq.core.task import Task
from napari_sim_uq.tasks import (
    REGISTRY,
    check_checkpoint_task,
    get_task,
    load_task_checkpoint,
    task_name_for_model_type,
)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_task_satisfies_the_protocol(name):
    task = get_task(name)
    assert isinstance(task, Task)
    assert task.name == name and task.model_types == REGISTRY[name][1]
    assert task.title == REGISTRY[name][2]
    keys = [o.key for o in task.outputs]
    assert len(keys) == len(set(keys))
    for t in task.model_types:
        assert task_name_for_model_type(t) == name


def test_unknown_task():
    with pytest.raises(InputError, match="unknown task 'vae'.*sim, ae2d"):
        get_task("vae")


def test_a_sim_checkpoint_is_refused_by_the_2d_task(tmp_path):
    from napari_sim_uq.api import example_model_path

    sim = example_model_path()
    assert load_task_checkpoint(sim, "sim").model_type == "sim_uq_net"
    with pytest.raises(InputError, match="SIM reconstruction model.*2D autoencoder.*train-2d"):
        load_task_checkpoint(sim, "ae2d")
    ck = load_checkpoint(sim)
    other = tmp_path / "ae.pt"
    save_checkpoint(other, model_state={}, config={**ck.config, "model_type": "ae2d"})
    with pytest.raises(InputError, match="2D autoencoder model.*SIM reconstruction.*sim-uq train"):
        load_task_checkpoint(other, "sim")
    with pytest.raises(InputError, match="is for model 'vae', which no task"):
        check_checkpoint_task("x.pt", "vae", "sim")
