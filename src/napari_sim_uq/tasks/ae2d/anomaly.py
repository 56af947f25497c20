"""``sim-uq anomaly``: image-level anomaly detection with a 2D autoencoder.

:func:`anomaly_job` (a job) reconstructs every image of a folder of normal images and of a
folder of abnormal ones (no degradation: the autoencoder reconstructs its input) and
scores each image twice (DESIGN.md 5), in normalised units (the checkpoint's per-image
normalisation):

- ``uncertainty`` score: ``mean((x - mu)^2 / sigma^2)``, the squared error normalised by
  the predicted (calibrated) variance: a pixel the model is unsure about counts less;
- ``mse`` score: ``mean((x - mu)^2)``, the plain reconstruction error.

For both: ROC AUC, equal error rate (EER) and F1 at the EER threshold
(:func:`~napari_sim_uq.core.uq.metrics.anomaly_report`; an image is called anomalous when
its score is >= the threshold; abnormal = positive). Written into ``out_dir``: ``roc.png``
(both ROC curves), ``scores.csv`` (one row per image) and ``anomaly.json``. Existing
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

__all__ = ["SCORES", "anomaly_job", "save_roc_figure"]

STAGE = "anomaly"
#: Score names: uncertainty-normalised, plain MSE.
SCORES = ("uncertainty", "mse")
_LABELS = {"uncertainty": "mean((x-mu)^2/sigma^2)", "mse": "MSE"}


def save_roc_figure(path: str | os.PathLike, rocs: dict, reports: dict, ax=None) -> Path | None:
    """ROC curves (``{name: roc_curve(...)}``) with their AUCs, on ``ax`` or as a PNG at
    ``path``."""
    from napari_sim_uq.core.plots import new_figure, save_figure

    fig = None
    if ax is None:
        fig, ax = new_figure(1, 1, size=(4.6, 4.2))
    for name, roc in rocs.items():
        ax.plot(
            roc["fpr"],
            roc["tpr"],
            drawstyle="steps-post",
            label=f"{_LABELS.get(name, name)}: AUC {reports[name]['auc']:.3f}",
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
    overwrite: bool = False,
    device: Any = "cpu",
) -> Generator[Event, None, dict]:
    """Score the images of ``normal_dir`` and ``abnormal_dir`` (folders or globs) with the
    autoencoder ``checkpoint`` and write ROC, scores and ``anomaly.json`` to ``out_dir``
    (module docstring). ``mc_samples``: MC-dropout samples (1: one deterministic pass; the
    std is then the variance head's). Returns the ``anomaly.json`` document."""
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import relay
    from napari_sim_uq.core.io.tiff_io import atomic_write
    from napari_sim_uq.core.uq.metrics import anomaly_report, roc_curve
    from napari_sim_uq.tasks.ae2d.calibrate import _count, image_seed
    from napari_sim_uq.tasks.ae2d.data import read_image_2d
    from napari_sim_uq.tasks.ae2d.infer import _jsonable, check_out_dir
    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model, predict_2d

    mc_samples = _count(mc_samples, "mc_samples", 1)
    seed = _count(seed, "seed", 0)
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
            rows.append(
                {
                    "file": str(path),
                    "label": label,
                    "uncertainty": float(pred.meta["image_score"]),
                    "mse": float(pred.meta["mse_score"]),
                }
            )
            k += 1
    yield Event(STAGE, total, total, {}, "scored")
    labels = np.array([r["label"] for r in rows], dtype=bool)
    reports, rocs = {}, {}
    for name in SCORES:
        s = np.array([r[name] for r in rows], dtype=np.float64)
        if not np.all(np.isfinite(s)):
            raise InputError(f"the {name} score is not finite for some images")
        reports[name] = anomaly_report(s, labels)
        rocs[name] = roc_curve(s, labels)

    # files: scores, ROC, summary (summary last: its presence means the run finished)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", "score_uncertainty", "score_mse"])
    for r in rows:
        w.writerow([r["file"], r["label"], repr(r["uncertainty"]), repr(r["mse"])])
    text_csv = buf.getvalue()
    atomic_write(targets["csv"], lambda tmp: Path(tmp).write_text(text_csv), overwrite=overwrite)
    save_roc_figure(targets["roc"], rocs, reports)
    doc = _jsonable(
        {
            "format": "napari-sim-uq 2D anomaly detection",
            "checkpoint": str(checkpoint),
            "normal_dir": str(normal_dir),
            "abnormal_dir": str(abnormal_dir),
            "n_normal": int((~labels).sum()),
            "n_abnormal": int(labels.sum()),
            "mc_samples": mc_samples,
            "seed": seed,
            "sigma_scale": float((ck.sigma_scale or {}).get("mean", 1.0)),
            "sigma_map": bool((ck.extra or {}).get("sigma_map")),
            "conventions": {
                "uncertainty": "mean over pixels of (x - mu)^2 / sigma^2, normalised units",
                "mse": "mean over pixels of (x - mu)^2, normalised units",
                "threshold": "an image is called anomalous when score >= threshold; abnormal "
                "images are the positives",
                "eer": "(FPR + FNR) / 2 at the ROC threshold where |FPR - FNR| is smallest",
                "f1": "F1 = 2TP / (2TP + FP + FN) at the EER threshold",
            },
            "scores": reports,
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
