"""``sim-uq demo``: the whole SIM workflow on generated data, in a few minutes on a laptop.

:func:`demo_job` (a job: yields :class:`~napari_sim_uq.core.events.Event`, returns a summary
dict) runs, into one output folder:

1. ``data/``: a small synthetic dataset with ground truth (train, val, test and calib splits,
   :func:`~napari_sim_uq.tasks.sim.synth.generate_dataset`), and ``test_shifted``, stacks
   made differently (Airy PSF, sub-pixel thin structures,
   :func:`~napari_sim_uq.tasks.sim.synth.shifted_config`) to show what happens off the
   training distribution;
2. ``checkpoints/``: supervised training (:func:`~napari_sim_uq.tasks.sim.train.
   train_sim_job`) for at most ``epochs`` epochs or ``train_minutes`` minutes, whichever
   comes first (it stops between epochs, keeping the best checkpoint);
3. calibration of ``checkpoints/best.pt`` on the ``calib`` split, held out from training
   and model selection (sigma scales and the emitter's per-intensity-class sigma map,
   :func:`~napari_sim_uq.tasks.sim.evaluate.calibrate_sim_job`);
4. ``evaluation/``: metrics on the held-out test split
   (:func:`~napari_sim_uq.tasks.sim.evaluate.evaluate_sim_job`): ``metrics.json`` with the
   calibration per std decile and intensity class, and calibration curves; the same for
   the shifted split in ``evaluation/test_shifted/``;
5. ``reconstruction/``: the reconstruction of the first test stack, as TIFFs
   (:func:`~napari_sim_uq.tasks.sim.reconstruct.write_reconstruction`);
6. ``summary.png``: raw frame, widefield, emitter, emitter std, true error and the
   calibration curve of that stack, with the test-set numbers.

No Qt, no napari; the CLI, the console and a widget drive the same job.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sim_uq.core.config import JsonConfig
from napari_sim_uq.core.errors import InputError

#: The demo's structure weight in the supervised emitter NLL (issue 15, docs/index.md):
#: structure pixels weigh 1 + this, which calibrates the emitter std on the structures.
STRUCTURE_WEIGHT = 2.0

#: The demo's domain-shift split (:func:`~napari_sim_uq.tasks.sim.synth.shifted_config`).
SHIFTED_SPLIT = "test_shifted"

#: What the demo writes into its output folder (``overwrite`` replaces only these).
DEMO_ITEMS = ("data", "checkpoints", "evaluation", "reconstruction", "summary.png", "demo.json")


@dataclass
class DemoConfig(JsonConfig):
    """Options of :func:`demo_job`; the defaults run in under 10 minutes on 2 CPU cores."""

    _what = "demo options"

    out_dir: str = "sim-uq-demo"
    n_train: int = 128
    n_val: int = 16  # model selection during training
    n_calib: int = 64  # held-out stacks for the sigma scale and map (ZMS is tail-sensitive)
    n_test: int = 64
    # held-out stacks made differently (Airy PSF, sub-pixel thin structures): domain shift
    n_shifted: int = 64
    lr_size: int = 48  # raw frames are lr_size x lr_size pixels
    hr_factor: int = 2
    epochs: int = 50
    train_minutes: float = 7.0  # training stops between epochs once this is used up
    batch_size: int = 8
    lr: float = 2e-3
    base_channels: int = 16
    depth: int = 3
    # extra weight of structure pixels in the supervised emitter NLL (--uq-structure-weight)
    structure_weight: float = STRUCTURE_WEIGHT
    mc_samples: int = 0  # MC-dropout samples for evaluation and reconstruction
    # self-supervised: one instrument for the whole dataset (fixed wave vectors, as on a
    # microscope), training on the raw stacks only with the instrument's estimated
    # patterns and PSF (tasks/sim/pattern_model.py); the ground truth is used only to
    # calibrate (calib split) and to measure (test splits)
    self_supervised: bool = False
    # optics of the forward model (SimNetConfig.patterns): "estimated" (implied by
    # self_supervised) generates one instrument for the whole dataset and uses its
    # estimated patterns and PSF; "network" the network's own heads
    patterns: str = "network"
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        for name in (
            "n_train",
            "n_val",
            "n_calib",
            "n_test",
            "n_shifted",
            "epochs",
            "batch_size",
            "base_channels",
        ):
            v = getattr(self, name)
            least = 0 if name == "n_shifted" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise InputError(f"{name} must be an integer >= {least}, got {v!r}")
        if isinstance(self.lr_size, bool) or not isinstance(self.lr_size, int):
            raise InputError(f"lr_size must be an integer, got {self.lr_size!r}")
        smallest = max(8, 2 ** (self.depth + 1))
        if self.lr_size < smallest:
            raise InputError(
                f"lr_size must be at least {smallest} for depth {self.depth}, got {self.lr_size}"
            )
        if not (self.train_minutes > 0 and math.isfinite(self.train_minutes)):
            raise InputError(f"train_minutes must be a positive number, got {self.train_minutes}")
        if isinstance(self.mc_samples, bool) or not isinstance(self.mc_samples, int):
            raise InputError(f"mc_samples must be an integer >= 0, got {self.mc_samples!r}")
        if self.mc_samples < 0:
            raise InputError(f"mc_samples must be >= 0, got {self.mc_samples}")
        if not isinstance(self.self_supervised, bool):
            raise InputError(f"self_supervised must be true or false, got {self.self_supervised!r}")
        if self.patterns not in ("network", "estimated"):
            raise InputError(f"patterns must be 'network' or 'estimated', got {self.patterns!r}")
        w = self.structure_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 <= w < math.inf):
            raise InputError(f"structure_weight must be a number >= 0, got {w!r}")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"demo output '{out}' is a file; choose a folder")
    present = [name for name in DEMO_ITEMS if (out / name).exists()]
    if present and not overwrite:
        raise FileExistsError(
            f"'{out}' already holds a demo ({', '.join(present)}): pass overwrite=True "
            "(--overwrite) to replace it, or choose another folder; nothing was changed"
        )
    for name in present:  # only the demo's own items, never other files in the folder
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def demo_job(cfg: DemoConfig | dict | None = None):
    """Generate, train, calibrate, evaluate, reconstruct and plot (a job; see the module
    docstring). Returns a dict with the paths written and the main test-set numbers."""
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.tiff_io import read_image
    from napari_sim_uq.tasks.sim.evaluate import calibrate_sim_job, evaluate_sim_job
    from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job, write_reconstruction
    from napari_sim_uq.tasks.sim.synth import (
        SPLIT_SEED_STRIDE,
        SynthConfig,
        generate_splits,
        shifted_config,
    )
    from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

    cfg = DemoConfig.coerce(cfg)
    cfg.validate()
    t_start = time.perf_counter()
    device = str(resolve_device(cfg.device))
    out = Path(cfg.out_dir)
    _prepare(out, cfg.overwrite)
    data, ckpt_dir = out / "data", out / "checkpoints"
    timings: dict[str, float] = {}

    # 1. data
    t0 = time.perf_counter()
    estimated = cfg.self_supervised or cfg.patterns == "estimated"
    synth = SynthConfig(
        lr_size=(cfg.lr_size, cfg.lr_size),
        hr_factor=cfg.hr_factor,
        fixed_instrument=estimated,
    )
    # one "generate" stage counting over all splits (split i: seed + SPLIT_SEED_STRIDE * i)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test, "calib": cfg.n_calib}
    yield from generate_splits(data, counts, synth, seed=cfg.seed)
    if cfg.n_shifted:
        # its own seed range (after the four splits above), other optics and structures
        yield from generate_splits(
            data,
            {SHIFTED_SPLIT: cfg.n_shifted},
            shifted_config(synth),
            seed=cfg.seed + SPLIT_SEED_STRIDE * len(counts),
        )
    timings["generate_s"] = time.perf_counter() - t0

    # 2. training, stopped between epochs when the time budget would be exceeded
    t0 = time.perf_counter()
    tcfg = TrainConfig(
        train_glob=str(data / "train" / "*.tif"),
        val_glob=str(data / "val" / "*.tif"),
        ckpt_dir=str(ckpt_dir),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        device=device,
        seed=cfg.seed,
        supervised=not cfg.self_supervised,
        model={
            "hr_factor": cfg.hr_factor,
            "base_channels": cfg.base_channels,
            "depth": cfg.depth,
            "patterns": "estimated" if estimated else "network",
        },
        loss={} if cfg.self_supervised else {"sup_structure_weight": float(cfg.structure_weight)},
    )
    budget = 60.0 * cfg.train_minutes
    job = train_sim_job(tcfg)
    epochs_done, last_epoch_end = 0, t0
    stopped_early = False
    try:
        while True:
            try:
                ev = next(job)
            except StopIteration as stop:
                train_result = stop.value
                break
            yield ev
            if ev.stage == "validate":
                now = time.perf_counter()
                epochs_done = ev.step
                epoch_s = (now - t0) / epochs_done
                last_epoch_end = now
                if ev.step < cfg.epochs and (now - t0) + epoch_s > budget:
                    stopped_early = True
                    train_result = None
                    break
    finally:
        job.close()  # a stopped run keeps its checkpoints (latest.pt, best.pt)
    del last_epoch_end
    timings["train_s"] = time.perf_counter() - t0
    best = ckpt_dir / "best.pt"
    if not best.exists():
        raise InputError(f"training produced no checkpoint in '{ckpt_dir}'")

    # 3. calibration on its own held-out split (stored in best.pt)
    t0 = time.perf_counter()
    calib = yield from calibrate_sim_job(
        best, data, split="calib", mc_samples=cfg.mc_samples, device=device
    )
    timings["calibrate_s"] = time.perf_counter() - t0

    # 4. evaluation on the held-out test split
    t0 = time.perf_counter()
    metrics = yield from evaluate_sim_job(
        best,
        data,
        split="test",
        out_dir=out / "evaluation",
        mc_samples=cfg.mc_samples,
        device=device,
    )
    shifted = None
    if cfg.n_shifted:
        shifted = yield from evaluate_sim_job(
            best,
            data,
            split=SHIFTED_SPLIT,
            out_dir=out / "evaluation" / SHIFTED_SPLIT,
            mc_samples=cfg.mc_samples,
            device=device,
            wiener=False,  # the Wiener baseline is reported once, on the test split
        )
    timings["evaluate_s"] = time.perf_counter() - t0

    # 5. reconstruction of one held-out stack
    t0 = time.perf_counter()
    test_stack = sorted((data / "test").glob("*.tif"))[0]
    rec_in = read_image(test_stack)
    rec = yield from reconstruct_sim_job(rec_in, best, mc_samples=cfg.mc_samples, device=device)
    written = write_reconstruction(
        rec,
        out / "reconstruction",
        test_stack.stem,
        scale_lr=rec_in.scale[-2:],
        translate_lr=rec_in.translate[-2:],
    )
    timings["reconstruct_s"] = time.perf_counter() - t0

    # 6. summary figure
    yield Event("summary", 0, 1, {}, "drawing summary.png")
    gt = read_image(data / "test_gt" / test_stack.name).data
    summary = save_summary_figure(
        out / "summary.png",
        raw=np.asarray(rec_in.data, np.float32),
        emitter=rec.arrays["emitter"],
        emitter_std=rec.arrays["emitter_std"],
        gt=np.asarray(gt, np.float32),
        metrics=metrics,
        shifted=shifted,
        title=f"napari-sim-uq demo{' (self-supervised)' if cfg.self_supervised else ''}: "
        f"{test_stack.name} (held out)",
    )
    yield Event("summary", 1, 1, {}, str(summary))
    timings["total_s"] = time.perf_counter() - t_start

    result = {
        "out_dir": str(out),
        "data": str(data),
        "checkpoint": str(best),
        "evaluation": str(out / "evaluation" / "metrics.json"),
        "evaluation_shifted": None
        if shifted is None
        else str(out / "evaluation" / SHIFTED_SPLIT / "metrics.json"),
        "test": _digest(metrics),
        "test_shifted": None if shifted is None else _digest(shifted),
        "reconstruction": [str(p) for p in written],
        "summary": str(summary),
        "epochs_trained": epochs_done if stopped_early else train_result["epochs_done"],
        "stopped_by_time_budget": stopped_early,
        "device": device,
        "sigma_scale": calib.get("sigma_scale") if isinstance(calib, dict) else None,
        "timings": timings,
        "config": cfg.to_dict(),
    }
    _write_json(out / "demo.json", result)
    return result


def _write_json(path: Path, obj: dict) -> None:
    import json

    from napari_sim_uq.core.io.tiff_io import atomic_write

    text = json.dumps(obj, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=True)


def save_summary_figure(
    path,
    *,
    raw: np.ndarray,
    emitter: np.ndarray,
    emitter_std: np.ndarray,
    gt: np.ndarray,
    metrics: dict | None = None,
    shifted: dict | None = None,
    title: str = "",
) -> Path:
    """One page: raw frame, widefield (mean of the frames), emitter, emitter std, true error
    ``|emitter - gt|`` (same colour scale as the std) and the calibration curve of this
    stack (predicted variance vs squared error, per bin of predicted variance)."""
    from napari_sim_uq.core.plots import new_figure, plot_calibration_curve, save_figure
    from napari_sim_uq.core.uq.metrics import calibration_curve, coverage, zms

    frames = raw.reshape(-1, *raw.shape[-2:])
    err = emitter - gt
    fig, axes = new_figure(2, 3, size=(12.5, 8.2))
    vmax_e = float(np.percentile(gt, 99.8))
    vmax_s = float(np.percentile(np.abs(err), 99.5))
    panels = [
        (frames[0], "raw frame 1 of 9", "gray", None),
        (frames.mean(0), "widefield (mean of 9 frames)", "gray", None),
        (emitter, "emitter (prediction)", "inferno", (0, vmax_e)),
        (emitter_std, "emitter std (predicted)", "magma", (0, vmax_s)),
        (np.abs(err), "|emitter - ground truth| (true error)", "magma", (0, vmax_s)),
    ]
    for ax, (img, name, cmap, lim) in zip(axes.flat, panels, strict=False):
        kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
        im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes.flat[5]
    plot_calibration_curve(ax, calibration_curve(err, emitter_std), label="emitter, this stack")
    z = zms(err, emitter_std)
    c95 = coverage(err, emitter_std, 0.95)
    ax.set_title(f"calibration: ZMS {z:.2f}, 95% coverage {c95:.2f}", fontsize=10)
    lines = [_metrics_line(metrics)] if metrics else []
    if shifted:
        lines.append(_metrics_line(shifted, "shifted split (Airy PSF, thin structures)"))
    if lines:
        # keep the axes above the footer (the layout engine does not see fig.text)
        fig.get_layout_engine().set(rect=(0, 0.03 * len(lines), 1, 1 - 0.03 * len(lines)))
        fig.text(0.01, 0.005, "\n".join(lines), fontsize=9, family="monospace")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _digest(doc: dict) -> dict:
    """The numbers of an evaluation that the demo reports (demo.json)."""
    em = doc["calibration"].get("emitter") or {}
    raw = doc["calibration"].get("raw") or {}
    lp = doc["calibration"].get("lp") or {}
    iq = doc.get("image_quality") or {}
    dec = [r["zms"] for r in em.get("by_std_decile") or [] if r.get("zms") is not None]
    by = em.get("by_intensity") or {}
    return {
        "split": doc["split"],
        "n_samples": doc["n_samples"],
        "emitter_psnr": (iq.get("emitter") or {}).get("psnr"),
        # after the least-squares affine fit that the widefield and Wiener baselines get
        "emitter_psnr_affine": (iq.get("emitter") or {}).get("psnr_affine"),
        "lp_psnr": (iq.get("lp") or {}).get("psnr"),
        "lp_zms": lp.get("zms"),
        "lp_cov95": lp.get("cov95"),
        "widefield_psnr": (iq.get("widefield") or {}).get("psnr"),
        "emitter_zms": em.get("zms"),
        "emitter_cov95": em.get("cov95"),
        "emitter_spearman": em.get("spearman"),
        "emitter_zms_by_std_decile": [min(dec), max(dec)] if dec else None,
        "emitter_zms_by_intensity": {k: (v or {}).get("zms") for k, v in by.items()},
        "raw_zms": raw.get("zms"),
        "self_check_fraction_flagged": (doc.get("self_check") or {}).get("fraction_flagged"),
        # classical Wiener SIM on the stacks whose illumination could be estimated
        "wiener_psnr": (iq.get("wiener") or {}).get("psnr"),
        "wiener_n": iq.get("wiener_n"),
        "wiener_widefield_psnr": (iq.get("wiener_same_stacks") or {}).get("widefield_psnr"),
    }


def _metrics_line(metrics: dict, label: str = "test set") -> str:
    """A one-line digest of ``metrics.json`` for the figure (keys as written by evaluate)."""
    parts = []

    def get(*keys):
        d = metrics
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    pe, pw = get("image_quality", "emitter", "psnr"), get("image_quality", "widefield", "psnr")
    if pe is not None and pw is not None:
        parts.append(f"{label}: emitter PSNR {pe:.2f} dB (widefield {pw:.2f} dB)")
    for q in ("emitter", "raw"):
        z, c = get("calibration", q, "zms"), get("calibration", q, "cov95")
        if z is not None and c is not None:
            parts.append(f"{q}: ZMS {z:.2f}, cov95 {c:.2f}")
    return " | ".join(parts)
