"""SIM training job: learning, resume, stop, refusal to overwrite, DDP (2 gloo processes)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset
from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

TINY_MODEL = {"hr_factor": 2, "base_channels": 8, "depth": 2, "psf_size": 7}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("simdata")
    cfg = SynthConfig(lr_size=(24, 24), hr_factor=2, psf_sigma_lr=(0.8, 1.0))
    run(generate_dataset(root, 8, cfg, seed=0, workers=1))
    run(generate_dataset(root, 4, cfg, seed=1, split="val", workers=1))
    return root


def _cfg(data, ckpt, **kw):
    base = dict(
        train_glob=str(data / "train" / "*.tif"),
        val_glob=str(data / "val" / "*.tif"),
        ckpt_dir=str(ckpt),
        epochs=3,
        batch_size=4,
        lr=3e-3,
        device="cpu",
        model=dict(TINY_MODEL),
    )
    base.update(kw)
    return TrainConfig(**base)


def _rows(ckpt):
    with open(Path(ckpt) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_the_loss_and_writes_files(data, tmp_path):
    res = run(train_sim_job(_cfg(data, tmp_path / "ck", epochs=6)))
    rows = _rows(tmp_path / "ck")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.05 * abs(losses[0])
    assert "val_loss" in rows[0] and "val_raw_zms" in rows[0]
    ck = load_checkpoint(tmp_path / "ck" / "latest.pt", expected_model_type="sim_uq_net")
    assert ck.train_state["epoch"] == 6 and ck.train_state["step"] == res["steps"] == 12
    assert (tmp_path / "ck" / "best.pt").exists()


def test_resume_continues_the_same_run(data, tmp_path):
    run(train_sim_job(_cfg(data, tmp_path / "full", epochs=3)))
    # interrupted after 2 of the 3 planned epochs (same learning-rate schedule), then resumed
    run(train_sim_job(_cfg(data, tmp_path / "part", epochs=3, max_steps=4)))
    assert load_checkpoint(tmp_path / "part" / "latest.pt").train_state["epoch"] == 2
    run(train_sim_job(_cfg(data, tmp_path / "part", epochs=3, resume=True)))
    full = load_checkpoint(tmp_path / "full" / "latest.pt")
    part = load_checkpoint(tmp_path / "part" / "latest.pt")
    assert part.train_state["step"] == full.train_state["step"] == 6
    for k, v in full.model_state.items():
        torch.testing.assert_close(part.model_state[k], v, rtol=1e-5, atol=1e-6)
    assert [r["epoch"] for r in _rows(tmp_path / "part")] == ["1", "2", "3"]


def test_stop_mid_epoch_leaves_a_loadable_checkpoint(data, tmp_path):
    job = train_sim_job(_cfg(data, tmp_path / "ck", epochs=2, batch_size=2))
    events = [next(job) for _ in range(3)]  # 3 optimiser steps into epoch 1 (of 4 per epoch)
    assert [e.step for e in events] == [1, 2, 3]
    job.close()  # what napari's worker.quit() does
    ck = load_checkpoint(tmp_path / "ck" / "latest.pt", expected_model_type="sim_uq_net")
    assert ck.train_state["step"] == 3 and ck.train_state["epoch"] == 0
    # and it resumes inside epoch 1: the same 8 steps and weights as a run never stopped
    res = run(train_sim_job(_cfg(data, tmp_path / "ck", epochs=2, batch_size=2, resume=True)))
    full = run(train_sim_job(_cfg(data, tmp_path / "full", epochs=2, batch_size=2)))
    assert res["steps"] == full["steps"] == 8 and res["epochs_done"] == 2
    stopped = load_checkpoint(tmp_path / "ck" / "latest.pt")
    uninterrupted = load_checkpoint(tmp_path / "full" / "latest.pt")
    assert stopped.train_state["epoch"] == uninterrupted.train_state["epoch"] == 2
    for k, v in uninterrupted.model_state.items():
        torch.testing.assert_close(stopped.model_state[k], v, rtol=1e-5, atol=1e-6)


def test_refuses_to_overwrite_an_existing_run(data, tmp_path):
    run(train_sim_job(_cfg(data, tmp_path / "ck", epochs=1)))
    before = (tmp_path / "ck" / "latest.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        run(train_sim_job(_cfg(data, tmp_path / "ck", epochs=1)))
    assert (tmp_path / "ck" / "latest.pt").read_bytes() == before


def test_bad_input(data, tmp_path):
    with pytest.raises(InputError, match="no files match"):
        run(train_sim_job(_cfg(data, tmp_path / "ck", train_glob=str(tmp_path / "x*.tif"))))
    with pytest.raises(InputError, match="frames"):  # model for 4 angles x 3 phases
        run(train_sim_job(_cfg(data, tmp_path / "ck", model={**TINY_MODEL, "n_angles": 4})))
    with pytest.raises(InputError, match="lr"):
        run(train_sim_job(_cfg(data, tmp_path / "ck", lr=-1.0)))


@pytest.mark.slow
def test_ddp_two_gloo_processes(data, tmp_path):
    """torchrun --nproc_per_node=2 on CPU: one set of files, a loss curve like one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "--train-glob",
        str(data / "train" / "*.tif"),
        "--epochs",
        "4",
        "--batch-size",
        "2",
        "--lr",
        "3e-3",
        "--device",
        "cpu",
        "--hr-factor",
        "2",
        "--base-channels",
        "8",
        "--depth",
        "2",
        "--psf-size",
        "7",
        "--quiet",
    ]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "napari_sim_uq",
            "train",
            "--ckpt-dir",
            str(tmp_path / "ddp"),
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "best.pt",
        "latest.pt",
        "metrics.csv",
    ]
    assert out.stdout.count("trained 4 epochs") == 1  # only rank 0 reports
    rows = _rows(tmp_path / "ddp")
    assert len(rows) == 4
    ddp = [float(r["train_loss"]) for r in rows]
    # each rank sees half of the 8 stacks per epoch: 2 steps of 2 stacks
    assert int(rows[-1]["step"]) == 8
    assert ddp[-1] < ddp[0]


def test_camera_noise_starts_from_the_data_and_learns_faster(data, tmp_path):
    import torch.nn.functional as F

    from napari_sim_uq.core.nn.losses import CameraNoise
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset

    def camera(ck_dir):
        state = load_checkpoint(Path(ck_dir) / "latest.pt").extra["loss_state"]
        return float(F.softplus(state["camera.a"])), float(F.softplus(state["camera.c"]))

    # a tiny learning rate: after one Adam step the values are the starting values
    run(train_sim_job(_cfg(data, tmp_path / "d", max_steps=1, lr=1e-9, lr_schedule="constant")))
    ds = SimStackDataset(str(data / "train" / "*.tif"), expected_frames=9)
    ref = CameraNoise()
    alpha, beta = ref.init_from_data(torch.stack([ds[i]["x"] for i in range(len(ds))]))
    got = camera(tmp_path / "d")
    assert got[0] == pytest.approx(alpha, rel=1e-4) and got[1] == pytest.approx(beta, rel=1e-3)
    run(train_sim_job(_cfg(data, tmp_path / "f", max_steps=1, lr=1e-9, camera_init="fixed")))
    assert camera(tmp_path / "f")[0] == pytest.approx(1e-3, rel=1e-4)
    # the camera parameters form their own optimiser group with lr * camera_lr_factor
    ck = load_checkpoint(tmp_path / "d" / "latest.pt")
    lrs = [g["lr"] for g in ck.optimizer_state["param_groups"]]
    assert lrs == pytest.approx([1e-9, 1e-8])
    with pytest.raises(InputError, match="camera_init"):
        _cfg(data, tmp_path / "x", camera_init="guess").validate()


def test_cosine_learning_rate_schedule(data, tmp_path):
    import math

    # 8 stacks / batch 4 = 2 steps per epoch, 3 epochs: 6 planned steps, stopped after 4
    run(train_sim_job(_cfg(data, tmp_path / "c", max_steps=4, lr=1e-3, min_lr_ratio=0.1)))
    ck = load_checkpoint(tmp_path / "c" / "latest.pt")
    factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 6))  # plan: the 3 epochs
    lrs = [g["lr"] for g in ck.optimizer_state["param_groups"]]
    assert lrs == pytest.approx([1e-3 * factor, 1e-2 * factor])
    assert ck.scheduler_state["last_epoch"] == 4
    run(train_sim_job(_cfg(data, tmp_path / "k", max_steps=2, lr_schedule="constant")))
    ck = load_checkpoint(tmp_path / "k" / "latest.pt")
    assert ck.optimizer_state["param_groups"][0]["lr"] == pytest.approx(3e-3)
