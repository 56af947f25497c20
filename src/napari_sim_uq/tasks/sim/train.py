"""The SIM training job: the shared training loop (:mod:`napari_sim_uq.core.training.loop`)
with the SIM network, loss and data (DESIGN.md 2).

``train_sim_job(cfg)`` yields :class:`~napari_sim_uq.core.events.Event` objects (stage
``"train"`` per batch, ``"validate"`` per epoch) and returns a summary dict. Closing the
generator (``job.close()``, which napari's ``worker.quit()`` does) stops it at the next
batch; a consistent ``latest.pt`` is then written, so a stopped run can be resumed.

Files in ``ckpt_dir`` (written by rank 0 only, atomically): ``latest.pt``, ``best.pt``,
``metrics.csv`` (losses and raw-frame calibration per epoch) and, with
``debug_every_epochs = N > 0``, every ``N`` epochs ``debug_samples/epoch_XXX/``:
predictions, std maps, summaries and plots for a few fixed samples
(:mod:`napari_sim_uq.tasks.sim.debug`; an Event with stage ``"debug"`` names the folder).

Under ``torchrun --nproc_per_node=N`` the same job trains with DistributedDataParallel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from napari_sim_uq.core.config import option
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.training.loop import LR_SCHEDULES, TrainOptions, TrainSetup, train_job

__all__ = ["CAMERA_INITS", "LR_SCHEDULES", "MODEL_TYPE", "TrainConfig", "train_sim_job"]

MODEL_TYPE = "sim_uq_net"

#: Starts of the camera-noise parameters (``TrainConfig.camera_init``).
CAMERA_INITS = ("data", "fixed")


def _gt_norms() -> tuple[str, ...]:
    # the ground-truth scalings of the dataset; imported late: that module needs torch
    from napari_sim_uq.tasks.sim.dataset import GT_NORMS

    return GT_NORMS


@dataclass
class TrainConfig(TrainOptions):
    """Everything a SIM training run needs (JSON-serialisable; stored in checkpoints): the
    loop's options (:class:`~napari_sim_uq.core.training.loop.TrainOptions`) and the SIM
    data, model and loss."""

    train_glob: str = option("", help='raw stacks, e.g. "D/train/*.tif"')
    val_glob: str | None = option(None, help='validation stacks, e.g. "D/val/*.tif"')
    # random LR crop size (None: whole stacks)
    crop: int | None = option(None, help="random crops of this many raw pixels")
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
    # debug folders (tasks/sim/debug.py): every N epochs (0: off), on the first K samples
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
        super().validate()
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


def _raw_calibration(x, y_mean, y_var) -> dict[str, float]:
    """Calibration of the raw-frame predictive distribution (already includes noise)."""
    r = (x - y_mean).detach()
    v = y_var.detach()
    z2 = r * r / v
    return {
        "raw_zms": float(z2.mean()),
        "raw_cov95": float((z2 <= 1.959963984540054**2).float().mean()),
    }


def train_sim_job(cfg: TrainConfig):
    """Train the SIM uncertainty network; a job (generator of Events, returns a summary)."""
    cfg.validate()
    fitted = None
    if dict(cfg.model or {}).get("patterns") == "estimated":
        fitted = yield from _fit_instrument_job(cfg)
    return (yield from train_job(cfg, lambda device, dist: _setup(cfg, device, dist, fitted)))


def _fit_instrument_job(cfg: TrainConfig):
    """Job: the instrument of the training stacks and their pattern estimates
    (:func:`~napari_sim_uq.tasks.sim.pattern_model.fit_instrument`), with a ``"prepare"``
    event before and after (the estimate gives no per-stack steps)."""
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.net import SimNetConfig
    from napari_sim_uq.tasks.sim.pattern_model import fit_instrument

    model_cfg = SimNetConfig.from_dict(dict(cfg.model))
    ds = SimStackDataset(
        cfg.train_glob, norm_mode=cfg.norm_mode, expected_frames=model_cfg.n_frames
    )
    yield Event(
        "prepare",
        0,
        1,
        {},
        f"estimating the illumination shared by the {len(ds)} training stacks",
    )
    inst, ests = fit_instrument(ds, model_cfg.n_angles, model_cfg.n_phases, model_cfg.hr_factor)
    periods = ", ".join(f"{p:.3f}" for p in inst.periods)
    yield Event(
        "prepare",
        1,
        1,
        {},
        f"illumination estimated: periods {periods} raw px, PSF sigma {inst.psf_sigma:.2f} px",
    )
    return inst, ests


def _setup(cfg: TrainConfig, device, dist, fitted=None) -> TrainSetup:
    from pathlib import Path

    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.loss import NonFiniteLossError, SimLoss, SimLossConfig
    from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet
    from napari_sim_uq.tasks.sim.pattern_model import instrument_psf, use_estimated_patterns

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
    instrument = None
    if model_cfg.patterns == "estimated":
        instrument, estimates = fitted  # from _fit_instrument_job (train_sim_job)
        train_ds.set_pattern_estimates(estimates, model_cfg.hr_factor)
        _attach_estimated_patterns(model_cfg, instrument, val_ds)

    on_epoch_end = None
    if cfg.debug_every_epochs and dist.main:
        from napari_sim_uq.core.events import Event
        from napari_sim_uq.tasks.sim.debug import DEBUG_DIRNAME, DebugSampleWriter

        # fixed samples, never randomly cropped: validation data, else the training files
        if val_ds is not None:
            debug_ds = val_ds
        else:
            debug_ds = dataset(cfg.train_glob, None) if cfg.crop else train_ds
            if instrument is not None and debug_ds is not train_ds:
                _attach_estimated_patterns(model_cfg, instrument, debug_ds)
        debug_writer = DebugSampleWriter(
            debug_ds,
            Path(cfg.ckpt_dir) / DEBUG_DIRNAME,
            n_samples=cfg.debug_samples,
            supervised=cfg.supervised,
        )

        def on_epoch_end(model, criterion, epoch: int):
            if epoch % cfg.debug_every_epochs == 0:
                _, msg = debug_writer(model, criterion, epoch)
                yield Event("debug", epoch, cfg.epochs, {"epoch": epoch}, msg)

    model = SimUQNet(model_cfg).to(device)
    f = model_cfg.hr_factor
    psf = None
    if instrument is not None:
        model.instrument = instrument
        psf = instrument_psf(instrument, model_cfg.psf_size, f, next(model.parameters()))
    loss_cfg = SimLossConfig.from_dict({"supervised": cfg.supervised, **dict(cfg.loss)})
    criterion = SimLoss(loss_cfg, model_cfg.hr_factor).to(device)
    groups = [{"params": list(model.parameters())}]
    if list(criterion.parameters()):
        groups.append({"params": list(criterion.parameters()), "lr": cfg.lr * cfg.camera_lr_factor})

    def step(wrapped, crit, batch):
        x = batch["x"]
        out, batch = use_estimated_patterns(wrapped(x, check_input=False), batch, psf, f)
        res = crit(out, x, batch)
        return res.total, res.terms

    def val_step(wrapped, crit, batch):
        x = batch["x"]
        out, batch = use_estimated_patterns(wrapped(x), batch, psf, f)
        res = crit(out, x, batch)
        return {
            "loss": float(res.total),
            **{k: float(v) for k, v in res.terms.items()},
            **_raw_calibration(x, res.y_mean, res.y_var),
        }

    def check_resume(ck) -> None:
        if ck.config.get("model") != model_cfg.to_dict():
            raise InputError(
                f"'{Path(cfg.ckpt_dir) / 'latest.pt'}' was trained with another model "
                "configuration; resume with the same model options or start a new checkpoint "
                "folder"
            )

    def on_new_run() -> None:
        if cfg.camera_init == "data":
            _init_camera(criterion, train_ds, device)

    return TrainSetup(
        model=model,
        criterion=criterion,
        train_ds=train_ds,
        val_ds=val_ds,
        config={
            "model_type": MODEL_TYPE,
            "model": model_cfg.to_dict(),
            "loss": loss_cfg.to_dict(),
            "train": cfg.to_dict(),
            # the instrument of estimated patterns (tasks/sim/pattern_model.py), or None
            "instrument": None if instrument is None else instrument.to_dict(),
            "data": {
                "norm_mode": cfg.norm_mode,
                "gt_norm": cfg.gt_norm,
                # the smallest training field (raw pixels): the context reconstruction needs
                # (tasks.sim.reconstruct.model_context)
                "input_size": [
                    min(s[1] for s in train_ds.item_shapes),
                    min(s[2] for s in train_ds.item_shapes),
                ],
            },
        },
        step=step,
        val_step=val_step,
        param_groups=groups,
        normalization={"mode": cfg.norm_mode, "per_stack": True, "gt_norm": cfg.gt_norm},
        sigma_scale={"emitter": 1.0, "lp": 1.0, "raw": 1.0},
        extra_state=lambda: {"loss_state": criterion.state_dict()},
        load_extra=lambda extra: criterion.load_state_dict(extra.get("loss_state", {})),
        check_resume=check_resume,
        on_new_run=on_new_run,
        on_epoch_end=on_epoch_end,
        diverged=(NonFiniteLossError,),
    )


def _attach_estimated_patterns(model_cfg, instrument, *datasets) -> None:
    """Give every item of ``datasets`` (``None`` skipped) the parametric patterns of its
    stack, fitted with the ``instrument``'s wave vectors."""
    from napari_sim_uq.tasks.sim.pattern_model import stack_patterns

    for ds in datasets:
        if ds is not None:
            ds.set_pattern_estimates(
                [stack_patterns(instrument, ds.raw_frames(i)) for i in range(len(ds))],
                model_cfg.hr_factor,
            )


def _init_camera(criterion, dataset, device, n_stacks: int = 8) -> None:
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
