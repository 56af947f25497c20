r"""Training debug folders: what the network predicts on a few fixed samples, per epoch.

With ``TrainConfig.debug_every_epochs = N`` (``sim-uq train --debug-every-epochs N``) the
training job calls :class:`DebugSampleWriter` after validation of every ``N``-th epoch (rank
0 only). It runs the model in eval mode, without gradients, on the first
``debug_samples`` items of the validation set (of the training set when there is no
validation data), always the same items and never randomly cropped, and writes
``C/debug_samples/epoch_XXX/`` (``XXX`` = the 1-based epoch, 3 digits):

``uq_uncertainty.npz``
    float32 arrays, leading axis = sample (``B``), ``F`` raw frames, ``f`` = hr_factor:
    ``x`` ``(B, F, H, W)`` normalised input; ``emitter`` / ``emitter_std`` ``(B, fH, fW)``;
    ``lp`` / ``lp_std`` ``(B, F, fH, fW)``; ``psf`` / ``psf_std`` ``(B, k, k)``; ``rec``
    ``(B, F, H, W)`` the forward model ``y`` of the prediction; ``rec_std`` its model std
    ``sqrt(Var_model(y))`` (propagated emitter, pattern and PSF uncertainty); ``raw_std`` the
    total predictive std ``sqrt(Var_model(y) + alpha*max(y, 0) + beta + var_floor)`` of the
    loss (camera noise included); ``background`` ``(B,)`` when predicted. A std is absent
    when the model predicts no variance for that output (``uq_targets``). Supervised, with
    ground truth: ``emitter_gt``, ``lp_gt``, ``noise_sigma`` (the generator's true
    per-pixel noise std, ``D/{split}_meta/*.npz``, normalised like ``x``) when available,
    ``nll_emitter`` ``(B, fH, fW)`` and ``nll_raw`` ``(B, F, H, W)``. Scalars: ``epoch``,
    ``index`` (dataset items), ``var_floor``, ``camera_alpha``, ``camera_beta``.
``uq_summary.json``
    for every std map its ``mean``, ``p95`` (NumPy's linear-interpolation 95th percentile
    over all pixels of all samples), ``min`` and ``max``; the camera parameters; the raw
    calibration (ZMS, 95 % coverage); supervised also the mean NLLs, the emitter/pattern
    calibration and the predicted raw std against the true noise sigma; the PNGs written and
    any plot that failed.
PNGs
    ``std_maps.png`` (per sample: input, emitter, emitter std, pattern std and raw std of
    frame 0), ``std_histograms.png`` (every std map, mean and p95 marked),
    ``calibration.png`` (raw; emitter and patterns against ground truth when supervised:
    empirical MSE against mean predicted variance per equal-count bin, ideal y = x), and,
    supervised, ``nll_maps.png`` (emitter and raw frame 0 NLL) and
    ``raw_std_vs_noise_sigma.png`` (predicted raw std against the generator's true noise
    sigma, binned means and the y = x line).

Units: normalised intensities (the units of ``x``), see
:mod:`napari_sim_uq.tasks.sim.dataset`. NLL convention (the loss's): per pixel
``0.5 * ((t - mu)^2 / V + log V)`` **without** ``0.5 * log(2 pi)``, with ``V`` the loss's
variance: ``emitter_std^2 + var_floor`` for the emitter, ``raw_std^2`` for the raw frames.
The emitter and pattern calibration use the same ``V``.

The folder is written under a hidden temporary name and renamed when complete, so a
half-written ``epoch_XXX`` never appears; an existing one (a resumed run) is replaced. A
failing plot is reported once as a warning and listed in ``uq_summary.json``; the training
job also catches any other failure here, so debug output never stops training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEBUG_DIRNAME",
    "STD_KEYS",
    "DebugSampleWriter",
    "compute_debug_arrays",
    "debug_batch",
    "summarize_debug_arrays",
    "write_debug_samples",
]

DEBUG_DIRNAME = "debug_samples"
#: The std maps of ``uq_uncertainty.npz`` (those present) summarised in ``uq_summary.json``.
STD_KEYS = ("emitter_std", "lp_std", "psf_std", "rec_std", "raw_std")
_Z95 = 1.959963984540054
_MAX_SCATTER = 4000


# ----------------------------------------------------------------------------- inputs


def debug_batch(dataset, n: int = 2) -> dict:
    """The first ``n`` items of ``dataset`` collated into one batch.

    Items whose shapes differ from the first one's (files of another size) are left out,
    so at least one item is always returned. Use a dataset without random crops.
    """
    from torch.utils.data import default_collate

    n = max(1, min(int(n), len(dataset)))
    items = [dataset[i] for i in range(n)]
    shape = tuple(items[0]["x"].shape)
    same = [it for it in items if tuple(it["x"].shape) == shape]
    if len(same) < len(items):
        warnings.warn(
            f"debug samples: {len(items) - len(same)} of the first {len(items)} items differ "
            f"in size from the first one {shape} and are left out",
            RuntimeWarning,
            stacklevel=2,
        )
    return default_collate(same)


def _to(batch: dict, device) -> dict:
    import torch

    out: dict = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        elif isinstance(v, dict):
            out[k] = _to(v, device)
        else:
            out[k] = v
    return out


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().astype(np.float32, copy=False)


def _std(var) -> np.ndarray:
    return _np(var.clamp_min(0).sqrt())


def compute_debug_arrays(model, criterion, batch: dict, *, supervised: bool) -> dict:
    """Run ``model`` (eval mode, no gradients) and ``criterion`` (a
    :class:`~napari_sim_uq.tasks.sim.loss.SimLoss`) on ``batch`` and return the arrays of
    ``uq_uncertainty.npz`` (module docstring). The modes of ``model`` and ``criterion`` are
    restored afterwards."""
    import torch

    from napari_sim_uq.core.nn.losses import gaussian_nll
    from napari_sim_uq.tasks.sim.pattern_model import instrument_psf, use_estimated_patterns

    modes = (model.training, criterion.training)
    try:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        criterion.eval()
        with torch.no_grad():
            b = _to(batch, device)
            x = b["x"]
            out = model(x)
            instrument = getattr(model, "instrument", None)
            if instrument is not None and "lp_est" in b:
                f = int(model.hr_factor)
                psf = instrument_psf(instrument, out.psf.shape[-1], f, out.emitter)
                out, b = use_estimated_patterns(out, b, psf, f)
            res = criterion(out, x, b)
            floor = float(criterion.cfg.var_floor)
            a: dict[str, Any] = {
                "x": _np(x),
                "emitter": _np(out.emitter[:, 0]),
                "lp": _np(out.lp),
                "psf": _np(out.psf),
                "rec": _np(res.y_mean),
                "rec_std": _std(res.y_var_model),
                "raw_std": _std(res.y_var),
            }
            if out.emitter_var is not None:
                a["emitter_std"] = _std(out.emitter_var[:, 0])
            if out.lp_var is not None:
                a["lp_std"] = _std(out.lp_var)
            if out.psf_var is not None:
                a["psf_std"] = _std(out.psf_var)
            if out.background is not None:
                a["background"] = _np(out.background.reshape(-1))
            cam = criterion.camera
            a["camera_alpha"] = np.float64(float(cam.alpha) if cam is not None else 0.0)
            a["camera_beta"] = np.float64(float(cam.beta) if cam is not None else 0.0)
            a["var_floor"] = np.float64(floor)
            if "index" in b:
                a["index"] = b["index"].detach().cpu().numpy().astype(np.int64)
            if supervised:
                a["nll_raw"] = _np(gaussian_nll(x, res.y_mean, res.y_var, reduction="none"))
                if "emitter_gt" in b:
                    gt = b["emitter_gt"].to(out.emitter.dtype).reshape(out.emitter.shape)
                    a["emitter_gt"] = _np(gt[:, 0])
                    if out.emitter_var is not None:
                        nll = gaussian_nll(
                            gt, out.emitter, out.emitter_var, floor, reduction="none"
                        )
                        a["nll_emitter"] = _np(nll[:, 0])
                if "lp_gt" in b:
                    a["lp_gt"] = _np(b["lp_gt"])
                if "noise_sigma" in b:
                    a["noise_sigma"] = _np(b["noise_sigma"])
    finally:
        model.train(modes[0])
        criterion.train(modes[1])
    return a


# ----------------------------------------------------------------------------- summary


def _stats(v: np.ndarray) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "p95": float(np.percentile(v, 95)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _calib(r: np.ndarray, var: np.ndarray) -> dict[str, float]:
    z2 = np.asarray(r, np.float64) ** 2 / np.asarray(var, np.float64)
    return {"zms": float(z2.mean()), "cov95": float(np.mean(z2 <= _Z95**2))}


def _target_var(a: dict, name: str) -> np.ndarray:
    """The loss's predictive variance of a supervised target (std^2 + var_floor)."""
    return a[f"{name}_std"].astype(np.float64) ** 2 + float(a["var_floor"])


def summarize_debug_arrays(a: dict, *, epoch: int) -> dict:
    """The content of ``uq_summary.json`` for the arrays of :func:`compute_debug_arrays`."""
    s: dict[str, Any] = {
        "epoch": int(epoch),
        "n_samples": int(a["x"].shape[0]),
        "units": "normalised intensity (the units of x)",
        "std": {k: _stats(a[k]) for k in STD_KEYS if k in a},
        "camera": {"alpha": float(a["camera_alpha"]), "beta": float(a["camera_beta"])},
        "var_floor": float(a["var_floor"]),
        "calibration": {
            "raw": _calib(a["x"] - a["rec"], a["raw_std"].astype(np.float64) ** 2),
        },
    }
    if "index" in a:
        s["items"] = [int(i) for i in a["index"]]
    nll = {}
    for name, key in (("emitter", "nll_emitter"), ("raw", "nll_raw")):
        if key in a:
            nll[name] = float(np.mean(a[key], dtype=np.float64))
    if nll:
        s["nll"] = {**nll, "convention": "0.5*(r^2/V + log V), without 0.5*log(2*pi)"}
    for name in ("emitter", "lp"):
        if f"{name}_gt" in a and f"{name}_std" in a:
            r = a[f"{name}_gt"].astype(np.float64) - a[name]
            s["calibration"][name] = _calib(r, _target_var(a, name))
    if "noise_sigma" in a:
        ns = a["noise_sigma"].astype(np.float64)
        rs = a["raw_std"].astype(np.float64)
        s["noise_sigma"] = {
            "true_mean": float(ns.mean()),
            "pred_raw_std_mean": float(rs.mean()),
            "ratio_median": float(np.median(rs / np.maximum(ns, 1e-12))),
            "rmse": float(np.sqrt(np.mean((rs - ns) ** 2))),
        }
    return s


# ----------------------------------------------------------------------------- plots


def _plain_figure(nrows: int, ncols: int, size: tuple[float, float], **adjust):
    """An Agg ``(Figure, 2D axes array)`` without a layout engine: the debug plots are
    drawn every few epochs during training, and constrained layout costs seconds per
    figure on a slow CPU; fixed margins (``subplots_adjust``) do."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    fig.subplots_adjust(**adjust)
    return fig, axes


def _image_grid(n: int, panels: list, path: Path) -> None:
    """``n`` rows (samples) of image panels ``(title, cmap, data)`` with colorbars (frame
    0 of stacks)."""
    from matplotlib.ticker import MaxNLocator

    from napari_sim_uq.core.plots import save_figure

    cols = len(panels)
    fig, axes = _plain_figure(
        n,
        cols,
        (2.7 * cols, 2.4 * n),
        left=0.01,
        right=0.97,
        bottom=0.02,
        top=0.92,
        wspace=0.3,
        hspace=0.25,
    )
    for i in range(n):
        for j, (title, cmap, data) in enumerate(panels):
            img = data[i]
            img = img[0] if img.ndim == 3 else img
            ax = axes[i, j]
            im = ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_title(f"{title} #{i}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.03)
            cb.locator = MaxNLocator(4)
            cb.update_ticks()
            cb.ax.tick_params(labelsize=6)
    save_figure(fig, path)


def _plot_std_maps(a: dict, path: Path) -> None:
    cols = [("x", "input (frame 0)", "gray"), ("emitter", "emitter", "gray")]
    cols += [
        (k, t, "magma")
        for k, t in (
            ("emitter_std", "emitter std"),
            ("lp_std", "pattern std (frame 0)"),
            ("raw_std", "raw std (frame 0)"),
        )
        if k in a
    ]
    _image_grid(a["x"].shape[0], [(t, c, a[k]) for k, t, c in cols], path)


def _plot_histograms(a: dict, path: Path) -> None:
    from napari_sim_uq.core.plots import save_figure

    keys = [k for k in STD_KEYS if k in a]
    fig, axes = _plain_figure(
        1, len(keys), (3.2 * len(keys), 2.9), left=0.06, right=0.98, bottom=0.17, top=0.9
    )
    for ax, k in zip(axes[0], keys, strict=True):
        v = np.asarray(a[k], dtype=np.float64).ravel()
        st = _stats(v)
        counts, edges = np.histogram(v, bins=50)
        ax.stairs(counts, edges, fill=True, color="tab:purple", alpha=0.8)
        ax.set_yscale("log")
        ax.axvline(st["mean"], color="k", lw=1, label=f"mean {st['mean']:.3g}")
        ax.axvline(st["p95"], color="k", ls="--", lw=1, label=f"p95 {st['p95']:.3g}")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("std (normalised)")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def _plot_nll_maps(a: dict, path: Path) -> None:
    cols = [
        (t, "viridis", a[k])
        for k, t in (("nll_emitter", "emitter NLL"), ("nll_raw", "raw NLL (frame 0)"))
        if k in a
    ]
    _image_grid(a["x"].shape[0], cols, path)


def _plot_calibration(a: dict, path: Path) -> None:
    from napari_sim_uq.core.plots import save_calibration_curves
    from napari_sim_uq.core.uq.metrics import calibration_curve

    curves = {}
    for name in ("emitter", "lp"):
        if f"{name}_gt" in a and f"{name}_std" in a:
            r = a[f"{name}_gt"].astype(np.float64) - a[name]
            curves[name] = calibration_curve(r, np.sqrt(_target_var(a, name)))
    curves["raw"] = calibration_curve(a["x"].astype(np.float64) - a["rec"], a["raw_std"])
    save_calibration_curves(curves, path)


def _plot_noise_sigma(a: dict, path: Path) -> None:
    from napari_sim_uq.core.plots import save_figure

    ns = np.asarray(a["noise_sigma"], dtype=np.float64).ravel()
    rs = np.asarray(a["raw_std"], dtype=np.float64).ravel()
    fig, axes = _plain_figure(1, 1, (4.4, 3.9), left=0.17, right=0.97, bottom=0.13, top=0.92)
    ax = axes[0, 0]
    rng = np.random.default_rng(0)
    pick = rng.choice(ns.size, size=min(ns.size, _MAX_SCATTER), replace=False)
    ax.scatter(ns[pick], rs[pick], s=2, alpha=0.25, color="tab:gray", label="pixels")
    order = np.argsort(ns, kind="stable")
    bins = np.array_split(order, min(20, ns.size))
    bx = [ns[b].mean() for b in bins if b.size]
    by = [rs[b].mean() for b in bins if b.size]
    ax.plot(bx, by, "o-", ms=3, color="tab:red", label="binned mean")
    lo = float(min(ns.min(), rs.min()))
    hi = float(max(ns.max(), rs.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set_xlabel("true noise sigma (generator)")
    ax.set_ylabel("predicted raw std")
    ax.set_title(f"epoch {int(a['epoch'])}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- writing


def _warn_once(warned: set, key: str, message: str) -> None:
    if key not in warned:
        warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def write_debug_samples(
    model,
    criterion,
    batch: dict,
    out_dir: str | os.PathLike,
    *,
    epoch: int,
    supervised: bool,
    warned: set | None = None,
) -> Path:
    """Write ``out_dir/epoch_XXX/`` for ``batch`` (module docstring) and return its path.

    ``epoch`` is 1-based. ``supervised`` adds the ground-truth products (NLL maps,
    calibration against ground truth, predicted std against the true noise sigma) when the
    batch carries ground truth. A plot that fails is skipped with one warning per plot
    (``warned`` remembers what was reported across calls) and listed under
    ``"plot_errors"`` in ``uq_summary.json``; errors computing the arrays propagate.
    """
    warned = set() if warned is None else warned
    out_dir = Path(out_dir)
    epoch = int(epoch)
    a = compute_debug_arrays(model, criterion, batch, supervised=supervised)
    a["epoch"] = np.int64(epoch)
    summary = summarize_debug_arrays(a, epoch=epoch)

    name = f"epoch_{epoch:03d}"
    final = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        np.savez_compressed(tmp / "uq_uncertainty.npz", **a)
        plots = [("std_maps.png", _plot_std_maps), ("std_histograms.png", _plot_histograms)]
        plots.append(("calibration.png", _plot_calibration))
        if supervised:
            if "nll_emitter" in a or "nll_raw" in a:
                plots.append(("nll_maps.png", _plot_nll_maps))
            if "noise_sigma" in a:
                plots.append(("raw_std_vs_noise_sigma.png", _plot_noise_sigma))
        written, errors = [], {}
        for fname, fn in plots:
            try:
                fn(a, tmp / fname)
                written.append(fname)
            except Exception as err:  # a debug plot must never stop training
                errors[fname] = f"{type(err).__name__}: {err}"
                _warn_once(
                    warned,
                    fname,
                    f"debug samples: could not draw {fname} ({errors[fname]}); training goes "
                    "on (reported once)",
                )
        summary["plots"] = written
        if errors:
            summary["plot_errors"] = errors
        with open(tmp / "uq_summary.json", "w") as fh:
            json.dump(_finite_json(summary), fh, indent=2)
        if final.exists():
            old = out_dir / f".{name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _finite_json(v: Any) -> Any:
    """NaN/inf -> None (strict JSON)."""
    if isinstance(v, dict):
        return {k: _finite_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_json(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class DebugSampleWriter:
    """Writes the debug folders of one training run (used by ``train_sim_job``).

    ``dataset``: where the fixed samples come from (the first ``n_samples`` items, read
    once, at the first call); ``out_dir``: ``C/debug_samples``. :meth:`__call__` never
    raises: a failure is warned about once and returned as ``(None, message)``.
    """

    def __init__(self, dataset, out_dir: str | os.PathLike, *, n_samples: int, supervised: bool):
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.n_samples = int(n_samples)
        self.supervised = bool(supervised)
        self.warned: set[str] = set()
        self._batch: dict | None = None

    def __call__(self, model, criterion, epoch: int) -> tuple[Path | None, str]:
        try:
            if self._batch is None:
                self._batch = debug_batch(self.dataset, self.n_samples)
            path = write_debug_samples(
                model,
                criterion,
                self._batch,
                self.out_dir,
                epoch=epoch,
                supervised=self.supervised,
                warned=self.warned,
            )
        except Exception as err:  # debug output must never stop training
            msg = f"debug samples of epoch {epoch} failed ({type(err).__name__}: {err})"
            _warn_once(self.warned, "__write__", msg + "; training goes on (reported once)")
            return None, msg
        return path, f"wrote {path}"
