"""The training job every task uses: one loop, written as a generator of progress events
(DESIGN.md 2).

``train_job(cfg, setup)`` yields :class:`~napari_sim_uq.core.events.Event` objects (stage
``"train"`` per batch, ``"validate"`` per epoch, and whatever the task's end-of-epoch hook
yields) and returns a summary dict. The task supplies a :class:`TrainSetup` (model, loss,
datasets, how one batch gives a loss, what goes into the checkpoint); the loop owns
everything generic:

- device choice and DistributedDataParallel under ``torchrun`` (NCCL on GPUs, gloo on CPU);
- deterministic loaders (batch order and crops depend only on ``(seed, epoch)``);
- Adam or AdamW with gradient clipping, an optional linear warm-up and a cosine (or
  constant) learning-rate schedule;
- resume at the next batch: a run stopped mid-epoch continues exactly where it was;
- stop: closing the generator (``job.close()``, which napari's ``worker.quit()`` does) stops
  it at the next batch, and the ``finally`` block writes a consistent ``latest.pt``;
- files in ``ckpt_dir`` (rank 0 only, atomically): ``latest.pt``, ``best.pt`` (lowest
  validation loss, training loss without validation data) and ``metrics.csv`` (a row per
  epoch).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sim_uq.core.config import JsonConfig, option
from napari_sim_uq.core.errors import InputError

#: Learning-rate schedules (``TrainOptions.lr_schedule``).
LR_SCHEDULES = ("cosine", "constant")
#: Optimisers (``TrainOptions.optimizer``): AdamW decouples the weight decay from the
#: gradient (Loshchilov & Hutter), Adam adds it to the gradient.
OPTIMIZERS = ("adam", "adamw")

#: default final learning rate of the cosine schedule, as a fraction of ``lr``
_MIN_LR_RATIO = 0.05


@dataclass
class TrainOptions(JsonConfig):
    """The options of the training loop, shared by every task (a task's training config
    subclasses this and adds its data, model and loss fields)."""

    _what = "training options"

    ckpt_dir: str = option("checkpoints", help="writes latest.pt, best.pt and metrics.csv here")
    epochs: int = option(10, help="number of epochs", minimum=1)
    batch_size: int = option(4, help="samples per optimiser step", minimum=1)
    lr: float = option(1e-3, help="learning rate", minimum=0.0)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    device: str = option("auto", help="auto, cpu, cuda or mps")
    seed: int = option(0, help="random seed")
    resume: bool = option(False, help="continue from CKPT_DIR/latest.pt")
    # stop after this many optimiser steps in total (tests)
    max_steps: int | None = option(None, help="stop after this many steps", minimum=1)
    num_workers: int = 0
    # learning-rate schedule over the run's steps: "cosine" decays from lr to
    # lr * min_lr_ratio (every group alike), "constant" keeps lr
    lr_schedule: str = option(
        "cosine",
        help=f"cosine: decay to {_MIN_LR_RATIO:.0%} of the learning rate over the run "
        "(min_lr_ratio); constant: keep it",
        choices=LR_SCHEDULES,
    )
    min_lr_ratio: float = _MIN_LR_RATIO
    optimizer: str = "adam"
    # linear warm-up from lr / warmup_steps to lr over the first steps (0: none); the
    # cosine decay then spans the remaining planned steps
    warmup_steps: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
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
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        w = self.warmup_steps
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise InputError(f"warmup_steps must be an integer >= 0, got {w!r}")


@dataclass
class ImageTrainOptions(TrainOptions):
    """The options of a training run on random patches of 2D images (the 2D tasks' training
    configs subclass this): where the images are, the patches, the normalisation."""

    data_dir: str = option("", help="training images: a folder of PNG/TIFF files or a glob")
    val_dir: str | None = option(
        None, help="validation images (folder or glob); best.pt follows their loss"
    )
    patch: int = option(64, help="random training patches of this many pixels", minimum=8)
    patches_per_image: int = option(8, help="patches drawn from each image per epoch", minimum=1)
    norm_mode: str = option(
        "percentile",
        help="per-image intensity normalisation: percentile (0.1-99.9 % to 0-1), minmax, or "
        "none (images already in 0-1)",
        choices=lambda: _norm_modes(),
    )

    def patch_dataset(self, source: str, seed: int, degradation=None):
        """Random ``patch`` crops of the images in ``source`` (``patches_per_image`` per
        image, ``norm_mode``), degraded by ``degradation`` when given, drawn with ``seed``."""
        from napari_sim_uq.core.data.images2d import PatchDataset

        return PatchDataset(
            source,
            patch=self.patch,
            patches_per_image=self.patches_per_image,
            degradation=degradation,
            seed=seed,
            norm_mode=self.norm_mode,
        )

    def clean_patch_datasets(self):
        """``(train, val)`` datasets of random clean ``patch`` crops (no degradation): the
        training images with ``seed``; the validation images (or, without ``val_dir``,
        other crops of the training images) with ``seed + 1``, fixed over the run."""
        return self.patch_dataset(self.data_dir, self.seed), self.patch_dataset(
            self.val_dir or self.data_dir, self.seed + 1
        )

    def validate(self) -> None:
        if not self.data_dir:
            raise InputError("data_dir is required (a folder of training images, --data-dir)")
        super().validate()
        if self.norm_mode not in _norm_modes():
            raise InputError(f"norm_mode must be one of {_norm_modes()}, got {self.norm_mode!r}")


def _norm_modes() -> tuple[str, ...]:
    from napari_sim_uq.core.data.normalization import NORM_MODES

    return NORM_MODES


# ----------------------------------------------------------------------------- DDP


@dataclass
class Dist:
    """This process's place in a (possibly) distributed run."""

    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device) -> Dist:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    return Dist(True, dist.get_rank(), dist.get_world_size(), local)


def all_mean(values: dict[str, float], d: Dist, device) -> dict[str, float]:
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


def to_device(batch: dict, device) -> dict:
    """A batch dict with every tensor (also in nested dicts) moved to ``device``."""
    import torch

    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out


class MetricsCSV:
    """``metrics.csv``: one row per epoch; a resumed run rewrites the rows from its epoch."""

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


class CosineFactor:
    """Learning-rate factor at step ``s``: during a warm-up of ``w`` steps ``(s + 1) / w``;
    then ``r + (1 - r) (1 + cos(pi t / (n - w))) / 2`` with ``t = s - w`` (cosine decay from
    1 to ``r`` over the remaining ``n - w`` steps), or 1 for a constant schedule."""

    def __init__(self, n_steps: int, min_ratio: float, cosine: bool, warmup: int = 0) -> None:
        self.n = max(int(n_steps), 1)
        self.r = float(min_ratio)
        self.cosine = bool(cosine)
        self.w = max(int(warmup), 0)

    def __call__(self, step: int) -> float:
        if step < self.w:
            return (step + 1) / self.w
        if not self.cosine:
            return 1.0
        span = max(self.n - self.w, 1)
        t = min(step - self.w, span) / span
        return self.r + (1.0 - self.r) * 0.5 * (1.0 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- the task side


@dataclass
class TrainSetup:
    """What a task hands the loop.

    ``step(model, criterion, batch) -> (loss tensor, {term: float})`` computes one
    training batch's loss (``model`` may be the DDP wrapper); ``val_step`` the same for a
    validation batch, returning ``{name: float}`` with at least ``"loss"`` (the loop
    prefixes ``val_``). ``config`` is stored in the checkpoint and must name the model in
    ``config["model_type"]``.
    """

    model: Any
    criterion: Any
    train_ds: Any
    val_ds: Any
    config: dict
    step: Callable[[Any, Any, dict], tuple[Any, dict[str, float]]]
    val_step: Callable[[Any, Any, dict], dict[str, float]]
    # optimiser parameter groups (default: model and loss parameters, one group)
    param_groups: list[dict] | None = None
    normalization: dict | None = None
    sigma_scale: dict[str, float] = field(default_factory=dict)
    # extra checkpoint entries (must be weights_only-loadable) and how to restore them
    extra_state: Callable[[], dict] = dict
    load_extra: Callable[[dict], None] = lambda extra: None
    # check a checkpoint found for resume (raise InputError if it is another model)
    check_resume: Callable[[Any], None] = lambda ck: None
    # called once at the start of a new (not resumed) run, e.g. to start parameters from data
    on_new_run: Callable[[], None] = lambda: None
    # called after each epoch's checkpoint (rank 0) with (model, criterion, epoch); may
    # yield Events (e.g. "debug" folders)
    on_epoch_end: Callable[[Any, Any, int], Iterator] | None = None
    # exceptions that mean "training diverged" (reported with a hint, not a traceback)
    diverged: tuple[type[BaseException], ...] = ()
    # shuffle the training samples (each epoch in a (seed, epoch)-determined order)
    shuffle: bool = True


def same_model_config(ckpt_dir: str | os.PathLike, model_config: dict) -> Callable[[Any], None]:
    """A ``TrainSetup.check_resume`` refusing a checkpoint whose ``config["model"]`` is not
    ``model_config`` (resuming with other network options would load mismatched weights)."""

    def check(ck) -> None:
        if ck.config.get("model") != model_config:
            raise InputError(
                f"'{Path(ckpt_dir) / 'latest.pt'}' was trained with another network "
                "configuration; resume with the same options or start a new folder"
            )

    return check


def train_job(cfg: TrainOptions, make_setup: Callable[[Any, Dist], TrainSetup]):
    """Train a task's model; a job (generator of Events, returns a summary dict).

    ``make_setup(device, dist)`` builds the task's :class:`TrainSetup` once the device and
    the distributed context are known.
    """
    import torch

    from napari_sim_uq.core.data.loaders import make_loader, set_loader_epoch
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint

    cfg.validate()
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
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

    s = make_setup(device, dist)
    model, criterion = s.model, s.criterion
    model_type = s.config["model_type"]
    train_loader = make_loader(
        s.train_ds,
        cfg.batch_size,
        shuffle=s.shuffle,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        distributed=dist.enabled,
    )
    val_loader = (
        make_loader(
            s.val_ds, cfg.batch_size, shuffle=False, seed=cfg.seed, distributed=dist.enabled
        )
        if s.val_ds is not None
        else None
    )
    params = list(model.parameters()) + list(criterion.parameters())
    groups = s.param_groups or [{"params": params}]
    opt_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_class(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # the schedule spans the planned epochs; max_steps only interrupts the run, so a run
    # stopped early and resumed follows the same schedule as an uninterrupted one
    planned_steps = len(train_loader) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        CosineFactor(
            planned_steps, cfg.min_lr_ratio, cfg.lr_schedule == "cosine", cfg.warmup_steps
        ),
    )

    start_epoch, step, best_val = 0, 0, math.inf
    resume_rng = None  # torch's RNG state of the stopped run
    resuming = cfg.resume and latest.exists()
    if resuming:
        ck = load_checkpoint(latest, expected_model_type=model_type, map_location=device)
        s.check_resume(ck)
        model.load_state_dict(ck.model_state)
        s.load_extra(ck.extra)
        if ck.optimizer_state:
            opt.load_state_dict(ck.optimizer_state)
        if ck.scheduler_state:
            sched.load_state_dict(ck.scheduler_state)
        if isinstance(ck.extra.get("rng_state"), torch.Tensor):
            resume_rng = ck.extra["rng_state"].to("cpu", torch.uint8)
        start_epoch = int(ck.train_state.get("epoch", 0))
        step = int(ck.train_state.get("step", 0))
        best_val = float(ck.train_state.get("best_metric", math.inf))
    else:
        s.on_new_run()

    wrapped = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            model, device_ids=[dist.local_rank] if device.type == "cuda" else None
        )

    def save(path: Path, epoch: int) -> None:
        if not dist.main:
            return
        save_checkpoint(
            path,
            model_state=model.state_dict(),
            config=s.config,
            optimizer_state=opt.state_dict(),
            scheduler_state=sched.state_dict(),
            normalization=s.normalization,
            sigma_scale=s.sigma_scale,
            train_state={"epoch": epoch, "step": step, "best_metric": best_val},
            extra={**s.extra_state(), "rng_state": torch.get_rng_state()},
        )

    if dist.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics_csv = MetricsCSV(ckpt_dir / "metrics.csv")
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
                batch = to_device(batch, device)
                try:
                    loss, terms = s.step(wrapped, criterion, batch)
                except s.diverged as err:
                    raise InputError(
                        f"training diverged at step {step + 1}: {err}. The last good state "
                        f"is in '{latest}'; try a lower learning rate (--lr)."
                    ) from None
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                n_batches += 1
                terms = {"loss": float(loss.detach()), **terms}
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                yield Event(
                    "train", step, total_steps, {"loss": terms["loss"], "epoch": epoch + 1}, ""
                )
            train_means = all_mean(
                {f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}, dist, device
            )
            row = {"epoch": epoch + 1, "step": step, **train_means}
            if val_loader is not None:
                row.update(_validate(s, wrapped, criterion, val_loader, device, dist))
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
            if s.on_epoch_end is not None and dist.main:
                yield from s.on_epoch_end(model, criterion, completed_epoch) or ()
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


def _validate(s: TrainSetup, model, criterion, loader, device, dist: Dist) -> dict[str, float]:
    import torch

    model.eval()
    criterion.eval()
    sums: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        for batch in loader:
            vals = s.val_step(model, criterion, to_device(batch, device))
            for k, v in vals.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v)
            n += 1
    return all_mean({k: v / max(n, 1) for k, v in sums.items()}, dist, device)
