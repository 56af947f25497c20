"""``sim-uq demo-2d``: the whole 2D workflow on generated data, in a few minutes on a laptop.

:func:`demo_2d_job` (a job: yields :class:`~napari_sim_uq.core.events.Event`, returns a
summary dict) runs, into one output folder:

1. ``data/``: clean synthetic images (:func:`~napari_sim_uq.tasks.ae2d.synth2d.
   generate_dataset_2d`: ``train``, ``val``, ``test``, ``size`` pixels) and, for the
   anomaly part, the same splits at ``ae_size`` pixels in ``data/anomaly/`` with an
   anomaly set (:func:`write_anomaly_set`): ``data/anomaly/abnormal`` holds the anomaly
   part's test images with one inserted anomaly each
   (:func:`~napari_sim_uq.tasks.ae2d.synth2d.insert_anomaly`), the normal set is
   ``data/anomaly/test`` itself;
2. ``denoiser/``: an MC-dropout U-Net with an aleatoric head trained to undo
   ``degrade`` (``noise:0.1``) on ``train``, model selection on ``val``, stopped between
   epochs when ``train_minutes`` would be exceeded;
3. std calibration of ``denoiser/best.pt`` on ``val``
   (:func:`~napari_sim_uq.tasks.ae2d.calibrate.calibrate_2d_job`, ``calib_method``);
4. ``inference/``: the held-out ``test`` images degraded and reconstructed, with
   ``metrics.json`` (:func:`~napari_sim_uq.tasks.ae2d.infer.infer_2d_job`);
5. ``anomaly_ae/``: a small heteroscedastic conv autoencoder trained to reconstruct the
   (normal) training images of ``data/anomaly/train`` (``degrade="none"``), with a linear
   mean head and a variance floor (``logvar_min = ae_logvar_min``; see
   :func:`anomaly_ae_model`);
6. ``anomaly/``: normal (``data/anomaly/test``) vs abnormal images scored by both anomaly
   scores (:func:`~napari_sim_uq.tasks.ae2d.anomaly.anomaly_job`; pixel mean and top 1 %);
7. ``summary.png`` (degraded, clean, mean, std of the first test image and the ROC
   curves) and ``demo_2d.json`` (every number, the timings and the options).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.config import JsonConfig, option
from napari_sim_uq.core.errors import InputError

__all__ = [
    "DEMO_2D_ITEMS",
    "Demo2DConfig",
    "anomaly_ae_model",
    "demo_2d_job",
    "write_anomaly_set",
]

#: What the demo writes into its output folder (``overwrite`` replaces only these).
DEMO_2D_ITEMS = (
    "data",
    "denoiser",
    "inference",
    "anomaly_ae",
    "anomaly",
    "summary.png",
    "demo_2d.json",
)


@dataclass
class Demo2DConfig(JsonConfig):
    """Options of :func:`demo_2d_job`; the defaults run in under 5 minutes on 2 CPU cores."""

    _what = "2D demo options"

    out_dir: str = option("sim-uq-demo-2d", help="output folder")
    overwrite: bool = option(False, help="replace an earlier demo in --out-dir")
    seed: int = option(0, help="random seed (data, training, degradations, dropout)", minimum=0)
    size: int = option(64, help="side of the generated images in pixels", minimum=32)
    n_train: int = option(48, help="training images", minimum=1)
    n_val: int = option(24, help="validation images (model selection and calibration)", minimum=1)
    n_test: int = option(16, help="held-out test images (and the normal anomaly set)", minimum=2)
    degrade: str = option("noise:0.1", help="what the denoiser learns to undo")
    background: float = option(
        0.1,
        help="smooth autofluorescence background of the denoiser's images (fraction of the "
        "peak; 0: none, then 60 % of the clean pixels are exactly 0)",
        minimum=0.0,
        maximum=0.9,
    )
    epochs: int = option(45, help="at most this many epochs of denoiser training", minimum=1)
    train_minutes: float = option(
        2.5, help="denoiser training budget; it stops between epochs", minimum=0.05
    )
    batch_size: int = option(16, help="patches per optimiser step", minimum=1)
    patch: int = option(32, help="training patch size in pixels", minimum=8)
    patches_per_image: int = option(4, help="patches per image and epoch", minimum=1)
    lr: float = option(2e-3, help="learning rate", minimum=0.0)
    base_channels: int = option(16, help="U-Net channels of the first level", minimum=4)
    depth: int = option(2, help="U-Net downsamplings", minimum=1, maximum=5)
    dropout: float = option(0.05, help="dropout probability", minimum=0.0, maximum=0.9)
    mc_samples: int = option(30, help="MC-dropout samples for calibration and inference", minimum=1)
    calib_method: str = option(
        "map-intensity",
        help="std recalibration (calibrate-2d --method): scale, map or map-intensity",
        choices=("scale", "map", "map-intensity"),
    )
    ae_epochs: int = option(50, help="at most this many epochs of anomaly-AE training", minimum=1)
    ae_minutes: float = option(
        1.5, help="anomaly-AE training budget; it stops between epochs", minimum=0.05
    )
    ae_size: int = option(
        128,
        help="side of the anomaly part's images in pixels (anomalies cover 1-8 %% of an "
        "image; at 128 pixels the autoencoder separates them better than at 64)",
        minimum=32,
    )
    ae_patch: int = option(64, help="anomaly-AE training patch size in pixels", minimum=8)
    ae_base_channels: int = option(8, help="channels of the anomaly conv-AE", minimum=4)
    ae_logvar_min: float = option(
        -5.0,
        help="variance floor of the anomaly AE (lower soft clamp of its log-variance, "
        "normalised units): without one the variance of the exactly dark background "
        "collapses and the mean hardly learns the structures",
        minimum=-20.0,
        maximum=0.0,
    )
    ae_norm_mode: str = option(
        "minmax",
        help="intensity normalisation of the anomaly AE: minmax keeps a bright anomaly from "
        "rescaling the rest of its image, as the 99.9 % percentile of percentile "
        "normalisation does",
        choices=("percentile", "minmax", "none"),
    )
    anomaly_kind: str = option(
        "random",
        help="inserted anomalies: blob, cluster, texture, line or random",
        choices=("blob", "cluster", "texture", "line", "random"),
    )
    device: str = option("auto", help="auto, cpu, cuda or mps")
    threads: int = option(
        1,
        help="torch CPU threads during the demo (0: torch's default); on a busy 2-core "
        "machine one thread trained 6x faster than two",
        minimum=0,
    )

    def validate(self) -> None:
        ints = (
            "seed",
            "size",
            "n_train",
            "n_val",
            "n_test",
            "epochs",
            "batch_size",
            "patch",
            "patches_per_image",
            "base_channels",
            "depth",
            "mc_samples",
            "threads",
            "ae_epochs",
            "ae_base_channels",
            "ae_size",
            "ae_patch",
        )
        for name in ints:
            v = getattr(self, name)
            lowest = 0 if name in ("seed", "threads") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.n_test < 2:
            raise InputError(
                f"n_test must be >= 2 (the anomaly ROC needs images), got {self.n_test}"
            )
        v = self.ae_logvar_min
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -20.0 <= v <= 0.0:
            raise InputError(f"ae_logvar_min must be a number in [-20, 0], got {v!r}")
        for name in ("train_minutes", "ae_minutes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if self.patch > self.size:
            raise InputError(f"patch ({self.patch}) must not exceed size ({self.size})")
        if self.ae_patch > self.ae_size or self.ae_patch % 4 or self.ae_size < 32:
            raise InputError(
                f"ae_patch ({self.ae_patch}) must be a multiple of 4 and not exceed ae_size "
                f"({self.ae_size}, at least 32)"
            )
        if self.patch % (2**self.depth) or self.size < 2 ** (self.depth + 2):
            raise InputError(
                f"patch ({self.patch}) must be a multiple of 2^depth = {2**self.depth}, and "
                f"size at least {2 ** (self.depth + 2)}"
            )
        if self.calib_method not in ("scale", "map", "map-intensity"):
            raise InputError(
                f"calib_method must be scale, map or map-intensity, got {self.calib_method!r}"
            )
        from napari_sim_uq.core.data.degrade import parse_degradations

        parse_degradations(self.degrade)


def write_anomaly_set(
    files: list[Path],
    out_dir: str | Path,
    *,
    seed: int = 0,
    kind: str = "random",
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Copies of the clean images ``files`` (uint16 or float TIFFs in ``[0, 1]`` units as
    written by :func:`~napari_sim_uq.tasks.ae2d.synth2d.generate_dataset_2d`) with one
    anomaly each (:func:`~napari_sim_uq.tasks.ae2d.synth2d.insert_anomaly`, image ``i``
    drawn from ``SeedSequence([seed, 3, i])``) in ``out_dir/abnormal/``, and the anomaly
    masks (uint8, 1 = anomaly) in ``out_dir/masks/``, under the same names. Returns
    ``{"abnormal": [...], "masks": [...]}``."""
    from napari_sim_uq.core.io.tiff_io import read_image, write_image
    from napari_sim_uq.tasks.ae2d.synth2d import insert_anomaly

    out = Path(out_dir)
    targets = [(out / "abnormal" / Path(f).name, out / "masks" / Path(f).name) for f in files]
    existing = [p for pair in targets for p in pair if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"'{out}' already holds an anomaly set (e.g. '{existing[0]}'); not overwriting it"
        )
    result: dict[str, list[Path]] = {"abnormal": [], "masks": []}
    for i, (f, (img_path, mask_path)) in enumerate(zip(files, targets, strict=True)):
        data = np.asarray(read_image(f).data)
        scale = 65535.0 if data.dtype == np.uint16 else 1.0
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, i]))
        img, mask = insert_anomaly(data.astype(np.float64) / scale, rng, kind)
        stored = np.rint(img * 65535).astype(np.uint16) if scale != 1.0 else img
        md = {"sim_uq": {"anomaly": {"source": str(f), "kind": kind, "seed": int(seed)}}}
        result["abnormal"].append(
            write_image(img_path, stored, name=img_path.stem, metadata=md, overwrite=overwrite)
        )
        result["masks"].append(
            write_image(
                mask_path,
                mask.astype(np.uint8),
                name=f"{img_path.stem} anomaly mask",
                metadata=md,
                overwrite=overwrite,
            )
        )
    return result


def anomaly_ae_model(base_channels: int = 8, logvar_min: float = -5.0) -> dict:
    """The network of the demo's anomaly autoencoder (AE2DConfig fields): the conv AE
    (``conv_depth`` 2, no skips) trained with the heteroscedastic loss, with

    - a **linear** mean head: with the sigmoid head the synthetic images (about 60 % exactly
      0) push the mean towards 0, the sigmoid saturates (its gradient vanishes) and the mean
      stays 0 everywhere; the "MSE" score then is ``mean(x^2)`` and the variance head does
      all the work (measured: ``bench/anomaly_2d.py``, docs/benchmarks.md);
    - a **variance floor** ``logvar_min``: the exactly dark background is reconstructed
      almost exactly, its log-variance falls to the default clamp (``-12``) and its pixels
      then weigh about ``e^7`` times more in the loss than those of the structures, which
      the mean fits worse (normal validation MSE 1.2e-3 without, 0.8e-3 with the floor -5
      at 128 px). ``-5`` (sigma >= 0.08 in normalised units) keeps the structures in the
      fit;
    - ``logvar_init`` one above the floor (the default -4 for the default floor).
    """
    return {
        "arch": "conv-ae",
        "model": "hetero",
        "base_channels": int(base_channels),
        "conv_depth": 2,
        "mean_activation": "linear",
        "logvar_min": float(logvar_min),
        "logvar_init": float(logvar_min) + 1.0,
    }


def _anomaly_data(cfg: Demo2DConfig, folder: Path) -> Path:
    """The anomaly part's images: normal ``train``, ``val``, ``test`` splits of
    ``ae_size`` pixels (the same seeds as the denoiser's data) and the abnormal copies of
    ``test`` (:func:`write_anomaly_set`), all in ``folder``."""
    from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d

    files = generate_dataset_2d(folder, cfg.n_train, cfg.n_val, cfg.n_test, cfg.ae_size, cfg.seed)
    write_anomaly_set(files["test"], folder, seed=cfg.seed, kind=cfg.anomaly_kind)
    return folder


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"demo output '{out}' is a file; choose a folder")
    present = [name for name in DEMO_2D_ITEMS if (out / name).exists()]
    if present and not overwrite:
        raise FileExistsError(
            f"'{out}' already holds a 2D demo ({', '.join(present)}): pass overwrite=True "
            "(--overwrite) to replace it, or choose another folder; nothing was changed"
        )
    for name in present:  # only the demo's own items, never other files in the folder
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _train_within(job, epochs: int, budget_s: float):
    """Drive a training job, stopping between epochs once the next epoch would exceed
    ``budget_s`` seconds; returns ``(epochs done, stopped early)``."""
    t0 = time.perf_counter()
    done, stopped = 0, False
    try:
        while True:
            try:
                ev = next(job)
            except StopIteration as stop:
                done = stop.value["epochs_done"]
                break
            yield ev
            if ev.stage == "validate":
                done = ev.step
                elapsed = time.perf_counter() - t0
                if ev.step < epochs and elapsed * (ev.step + 1) / ev.step > budget_s:
                    stopped = True
                    break
    finally:
        job.close()  # a stopped run keeps its checkpoints (latest.pt, best.pt)
    return done, stopped


def demo_2d_job(cfg: Demo2DConfig | dict | None = None):
    """Generate, train, calibrate, infer, train an anomaly AE, score anomalies and plot (a
    job; module docstring). Returns the ``demo_2d.json`` document."""
    import torch

    cfg = Demo2DConfig.coerce(cfg)
    cfg.validate()
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return (yield from _demo_2d(cfg))
    finally:
        torch.set_num_threads(before)


def _demo_2d(cfg: Demo2DConfig):
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.results import jsonable
    from napari_sim_uq.tasks.ae2d.anomaly import anomaly_job
    from napari_sim_uq.tasks.ae2d.calibrate import calibrate_2d_job
    from napari_sim_uq.tasks.ae2d.infer import infer_2d_job
    from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d
    from napari_sim_uq.tasks.ae2d.train import Train2DConfig, train_2d_job

    t_start = time.perf_counter()
    device = str(resolve_device(cfg.device))
    out = Path(cfg.out_dir)
    _prepare(out, cfg.overwrite)
    data = out / "data"
    timings: dict[str, float] = {}

    # 1. data
    t0 = time.perf_counter()
    yield Event("generate", 0, 1, {}, "synthetic images")
    generate_dataset_2d(
        data, cfg.n_train, cfg.n_val, cfg.n_test, cfg.size, cfg.seed, background=cfg.background
    )
    anomaly_data = _anomaly_data(cfg, data / "anomaly")
    yield Event("generate", 1, 1, {}, "done")
    timings["generate_s"] = time.perf_counter() - t0

    # 2. the denoiser: MC dropout + aleatoric head
    t0 = time.perf_counter()
    tcfg = Train2DConfig(
        data_dir=str(data / "train"),
        val_dir=str(data / "val"),
        ckpt_dir=str(out / "denoiser"),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        patch=cfg.patch,
        patches_per_image=cfg.patches_per_image,
        degrade=cfg.degrade,
        device=device,
        seed=cfg.seed,
        model={
            "arch": "unet",
            "model": "mc-dropout",
            "aleatoric": True,
            "base_channels": cfg.base_channels,
            "depth": cfg.depth,
            "dropout": cfg.dropout,
        },
    )
    den_epochs, den_stopped = yield from _train_within(
        train_2d_job(tcfg), cfg.epochs, 60.0 * cfg.train_minutes
    )
    timings["train_denoiser_s"] = time.perf_counter() - t0
    denoiser = out / "denoiser" / "best.pt"

    # 3. calibration on val (stored in best.pt)
    t0 = time.perf_counter()
    calib = yield from calibrate_2d_job(
        denoiser,
        data / "val",
        mc_samples=cfg.mc_samples,
        seed=cfg.seed,
        method=cfg.calib_method,
        device=device,
    )
    timings["calibrate_s"] = time.perf_counter() - t0

    # 4. inference on the held-out test images
    t0 = time.perf_counter()
    metrics = yield from infer_2d_job(
        data / "test",
        denoiser,
        out / "inference",
        num_samples=cfg.mc_samples,
        seed=cfg.seed + 1,
        device=device,
    )
    timings["infer_s"] = time.perf_counter() - t0

    # 5. the anomaly autoencoder: reconstructs its (normal) input
    t0 = time.perf_counter()
    acfg = Train2DConfig(
        data_dir=str(anomaly_data / "train"),
        val_dir=str(anomaly_data / "val"),
        ckpt_dir=str(out / "anomaly_ae"),
        epochs=cfg.ae_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        patch=cfg.ae_patch,
        patches_per_image=cfg.patches_per_image,
        degrade="none",
        norm_mode=cfg.ae_norm_mode,
        device=device,
        seed=cfg.seed,
        model=anomaly_ae_model(cfg.ae_base_channels, cfg.ae_logvar_min),
    )
    ae_epochs, ae_stopped = yield from _train_within(
        train_2d_job(acfg), cfg.ae_epochs, 60.0 * cfg.ae_minutes
    )
    timings["train_anomaly_ae_s"] = time.perf_counter() - t0

    # 6. anomaly detection: normal test images vs the same with an anomaly
    t0 = time.perf_counter()
    anomaly = yield from anomaly_job(
        out / "anomaly_ae" / "best.pt",
        anomaly_data / "test",
        anomaly_data / "abnormal",
        out / "anomaly",
        seed=cfg.seed,
        device=device,
    )
    timings["anomaly_s"] = time.perf_counter() - t0

    # 7. summary
    yield Event("summary", 0, 1, {}, "drawing summary.png")
    summary = _save_summary(out / "summary.png", out / "inference", metrics, anomaly)
    yield Event("summary", 1, 1, {}, str(summary))
    timings["total_s"] = time.perf_counter() - t_start

    def cal_digest(table: dict) -> dict:
        return {
            "pooled": {k: table["pooled"][k] for k in ("zms", "cov95", "spearman", "uce")},
            "by_intensity": {k: v["zms"] for k, v in table["by_intensity"].items()},
            "by_intensity_cov95": {k: v["cov95"] for k, v in table["by_intensity"].items()},
            "by_std_decile": [d["zms"] for d in table["by_std_decile"]],
        }

    doc = {
        "out_dir": str(out),
        "device": device,
        "files": {
            "data": str(data),
            "denoiser": str(denoiser),
            "inference": str(out / "inference"),
            "metrics": str(out / "inference" / "metrics.json"),
            "anomaly_data": str(anomaly_data),
            "anomaly_ae": str(out / "anomaly_ae" / "best.pt"),
            "anomaly": str(out / "anomaly" / "anomaly.json"),
            "summary": str(summary),
        },
        "training": {
            "denoiser_epochs": den_epochs,
            "denoiser_stopped_by_time_budget": den_stopped,
            "anomaly_ae_epochs": ae_epochs,
            "anomaly_ae_stopped_by_time_budget": ae_stopped,
        },
        "calibration": {
            "method": calib["method"],
            "split": "val",
            "sigma_scale": calib["sigma_scale"].get("mean"),
            "before_val": cal_digest(calib["before"]),
            "after_val": cal_digest(calib["after"]),
        },
        "test": {
            "image_quality": {
                k: metrics["pooled"][k] for k in ("psnr", "ssim", "psnr_input", "ssim_input")
            },
            "calibration": cal_digest(metrics["conditional"]),
        },
        "anomaly": {
            name: {k: anomaly["scores"][name][k] for k in ("auc", "eer", "f1")}
            for name in anomaly["scores"]
        },
        # the same for each image score (pixel mean, the one above, and mean of the top 1 %)
        "anomaly_by_pool": {
            pool: {name: {k: rep[k] for k in ("auc", "eer", "f1")} for name, rep in reps.items()}
            for pool, reps in anomaly["scores_by_pool"].items()
        },
        "timings": timings,
        "config": cfg.to_dict(),
    }
    doc = jsonable(doc)
    _write_json(out / "demo_2d.json", doc)
    return doc


def _write_json(path: Path, obj: dict) -> None:
    import json

    from napari_sim_uq.core.io.tiff_io import atomic_write

    text = json.dumps(obj, indent=2, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=True)


def _save_summary(path: Path, inference: Path, metrics: dict, anomaly: dict) -> Path:
    """Degraded input, clean target, mean and std of the first test image, and the ROC
    curves of both anomaly scores, with the test-set numbers."""
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.io.tiff_io import read_image
    from napari_sim_uq.core.plots import new_figure, save_figure
    from napari_sim_uq.tasks.ae2d.anomaly import save_roc_figure

    first = metrics["per_image"][0]
    arr: dict[str, Any] = {
        k: np.asarray(read_image(inference / f"{first['sample']}_{k}.tif").data)
        for k in ("degraded", "mean", "std")
    }
    clean = read_image_2d(first["file"])
    fig, axes = new_figure(1, 5, size=(19.0, 4.2))
    lo, hi = (float(v) for v in np.percentile(clean, [0.5, 99.5]))
    for ax, img, name in zip(
        axes[:3],
        (arr["degraded"], clean, arr["mean"]),
        (
            f"degraded (PSNR {first['psnr_input']:.1f} dB)",
            "clean (held out)",
            f"mean (PSNR {first['psnr']:.1f} dB)",
        ),
        strict=True,
    ):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-12), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    im = axes[3].imshow(arr["std"], cmap="magma", interpolation="nearest")
    axes[3].set_title(f"std (ZMS {first['zms']:.2f}, cov95 {first['cov95']:.2f})", fontsize=10)
    axes[3].set_axis_off()
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    rocs = {
        n: {k: np.asarray([np.inf if v is None else v for v in r[k]]) for k in r}
        for n, r in anomaly["roc"].items()
    }
    save_roc_figure(None, rocs, anomaly["scores"], ax=axes[4])
    p, c = metrics["pooled"], metrics["conditional"]["by_intensity"]
    tert = ", ".join(f"{k} {v['zms']:.2f}" for k, v in c.items() if v["zms"] is not None)
    fig.suptitle(
        f"2D demo, test set: PSNR {p['psnr']:.2f} dB (degraded {p['psnr_input']:.2f}), SSIM "
        f"{p['ssim']:.3f} ({p['ssim_input']:.3f}); ZMS {p['zms']:.2f} ({tert}), "
        f"95% coverage {p['cov95']:.3f}, Spearman {p['spearman']:.2f}",
        fontsize=10,
    )
    return save_figure(fig, path)
