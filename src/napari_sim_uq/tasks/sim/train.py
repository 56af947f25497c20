"""The SIM training job: one loop, written as a generator of progress events (DESIGN.md 2).

``train_sim_job(cfg)`` yields :class:`~napari_sim_uq.core.events.Event` objects (stage
``"train"`` per batch, ``"validate"`` per epoch) and returns a summary dict. Closing the
generator (``job.close()``, which napari's ``worker.quit()`` does) stops it at the next
batch; the ``finally`` block then writes a consistent ``latest.pt`` (the state after the
last completed optimiser step), so a stopped run can be resumed.

Files in ``ckpt_dir`` (written by rank 0 only, atomically):

- ``latest.pt``: the last state (weights, optimiser, loss parameters, epoch/step);
- ``best.pt``: the state with the lowest validation loss (training loss without
  validation data);
- ``metrics.csv``: one row per epoch (losses and calibration metrics);
- ``debug_samples/epoch_XXX/``: with ``debug_every_epochs = N > 0``, every ``N`` epochs,
  predictions, std maps, summaries and plots for a few fixed samples
  (:mod:`napari_sim_uq.tasks.sim.debug`; an Event with stage ``"debug"`` names the folder).

Under ``torchrun --nproc_per_node=N`` the same job trains with DistributedDataParallel
(NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from napari_sim_uq.core.config import JsonConfig, option
from napari_sim_uq.core.devices import resolve_device
from napari_sim_uq.core.errors import InputError

MODEL_TYPE = "sim_uq_net"

#: Learning-rate schedules (``TrainConfig.lr_schedule``).
LR_SCHEDULES = ("cosine", "constant")

#: Starts of the camera-noise parameters (``TrainConfig.camera_init``).
CAMERA_INITS = ("data", "fixed")


def _gt_norms() -> tuple[str, ...]:
    # the ground-truth scalings of the dataset; imported late: that module needs torch
    from napari_sim_uq.tasks.sim.dataset import GT_NORMS

    return GT_NORMS


#: default final learning rate of the cosine schedule, as a fraction of ``lr``
_MIN_LR_RATIO = 0.05


@dataclass
class TrainConfig(JsonConfig):
    """Everything a SIM training run needs (JSON-serialisable; stored in checkpoints)."""

    _what = "training options"

    train_glob: str = option("", help='raw stacks, e.g. "D/train/*.tif"')
    ckpt_dir: str = option("checkpoints", help="writes latest.pt, best.pt and metrics.csv here")
    val_glob: str | None = option(None, help='validation stacks, e.g. "D/val/*.tif"')
    epochs: int = option(10, help="number of epochs", minimum=1)
    batch_size: int = option(4, help="stacks per optimiser step", minimum=1)
    lr: float = option(1e-3, help="learning rate", minimum=0.0)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    device: str = option("auto", help="auto, cpu, cuda or mps")
    seed: int = option(0, help="random seed")
    resume: bool = option(False, help="continue from CKPT_DIR/latest.pt")
    # stop after this many optimiser steps in total (tests)
    max_steps: int | None = option(None, help="stop after this many steps", minimum=1)
    # random LR crop size (None: whole stacks)
    crop: int | None = option(None, help="random crops of this many raw pixels")
    num_workers: int = 0
    # data
    supervised: bool = option(False, help="also fit the generator's ground truth (D/<split>_gt)")
    gt_norm: str = option(
        "raw", help="ground-truth scaling (raw = physics-consistent)", choices=_gt_norms
    )
    norm_mode: str = "percentile"
    # camera-noise parameters: "data" estimates them from the first training batches at the
    # start of a new run (CameraNoise.init_from_data), "fixed" starts from the loss config's
    # initial values; they learn with lr * camera_lr_factor (two scalars that would
    # otherwise need thousands of Adam steps to move by an order of magnitude)
    camera_init: str = option(
        "data",
        help="camera-noise start: estimated from the data, or fixed small values",
        choices=CAMERA_INITS,
    )
    camera_lr_factor: float = 10.0
    # learning-rate schedule over the run's steps: "cosine" decays from lr to
    # lr * min_lr_ratio (every group alike), "constant" keeps lr
    lr_schedule: str = option(
        "cosine",
        help=f"cosine: decay to {_MIN_LR_RATIO:.0%} of the learning rate over the run "
        "(min_lr_ratio); constant: keep it",
        choices=LR_SCHEDULES,
    )
    min_lr_ratio: float = _MIN_LR_RATIO
    # debug folders (training/debug.py): every N epochs (0: off), on the first K samples
    debug_every_epochs: int = option(
        0,
        help="every N epochs write CKPT_DIR/debug_samples/epoch_XXX/ (predictions, std maps, "
        "histograms, summaries; 0 = off)",
        minimum=0,
        metavar="N",
    )
    debug_samples: int = option(
        2,
        help="number of fixed (validation) samples in each debug folder",
        minimum=1,
        metavar="K",
    )
    # model (SimNetConfig fields)
    model: dict = field(default_factory=dict)
    # loss (SimLossConfig fields)
    loss: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not self.train_glob:
            raise InputError("train_glob is required (e.g. 'data/train/*.tif')")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be >= 1, got {self.max_steps!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(
                f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InputError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if self.camera_init not in CAMERA_INITS:
            raise InputError(f"camera_init must be 'data' or 'fixed', got {self.camera_init!r}")
        if not (self.camera_lr_factor > 0 and math.isfinite(self.camera_lr_factor)):
            raise InputError(
                f"camera_lr_factor must be a positive number, got {self.camera_lr_factor!r}"
            )
        d = self.debug_every_epochs
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InputError(f"debug_every_epochs must be an integer >= 0 (0: off), got {d!r}")
        k = self.debug_samples
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"debug_samples must be a positive integer, got {k!r}")


# ----------------------------------------------------------------------------- DDP


@dataclass
class _Dist:
    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device) -> _Dist:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    return _Dist(True, dist.get_rank(), dist.get_world_size(), local)


def _all_mean(values: dict[str, float], d: _Dist, device) -> dict[str, float]:
    """Average scalar metrics over ranks (identity without DDP)."""
    if not d.enabled or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= d.world
    return dict(zip(keys, t.tolist(), strict=True))


# ----------------------------------------------------------------------------- helpers


def _to_device(batch: dict, device) -> dict:
    import torch

    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = _to_device(v, device)
        else:
            out[k] = v
    return out


class _MetricsCSV:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict) -> None:
        from napari_sim_uq.core.io.tiff_io import atomic_write

        rows = []
        if self.path.exists():
            with open(self.path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])]  # resume rewrites
        rows.append({k: row[k] for k in row})
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write, overwrite=True)


def _raw_calibration(x, y_mean, y_var) -> dict[str, float]:
    """Calibration of the raw-frame predictive distribution (already includes noise)."""
    r = (x - y_mean).detach()
    v = y_var.detach()
    z2 = r * r / v
    return {
        "raw_zms": float(z2.mean()),
        "raw_cov95": float((z2 <= 1.959963984540054**2).float().mean()),
    }


# ----------------------------------------------------------------------------- the job


def train_sim_job(cfg: TrainConfig):
    """Train the SIM uncertainty network; a job (generator of Events, returns a summary)."""
    import torch

    from napari_sim_uq.core.data.loaders import make_loader, set_loader_epoch
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.loss import NonFiniteLossError, SimLoss, SimLossConfig
    from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet

    cfg.validate()
    device = resolve_device(cfg.device)
    dist = _init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(cfg.seed)

    ckpt_dir = Path(cfg.ckpt_dir)
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise InputError(f"checkpoint folder '{ckpt_dir}' is a file")
    latest, best = ckpt_dir / "latest.pt", ckpt_dir / "best.pt"
    if latest.exists() and not cfg.resume:
        raise FileExistsError(
            f"'{latest}' exists: pass resume=True (--resume) to continue that run, or choose "
            "another checkpoint folder; nothing was overwritten"
        )

    model_cfg = SimNetConfig.from_dict(dict(cfg.model)) if cfg.model else SimNetConfig()

    def dataset(pattern: str, crop: int | None) -> SimStackDataset:
        return SimStackDataset(
            pattern,
            supervised=cfg.supervised,
            gt_norm=cfg.gt_norm,
            norm_mode=cfg.norm_mode,
            expected_frames=model_cfg.n_frames,
            hr_factor=model_cfg.hr_factor if cfg.supervised else None,
            crop=(crop, crop) if crop else None,
            seed=cfg.seed,
        )

    train_ds = dataset(cfg.train_glob, cfg.crop)
    if cfg.supervised and train_ds.hr_factor != model_cfg.hr_factor:
        raise InputError(
            f"the ground truth is {train_ds.hr_factor}x finer than the raw data but the model "
            f"is configured for hr_factor {model_cfg.hr_factor}"
        )
    val_ds = dataset(cfg.val_glob, None) if cfg.val_glob else None
    train_loader = make_loader(
        train_ds,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        distributed=dist.enabled,
    )
    val_loader = (
        make_loader(val_ds, cfg.batch_size, shuffle=False, seed=cfg.seed, distributed=dist.enabled)
        if val_ds is not None
        else None
    )

    debug_writer = None
    if cfg.debug_every_epochs and dist.main:
        from napari_sim_uq.tasks.sim.debug import DEBUG_DIRNAME, DebugSampleWriter

        # fixed samples, never randomly cropped: validation data, else the training files
        if val_ds is not None:
            debug_ds = val_ds
        else:
            debug_ds = dataset(cfg.train_glob, None) if cfg.crop else train_ds
        debug_writer = DebugSampleWriter(
            debug_ds,
            ckpt_dir / DEBUG_DIRNAME,
            n_samples=cfg.debug_samples,
            supervised=cfg.supervised,
        )

    model = SimUQNet(model_cfg).to(device)
    loss_cfg = SimLossConfig.from_dict({"supervised": cfg.supervised, **dict(cfg.loss)})
    criterion = SimLoss(loss_cfg, model_cfg.hr_factor).to(device)
    params = list(model.parameters()) + list(criterion.parameters())
    groups = [{"params": list(model.parameters())}]
    if list(criterion.parameters()):
        groups.append({"params": list(criterion.parameters()), "lr": cfg.lr * cfg.camera_lr_factor})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # the schedule spans the planned epochs; max_steps only interrupts the run, so a run
    # stopped early and resumed follows the same schedule as an uninterrupted one
    planned_steps = len(train_loader) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _CosineFactor(planned_steps, cfg.min_lr_ratio, cfg.lr_schedule == "cosine")
    )

    start_epoch, step, best_val = 0, 0, math.inf
    resume_rng = None  # torch's RNG state of the stopped run
    if cfg.resume and latest.exists():
        ck = load_checkpoint(latest, expected_model_type=MODEL_TYPE, map_location=device)
        if ck.config.get("model") != model_cfg.to_dict():
            raise InputError(
                f"'{latest}' was trained with another model configuration; resume with the "
                "same model options or start a new checkpoint folder"
            )
        model.load_state_dict(ck.model_state)
        criterion.load_state_dict(ck.extra.get("loss_state", {}))
        if ck.optimizer_state:
            opt.load_state_dict(ck.optimizer_state)
        if ck.scheduler_state:
            sched.load_state_dict(ck.scheduler_state)
        if isinstance(ck.extra.get("rng_state"), torch.Tensor):
            resume_rng = ck.extra["rng_state"].to("cpu", torch.uint8)
        start_epoch = int(ck.train_state.get("epoch", 0))
        step = int(ck.train_state.get("step", 0))
        best_val = float(ck.train_state.get("best_metric", math.inf))

    if not (cfg.resume and latest.exists()) and cfg.camera_init == "data":
        _init_camera(criterion, train_ds, device, dist)

    wrapped = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            model, device_ids=[dist.local_rank] if device.type == "cuda" else None
        )

    full_config = {
        "model_type": MODEL_TYPE,
        "model": model_cfg.to_dict(),
        "loss": loss_cfg.to_dict(),
        "train": cfg.to_dict(),
        "data": {
            "norm_mode": cfg.norm_mode,
            "gt_norm": cfg.gt_norm,
            # the smallest training field (raw pixels): the context reconstruction needs
            # (jobs.reconstruct.model_context)
            "input_size": [
                min(s[1] for s in train_ds.item_shapes),
                min(s[2] for s in train_ds.item_shapes),
            ],
        },
    }

    def save(path: Path, epoch: int) -> None:
        if not dist.main:
            return
        save_checkpoint(
            path,
            model_state=model.state_dict(),
            config=full_config,
            optimizer_state=opt.state_dict(),
            scheduler_state=sched.state_dict(),
            normalization={"mode": cfg.norm_mode, "per_stack": True, "gt_norm": cfg.gt_norm},
            sigma_scale={"emitter": 1.0, "lp": 1.0, "raw": 1.0},
            train_state={"epoch": epoch, "step": step, "best_metric": best_val},
            extra={"loss_state": criterion.state_dict(), "rng_state": torch.get_rng_state()},
        )

    if dist.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics_csv = _MetricsCSV(ckpt_dir / "metrics.csv")
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    # a run stopped mid-epoch resumes inside that epoch: the epoch's batch order and crops
    # depend only on (seed, epoch), so skipping the batches already trained on continues
    # exactly where the stopped run was (same steps, schedule and result as without a stop)
    skip = min(max(step - start_epoch * steps_per_epoch, 0), steps_per_epoch)
    if resume_rng is not None and not skip:
        torch.set_rng_state(resume_rng)  # at an epoch start, as the stopped run was
        resume_rng = None
    epoch = start_epoch
    completed_epoch = start_epoch
    history: list[dict] = []
    t_start = time.perf_counter()
    stopped = False
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if step >= total_steps:
                break
            set_loader_epoch(train_loader, epoch)
            wrapped.train()
            criterion.train()
            sums: dict[str, float] = {}
            n_batches = 0
            batches = iter(train_loader)  # (takes a number from torch's RNG)
            if resume_rng is not None:
                # mid-epoch: the stopped run's state after its last step, not before the
                # epoch's iterator was made
                torch.set_rng_state(resume_rng)
                resume_rng = None
            for batch in batches:
                if skip:
                    skip -= 1
                    continue
                if step >= total_steps:
                    break
                batch = _to_device(batch, device)
                x = batch["x"]
                out = wrapped(x, check_input=False)
                try:
                    res = criterion(out, x, batch)
                except NonFiniteLossError as err:
                    raise InputError(
                        f"training diverged at step {step + 1}: {err}. The last good state "
                        f"is in '{latest}'; try a lower learning rate (--lr)."
                    ) from None
                opt.zero_grad(set_to_none=True)
                res.total.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                n_batches += 1
                terms = {"loss": float(res.total.detach()), **res.terms}
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                yield Event(
                    "train", step, total_steps, {"loss": terms["loss"], "epoch": epoch + 1}, ""
                )
            train_means = _all_mean(
                {f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}, dist, device
            )
            row = {"epoch": epoch + 1, "step": step, **train_means}
            if val_loader is not None:
                row.update(_validate(wrapped, criterion, val_loader, device, dist))
                yield Event("validate", epoch + 1, cfg.epochs, {"val_loss": row["val_loss"]}, "")
            score = row.get("val_loss", row.get("train_loss", math.inf))
            completed_epoch = epoch + 1
            row["time_s"] = time.perf_counter() - t_start
            history.append(row)
            if dist.main:
                metrics_csv.append(row)
            if score < best_val:
                best_val = score
                save(best, completed_epoch)
            save(latest, completed_epoch)
            if debug_writer is not None and completed_epoch % cfg.debug_every_epochs == 0:
                _, msg = debug_writer(model, criterion, completed_epoch)
                yield Event("debug", completed_epoch, cfg.epochs, {"epoch": completed_epoch}, msg)
    except GeneratorExit:
        stopped = True
        raise
    finally:
        # on stop or error: keep a consistent, resumable state of the last completed step
        if step > 0 and (stopped or completed_epoch < cfg.epochs):
            try:
                save(latest, completed_epoch)
            except Exception:  # never mask the original error
                pass
        if dist.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.barrier()
    return {
        "ckpt_dir": str(ckpt_dir),
        "latest": str(latest),
        "best": str(best) if best.exists() else None,
        "epochs_done": completed_epoch,
        "steps": step,
        "best_metric": best_val,
        "history": history,
        "device": str(device),
        "world_size": dist.world,
        "seconds": time.perf_counter() - t_start,
    }


class _CosineFactor:
    """Learning-rate factor at step ``s``: ``r + (1 - r) (1 + cos(pi s / n)) / 2`` (cosine
    decay from 1 to ``r`` over ``n`` steps), or 1 for a constant schedule."""

    def __init__(self, n_steps: int, min_ratio: float, cosine: bool) -> None:
        self.n = max(int(n_steps), 1)
        self.r = float(min_ratio)
        self.cosine = bool(cosine)

    def __call__(self, step: int) -> float:
        if not self.cosine:
            return 1.0
        t = min(step, self.n) / self.n
        return self.r + (1.0 - self.r) * 0.5 * (1.0 + math.cos(math.pi * t))


def _init_camera(criterion, dataset, device, dist: _Dist, n_stacks: int = 8) -> None:
    """Start the camera-noise parameters from the data (the first ``n_stacks`` training
    stacks, the same on every rank). An upper bound in practice (see
    :meth:`CameraNoise.init_from_data`), which the training then lowers."""
    import torch

    camera = getattr(criterion, "camera", None)
    if camera is None or len(dataset) == 0:
        return
    xs = [dataset[i]["x"] for i in range(min(n_stacks, len(dataset)))]
    shapes = {tuple(x.shape) for x in xs}
    data = torch.stack(xs) if len(shapes) == 1 else xs[0][None]
    camera.init_from_data(data.to(device))


def _validate(model, criterion, loader, device, dist: _Dist) -> dict[str, float]:
    import torch

    model.eval()
    criterion.eval()
    sums: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        for batch in loader:
            batch = _to_device(batch, device)
            x = batch["x"]
            out = model(x)
            res = criterion(out, x, batch)
            vals = {
                "val_loss": float(res.total),
                **{f"val_{k}": float(v) for k, v in res.terms.items()},
            }
            vals.update(
                {f"val_{k}": v for k, v in _raw_calibration(x, res.y_mean, res.y_var).items()}
            )
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    return _all_mean({k: v / max(n, 1) for k, v in sums.items()}, dist, device)
