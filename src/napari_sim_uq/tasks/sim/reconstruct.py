"""SIM reconstruction with uncertainty from a trained checkpoint (a job, DESIGN.md 2).

``reconstruct_sim_job(data, checkpoint, ...)`` reads a raw stack (array or file, any
supported layout; time series are reconstructed per time point), normalises each stack as
in training, runs :func:`napari_sim_uq.tasks.sim.predict.predict_sim` (tiled, MC dropout),
maps intensities back to the input's units and returns a :class:`SimReconstruction`.
``write_reconstruction`` saves it as ``<name>_emitter.tif``, ``<name>_emitter_std.tif``,
``<name>_lp.tif``, ``<name>_lp_std.tif``, ``<name>_psf.tif``, ``<name>_psf_std.tif``,
``<name>_rec_std.tif`` and ``<name>_uq.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import relay
from napari_sim_uq.core.io.outputs import OutputSpec, placement

#: The SIM output table (``data.outputs``): file key, layer suffix, colormap and grid of
#: every array of a :class:`SimReconstruction`, in the order files and layers are made.
#: Means in inferno (the light patterns gray), std maps in magma (DESIGN.md 3).
SIM_OUTPUTS = (
    OutputSpec("emitter", "emitter", "inferno", "hr", visible=True),
    OutputSpec("emitter_std", "emitter std", "magma", "hr"),
    OutputSpec("lp", "light pattern", "gray", "hr", frame_axis=True),
    OutputSpec("lp_std", "light pattern std", "magma", "hr", frame_axis=True),
    OutputSpec("psf", "PSF", "inferno", "own"),
    OutputSpec("psf_std", "PSF std", "magma", "own"),
    OutputSpec("rec_std", "reconstruction std", "magma", "raw", frame_axis=True),
    # with MC dropout only: the two parts of the emitter std (total^2 = aleatoric^2 +
    # epistemic^2); absent arrays make no file and no layer
    OutputSpec("emitter_aleatoric_std", "emitter aleatoric std", "magma", "hr"),
    OutputSpec("emitter_epistemic_std", "emitter epistemic std", "magma", "hr"),
)
OUTPUTS = tuple(o.key for o in SIM_OUTPUTS)


@dataclass
class SimReconstruction:
    """Means and std maps; a leading T axis only for time series."""

    arrays: dict[str, np.ndarray]
    hr_factor: int
    time_series: bool
    metadata: dict = field(default_factory=dict)


def load_sim_model(checkpoint, device="cpu"):
    """(model in eval mode, Checkpoint) from a checkpoint path; clear errors otherwise."""
    from napari_sim_uq.tasks import load_task_model
    from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet

    def build(cfg, config):
        net_cfg = SimNetConfig.from_stored(cfg)
        n = _ensemble_members(checkpoint, config)
        if n:
            from napari_sim_uq.tasks.sim.ensemble import SimUQEnsemble

            return SimUQEnsemble(net_cfg, n)
        return SimUQNet(net_cfg)

    model, ck = load_task_model(checkpoint, "sim", build, device, full_config=True)
    if model.cfg.patterns == "estimated":
        from napari_sim_uq.tasks.sim.pattern_model import Instrument

        d = ck.config.get("instrument")
        if not d:
            raise InputError(
                f"'{checkpoint}' is a model with estimated light patterns but stores no "
                "instrument (wave vectors); the checkpoint is incomplete"
            )
        model.instrument = Instrument.from_dict(d)
    return model, ck


def _ensemble_members(checkpoint, config: dict) -> int:
    """Members of the ensemble a checkpoint's ``config`` records (0: a single network)."""
    info = config.get("ensemble")
    if not info:
        return 0
    n = info.get("members") if isinstance(info, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InputError(f"checkpoint '{checkpoint}': invalid ensemble record {info!r}")
    return n


def model_context(ck, model) -> int:
    """Field size (raw pixels on a side) that ``model`` from checkpoint ``ck`` needs for the
    results it was trained to give: the smaller side of its training fields (recorded by
    training as ``config["data"]["input_size"]``), at most the receptive-field diameter;
    for a checkpoint without that record, the receptive-field diameter."""
    diameter = 2 * int(model.receptive_radius) + 1
    size = (ck.config.get("data") or {}).get("input_size")
    try:
        trained = min(int(v) for v in size)
    except (TypeError, ValueError):
        return diameter
    return max(1, min(trained, diameter))


def reconstruct_sim_job(
    data,
    checkpoint,
    *,
    mc_samples: int = 0,
    tile: int | None = None,
    overlap: int | None = None,
    device: str = "auto",
    angles: int | None = None,
    phases: int | None = None,
    seed: int = 0,
    warn_small_input: bool = True,
):
    """Job: reconstruct ``data`` (array, ImageRecord or path) with ``checkpoint``.

    A field smaller than the model's context (:func:`model_context`) is padded and gives a
    ``SmallInputWarning`` (unless ``warn_small_input`` is False);
    ``metadata["context"]`` records it (``uq.inference``, *Small inputs*)."""
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.io.tiff_io import ImageRecord, read_image
    from napari_sim_uq.tasks.sim.calibration import (
        apply_sigma_maps,
        camera_noise,
        raw_predictive_std,
        raw_self_check,
        stored_self_check_reference,
        stored_sigma_maps,
    )
    from napari_sim_uq.tasks.sim.dataset import frames_from_array
    from napari_sim_uq.tasks.sim.predict import predict_sim

    dev = resolve_device(device)
    model, ck = load_sim_model(checkpoint, dev)
    what = "array"
    if isinstance(data, (str, os.PathLike)):
        what = f"'{data}'"
        data = read_image(data, angles=angles, phases=phases)
    if isinstance(data, ImageRecord):
        what = f"'{data.path}'"
        angles = angles or data.layout.angles
        phases = phases or data.layout.phases
        data = data.data
    frames, layout = frames_from_array(
        np.asarray(data), angles, phases, expected_frames=model.expected_frames, what=what
    )
    norm_cfg = ck.normalization or {}
    mode = norm_cfg.get("mode", "percentile")
    gt_norm = norm_cfg.get("gt_norm", "raw")
    sigma_scale = {k: float(v) for k, v in (ck.sigma_scale or {}).items()}
    maps = stored_sigma_maps(ck)
    reference = stored_self_check_reference(ck)
    try:
        camera: tuple | None = camera_noise(ck, int(model.hr_factor))
    except InputError as err:  # the reconstruction does not need it; only the self-check
        camera, camera_error = None, str(err)
    context = model_context(ck, model)
    per_t: list[dict[str, np.ndarray]] = []
    checks: list[dict] = []
    n_t = frames.shape[0]
    for t in range(n_t):
        norm = Normalization(mode=mode).fit(frames[t], what=what)
        x = norm.apply(frames[t]).astype(np.float32)
        job = predict_sim(
            model,
            x,
            mc_samples=mc_samples,
            tile=tile,
            overlap=overlap,
            device=str(dev),
            sigma_scale=sigma_scale,
            seed=seed,
            context=context,
            warn_small_input=warn_small_input,
        )
        pred = yield from relay(job, f"time point {t + 1}/{n_t}: ")
        apply_sigma_maps(pred, maps)
        if camera is None:
            checks.append(
                {
                    "raw_zms": None,
                    "raw_cov95": None,
                    "raw_rho": None,
                    "ok": True,
                    "message": f"self-check not available: {camera_error}",
                }
            )
        else:
            # raw-domain self-check (no ground truth): the model's raw std was already scaled
            # by sigma_scale["raw"] inside rec_std; the camera part is scaled here
            raw_std = sigma_scale.get("raw", 1.0) * raw_predictive_std(
                pred.rec,
                None if pred.rec_std is None else pred.rec_std / sigma_scale.get("raw", 1.0),
                camera[:3],
            )
            checks.append(raw_self_check(x, pred.rec, raw_std, reference))
        # back to the input's intensity units: the emitter lives in the raw data's scale
        # (gt_norm "raw"), patterns and PSF are unitless, rec is a raw-frame prediction
        e_scale = norm.scale if gt_norm == "raw" else 1.0
        parts = {}
        sampled = bool(pred.meta.get("mc_samples_drawn"))  # MC dropout or an ensemble
        if sampled and pred.emitter_epistemic_std is not None:
            parts = {
                "emitter_aleatoric_std": _std(pred.emitter_aleatoric_std, pred.emitter) * e_scale,
                "emitter_epistemic_std": pred.emitter_epistemic_std * e_scale,
            }
        per_t.append(
            {
                **parts,
                "emitter": pred.emitter * e_scale,
                "emitter_std": _std(pred.emitter_std, pred.emitter) * e_scale,
                "lp": pred.lp,
                "lp_std": _std(pred.lp_std, pred.lp),
                "psf": pred.psf,
                "psf_std": _std(pred.psf_std, pred.psf),
                "rec": norm.invert(pred.rec),
                "rec_std": norm.invert_std(pred.rec_std),
            }
        )
    arrays = {
        k: (np.stack([p[k] for p in per_t]) if n_t > 1 else per_t[0][k]).astype(np.float32)
        for k in per_t[0]
    }
    meta = {
        "model_type": ck.model_type,
        "config_hash": ck.config_hash,
        "checkpoint": str(checkpoint),
        "package_version": ck.package_version,
        "hr_factor": model.hr_factor,
        "layout": layout.to_dict(),
        "mc_samples": int(mc_samples),
        "ensemble_members": pred.meta.get("ensemble_members", 1),
        "tile": tile,
        "overlap": overlap,
        "tiling": {
            k: pred.meta.get(k)
            for k in ("tile", "overlap", "blend_margin", "n_tiles", "tiling_exact")
        },
        "sigma_scale": sigma_scale,
        "sigma_map": {q: m.to_dict()["kind"] for q, m in maps.items()},
        "self_check": _combine_checks(checks),
        # small fields (uq.inference, "Small inputs"): limited is True when the field was
        # smaller than the context the model was trained with
        "context": pred.meta["context"],
        "normalization": {
            "mode": mode,
            "gt_norm": gt_norm,
            "emitter_units": "input intensity" if gt_norm == "raw" else f"normalised ({gt_norm})",
        },
        "std_definition": "sqrt(aleatoric + epistemic variance)"
        if mc_samples or getattr(model, "n_members", 1) > 1
        else "sqrt(aleatoric variance)",
    }
    return SimReconstruction(arrays, model.hr_factor, n_t > 1 and layout.kind == "sim_t", meta)


def _combine_checks(checks: list[dict]) -> dict:
    """One self-check for all time points: the worst one's message, every ZMS."""
    if len(checks) == 1:
        return checks[0]
    bad = [c for c in checks if not c["ok"]]
    worst = max(checks, key=lambda c: abs(np.log(c["raw_zms"])) if c["raw_zms"] else np.inf)
    return {
        **worst,
        "ok": not bad,
        "per_time_point": [c["raw_zms"] for c in checks],
        "message": (f"{len(bad)} of {len(checks)} time points: " if bad else "") + worst["message"],
    }


def _std(std, like):
    return np.zeros_like(like) if std is None else std


def write_reconstruction(
    rec: SimReconstruction,
    out_dir,
    name: str,
    *,
    scale_lr=(1.0, 1.0),
    translate_lr=(0.0, 0.0),
    overwrite: bool = False,
) -> list[Path]:
    """Write the outputs of one input as TIFFs (+ ``<name>_uq.json``) into ``out_dir``."""
    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder '{out_dir}' is a file")
    keys = [k for k in OUTPUTS if k in rec.arrays]
    targets = {k: out_dir / f"{name}_{k}.tif" for k in keys}
    targets["json"] = out_dir / f"{name}_uq.json"
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"not overwriting existing results: {', '.join(existing)} (use --overwrite)"
        )
    lead = {"lead_scale": (1.0,), "lead_translate": (0.0,), "lead_labels": ("t",)}
    written = []
    md = {"sim_uq": {"reconstruction": rec.metadata}}
    for spec in SIM_OUTPUTS:
        if spec.key not in rec.arrays:
            continue
        arr = rec.arrays[spec.key]
        scale, translate, labels = placement(
            spec,
            scale_lr,
            translate_lr,
            hr_factor=rec.hr_factor,
            **(lead if rec.time_series else {}),
        )
        if arr.ndim != len(scale):
            raise InputError(f"internal: {spec.key} has shape {arr.shape}, expected {len(scale)}D")
        written.append(
            write_image(
                targets[spec.key],
                arr,
                name=f"{name} {spec.suffix}",
                scale=scale,
                translate=translate,
                axis_labels=labels,
                metadata=md,
                overwrite=overwrite,
                display={"colormap": spec.colormap},
            )
        )
    summary = {
        **rec.metadata,
        "outputs": {k: str(targets[k].name) for k in keys},
        "summary": {
            k: {
                "mean": float(np.mean(rec.arrays[k])),
                "p95": float(np.percentile(rec.arrays[k], 95)),
            }
            for k in keys
            if k.endswith("std")
        },
    }
    written.append(
        atomic_write(
            targets["json"],
            lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)),
            overwrite=overwrite,
        )
    )
    return written
