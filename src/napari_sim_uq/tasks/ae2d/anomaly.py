"""``sim-uq anomaly``: image-level anomaly detection with a 2D autoencoder.

:func:`anomaly_job` (a job) reconstructs every image of a folder of normal images and of a
folder of abnormal ones (no degradation: the autoencoder reconstructs its input) and
scores each image twice (DESIGN.md 5), in normalised units (the checkpoint's per-image
normalisation):

- ``uncertainty`` score: ``mean((x - mu)^2 / sigma^2)``, the squared error normalised by
  the predicted (calibrated) variance: a pixel the model is unsure about counts less;
- ``mse`` score: ``mean((x - mu)^2)``, the plain reconstruction error.

Each is pooled from its per-pixel map in two ways (:data:`POOLS`, :func:`pool_scores`):
``mean``, the mean over all pixels (DESIGN.md 5, the default ``pool``), and ``top1``, the
mean of the highest 1 % of the pixel scores, which a small anomaly (1-6 % of the image)
does not dilute. ``scores`` (and ``roc.png``) use ``pool``; ``scores_by_pool`` has both.
On the synthetic benchmark (``bench/anomaly_2d.py``, docs/benchmarks.md) ``top1`` was not
better than the mean: normal images have local reconstruction errors as large as the
anomalies'.

For every score: ROC AUC, equal error rate (EER) and F1 at the EER threshold
(:func:`~napari_sim_uq.core.uq.metrics.anomaly_report`; an image is called anomalous when
its score is >= the threshold; abnormal = positive). Written into ``out_dir``: ``roc.png``
(both ROC curves), ``scores.csv`` (one row per image: ``score_uncertainty`` and
``score_mse`` of ``pool``, then every score and pool) and ``anomaly.json``. Existing
outputs are never replaced unless ``overwrite=True`` (checked before any work).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event

__all__ = ["POOLS", "SCORES", "anomaly_job", "pool_scores", "save_roc_figure"]

STAGE = "anomaly"
#: Score names: uncertainty-normalised, plain MSE.
SCORES = ("uncertainty", "mse")
#: How the per-pixel scores of an image become one number (module docstring).
POOLS = ("mean", "top1")
#: The fraction of pixels the ``top1`` pool averages.
TOP_FRACTION = 0.01
_LABELS = {"uncertainty": "(x-mu)^2/sigma^2", "mse": "(x-mu)^2"}
_POOL_LABELS = {"mean": "mean", "top1": "top1%"}


def pool_scores(pixel_scores: np.ndarray, pool: str = "mean") -> float:
    """One image's score from its per-pixel scores: ``"mean"`` (all pixels) or ``"top1"``
    (the mean of the highest :data:`TOP_FRACTION` = 1 % of them, at least one pixel)."""
    v = np.asarray(pixel_scores, dtype=np.float64).ravel()
    if pool == "mean":
        return float(v.mean())
    if pool == "top1":
        k = max(1, int(round(TOP_FRACTION * v.size)))
        return float(np.partition(v, v.size - k)[v.size - k :].mean())
    raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")


def save_roc_figure(
    path: str | os.PathLike, rocs: dict, reports: dict, ax=None, pool: str = "mean"
) -> Path | None:
    """ROC curves (``{name: roc_curve(...)}``) with their AUCs, on ``ax`` or as a PNG at
    ``path``; ``pool`` names the image score in the legend."""
    from napari_sim_uq.core.plots import new_figure, save_figure

    fig = None
    if ax is None:
        fig, ax = new_figure(1, 1, size=(4.6, 4.2))
    for name, roc in rocs.items():
        ax.plot(
            roc["fpr"],
            roc["tpr"],
            drawstyle="steps-post",
            label=f"{_POOL_LABELS.get(pool, pool)}({_LABELS.get(name, name)}): "
            f"AUC {reports[name]['auc']:.3f}",
        )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("anomaly detection (ROC)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return None if fig is None else save_figure(fig, path)


def anomaly_job(
    checkpoint: str | os.PathLike,
    normal_dir: Any,
    abnormal_dir: Any,
    out_dir: str | os.PathLike,
    *,
    mc_samples: int = 1,
    seed: int = 0,
    pool: str = "mean",
    overwrite: bool = False,
    device: Any = "cpu",
) -> Generator[Event, None, dict]:
    """Score the images of ``normal_dir`` and ``abnormal_dir`` (folders or globs) with the
    autoencoder ``checkpoint`` and write ROC, scores and ``anomaly.json`` to ``out_dir``
    (module docstring). ``mc_samples``: MC-dropout samples (1: one deterministic pass; the
    std is then the variance head's). ``pool``: the image score of ``scores`` (both pools are
    reported under ``scores_by_pool``). Returns the ``anomaly.json`` document."""
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import relay
    from napari_sim_uq.core.io.results import check_out_dir, jsonable
    from napari_sim_uq.core.io.tiff_io import atomic_write
    from napari_sim_uq.core.uq.metrics import anomaly_report, roc_curve
    from napari_sim_uq.tasks.ae2d.calibrate import _count, image_seed
    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model, predict_2d

    mc_samples = _count(mc_samples, "mc_samples", 1)
    seed = _count(seed, "seed", 0)
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    out = Path(out_dir)
    sets = [(0, resolve_files(normal_dir)), (1, resolve_files(abnormal_dir))]
    targets = {k: out / n for k, n in (("json", "anomaly.json"), ("csv", "scores.csv"))}
    targets["roc"] = out / "roc.png"
    check_out_dir(out, list(targets.values()), overwrite)
    dev = resolve_device(str(device))
    model, ck = load_ae2d_model(checkpoint, dev)
    degrade = (ck.config.get("data") or {}).get("degrade") or {}
    notes = []
    if degrade.get("steps"):
        notes.append(
            "this model was trained to undo degradations (a denoiser), not to reconstruct "
            "its input; anomaly scores of such a model measure how far the input is from a "
            "clean image"
        )
    t0 = time.perf_counter()
    rows: list[dict] = []
    total = sum(len(f) for _, f in sets)
    k = 0
    for label, files in sets:
        for path in files:
            yield Event(STAGE, k, total, {}, f"{Path(path).name}")
            img = read_image_2d(path, min_size=model.min_size)
            pred = yield from relay(
                predict_2d(
                    model,
                    ck,
                    img,
                    mc_samples=mc_samples,
                    seed=image_seed(seed, k),
                    device=dev,
                    scores=True,
                    what=f"'{path}'",
                ),
                f"{Path(path).name}: ",
            )
            # per-pixel maps in normalised units: z^2 from the prediction, r^2 = (x - mu)^2
            norm = Normalization.from_dict(pred.meta["normalization"])
            x = norm.apply(np.asarray(img, np.float64))
            mu = norm.apply(np.asarray(pred.arrays["mean"], np.float64))
            maps = {"uncertainty": pred.arrays["anomaly_score"], "mse": (x - mu) ** 2}
            row: dict[str, Any] = {"file": str(path), "label": label}
            for name in SCORES:
                for p in POOLS:
                    row[f"{name}_{p}"] = pool_scores(maps[name], p)
            # the pixel means exactly as predict_2d computed them
            row["uncertainty_mean"] = float(pred.meta["image_score"])
            row["mse_mean"] = float(pred.meta["mse_score"])
            rows.append({**row, **{name: row[f"{name}_{pool}"] for name in SCORES}})
            k += 1
    yield Event(STAGE, total, total, {}, "scored")
    labels = np.array([r["label"] for r in rows], dtype=bool)
    by_pool: dict[str, dict] = {p: {} for p in POOLS}
    rocs = {}
    for name in SCORES:
        for p in POOLS:
            s = np.array([r[f"{name}_{p}"] for r in rows], dtype=np.float64)
            if not np.all(np.isfinite(s)):
                raise InputError(f"the {name} score ({p}) is not finite for some images")
            by_pool[p][name] = anomaly_report(s, labels)
            if p == pool:
                rocs[name] = roc_curve(s, labels)
    reports = by_pool[pool]

    # files: scores, ROC, summary (summary last: its presence means the run finished)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    pooled = [f"{name}_{p}" for name in SCORES for p in POOLS]
    w.writerow(["file", "label", "score_uncertainty", "score_mse", *pooled])
    for r in rows:
        w.writerow([r["file"], r["label"], *(repr(r[c]) for c in ("uncertainty", "mse", *pooled))])
    text_csv = buf.getvalue()
    atomic_write(targets["csv"], lambda tmp: Path(tmp).write_text(text_csv), overwrite=overwrite)
    save_roc_figure(targets["roc"], rocs, reports, pool=pool)
    doc = jsonable(
        {
            "format": "napari-sim-uq 2D anomaly detection",
            "checkpoint": str(checkpoint),
            "normal_dir": str(normal_dir),
            "abnormal_dir": str(abnormal_dir),
            "n_normal": int((~labels).sum()),
            "n_abnormal": int(labels.sum()),
            "mc_samples": mc_samples,
            "seed": seed,
            "pool": pool,
            "sigma_scale": float((ck.sigma_scale or {}).get("mean", 1.0)),
            "sigma_map": bool((ck.extra or {}).get("sigma_map")),
            "conventions": {
                "uncertainty": "per-pixel (x - mu)^2 / sigma^2, normalised units, pooled",
                "mse": "per-pixel (x - mu)^2, normalised units, pooled",
                "pools": {
                    "mean": "mean over all pixels",
                    "top1": "mean of the highest 1 % of the pixel scores",
                },
                "pool": f"'scores' and the ROC use the {pool!r} pool; 'scores_by_pool' has both",
                "threshold": "an image is called anomalous when score >= threshold; abnormal "
                "images are the positives",
                "eer": "(FPR + FNR) / 2 at the ROC threshold where |FPR - FNR| is smallest",
                "f1": "F1 = 2TP / (2TP + FP + FN) at the EER threshold",
            },
            "scores": reports,
            "scores_by_pool": by_pool,
            "roc": {n: {k: v.tolist() for k, v in r.items()} for n, r in rocs.items()},
            "per_image": rows,
            "notes": notes,
            "files": {k: str(p) for k, p in targets.items()},
            "seconds": time.perf_counter() - t0,
        }
    )
    text = json.dumps(doc, indent=2, allow_nan=False)
    atomic_write(targets["json"], lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)
    return doc
