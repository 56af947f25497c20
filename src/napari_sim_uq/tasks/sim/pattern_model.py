r"""Light patterns from the instrument instead of the network (``--patterns estimated``).

Why
---
With the patterns ``l_i`` free, the raw frames ``y_i = down_f(B(h * (e . l_i))) + b`` do not
identify the emitter: any ``e`` and ``l_i = y_i / e`` (where the emitter is bright) explain
the frames, so self-supervised training on raw stacks alone gave an emitter worse than
widefield (issue 16). A real instrument fixes the patterns: ``l_ap(r) = 1 + m_ap cos(2 pi
k_a . r + phi_ap)`` with wave vectors ``k_a`` shared by every acquisition and phases and
modulation per frame. With the patterns known, the frames of one angle are the sample's
spectrum seen through the OTF at the frequencies ``q``, ``q - k_a`` and ``q + k_a``: the
emitter is identified on the union of the shifted OTF supports (the SIM band, about twice
the widefield one), and the network only has to learn the inverse. Outside that band (and
where the OTF is small) the data say nothing; there the network's prior decides, and its
std should say so.

What
----
- :func:`fit_instrument`: the dataset-level estimate
  (:func:`~napari_sim_uq.tasks.sim.classical.estimate.estimate_patterns_dataset`) of the
  training stacks: wave vectors and PSF width shared by all, phases and modulation per
  stack. It fails with a clear error when the stacks do not share an instrument (the
  generator's default draws a new pattern per stack; ``--fixed-instrument`` does not).
- :class:`Instrument`: those shared parameters, stored in the checkpoint
  (``config["instrument"]``) and attached to the loaded model (``model.instrument``).
- :func:`stack_patterns`: at inference, a new stack's phases and modulation with the
  instrument's wave vectors (:func:`~napari_sim_uq.tasks.sim.classical.estimate.
  estimate_phases`), as parametric patterns with their delta-method std
  (:func:`~napari_sim_uq.tasks.sim.classical.patterns.parametric_patterns`).

The network still has its pattern head (one architecture for both sources); with estimated
patterns that head is ignored in training and replaced in every prediction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError

__all__ = [
    "PATTERN_SOURCES",
    "Instrument",
    "fit_instrument",
    "stack_patterns",
]

#: Where the light patterns of the forward model come from (``SimNetConfig.patterns``).
PATTERN_SOURCES = ("network", "estimated")


@dataclass
class Instrument:
    """The illumination parameters shared by every stack of one instrument."""

    wave_vectors: np.ndarray  # (A, 2) cycles per raw pixel, (k_x, k_y)
    psf_sigma: float  # raw pixels (Gaussian PSF std of the estimate's OTF model)
    binning: int  # the pixel model: the raw pixel integrates binning x binning HR pixels
    n_phases: int
    n_stacks: int = 1  # stacks the wave vectors were estimated from

    @property
    def n_angles(self) -> int:
        return int(self.wave_vectors.shape[0])

    @property
    def periods(self) -> np.ndarray:
        return 1.0 / np.linalg.norm(self.wave_vectors, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wave_vectors_cycles_per_raw_px": np.asarray(self.wave_vectors).tolist(),
            "periods_raw_px": self.periods.tolist(),
            "psf_sigma_raw_px": float(self.psf_sigma),
            "binning": int(self.binning),
            "n_phases": int(self.n_phases),
            "n_stacks": int(self.n_stacks),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Instrument:
        try:
            k = np.asarray(d["wave_vectors_cycles_per_raw_px"], np.float64)
            inst = cls(
                wave_vectors=k,
                psf_sigma=float(d["psf_sigma_raw_px"]),
                binning=int(d["binning"]),
                n_phases=int(d["n_phases"]),
                n_stacks=int(d.get("n_stacks", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not an instrument description: {exc}") from exc
        if (
            k.ndim != 2
            or k.shape[1] != 2
            or not np.isfinite(k).all()
            or not (inst.psf_sigma > 0 and math.isfinite(inst.psf_sigma))
        ):
            raise InputError(f"not an instrument description: wave vectors {k.tolist()}")
        return inst


def fit_instrument(dataset: Any, n_angles: int, n_phases: int, binning: int):
    """``(Instrument, [PatternEstimate per item])`` from the stacks of ``dataset`` (a
    :class:`~napari_sim_uq.tasks.sim.dataset.SimStackDataset`; every item, whole frames,
    one field size). Raises :class:`InputError` with the estimator's messages when an
    angle's carrier is not found (stacks of different instruments, too few or too sparse
    stacks, weak modulation)."""
    from napari_sim_uq.tasks.sim.classical.estimate import estimate_patterns_dataset

    if len(dataset) == 0:
        raise InputError("no stacks to estimate the light patterns from")
    shapes = {tuple(s[1:]) for s in dataset.full_shapes}
    if len(shapes) > 1:
        raise InputError(
            f"estimated light patterns need training stacks of one field size, got "
            f"{sorted(shapes)}; split the data by size or use patterns='network'"
        )
    raws = [dataset.raw_frames(i) for i in range(len(dataset))]
    est = estimate_patterns_dataset(raws, n_angles, n_phases, binning=binning)
    if not bool(np.all(est.ok)):
        raise InputError(
            "the light patterns could not be estimated from the training stacks: "
            + "; ".join(est.messages)
            + ". Estimated patterns need stacks of one instrument (wave vectors fixed "
            "across stacks, e.g. 'sim-uq generate --fixed-instrument'); for other data "
            "train with patterns='network'"
        )
    stacks = [_fill_unfitted(e) for e in est.stacks]
    n_bad = sum(not bool(np.all(e.ok)) for e in stacks)
    if n_bad:
        warnings.warn(
            f"{n_bad} of {len(stacks)} training stacks have angles whose phases could not be "
            "fitted well (too little structure); their patterns are used as estimated, with "
            "an unknown fringe (modulation 0, std = the modulation) where no phase was found",
            RuntimeWarning,
            stacklevel=2,
        )
    inst = Instrument(
        wave_vectors=np.asarray(est.wave_vectors, np.float64),
        psf_sigma=float(est.psf_sigma),
        binning=int(binning),
        n_phases=int(n_phases),
        n_stacks=len(raws),
    )
    return inst, stacks


def stack_patterns(instrument: Instrument, raw: Any):
    """The :class:`~napari_sim_uq.tasks.sim.classical.estimate.PatternEstimate` of one raw
    stack ``(A*P, H, W)`` with ``instrument``'s wave vectors and PSF width (its phases and
    modulation fitted; angles whose fit is poor are flagged in ``ok``/``messages``)."""
    from napari_sim_uq.tasks.sim.classical.estimate import estimate_phases

    est = estimate_phases(
        raw,
        instrument.wave_vectors,
        instrument.psf_sigma,
        instrument.n_angles,
        instrument.n_phases,
        binning=instrument.binning,
        n_stacks=instrument.n_stacks,
    )
    return _fill_unfitted(est)


def _fill_unfitted(est):
    """``est`` with the frames whose phase or modulation could not be fitted (NaN: the
    stack has too little structure at that angle) marked ``unfitted``: an unknown fringe
    of the stack's typical depth (the other frames' modulation, else 0.5; stored as their
    ``modulation_std``) at an unknown phase, whose patterns are 1 with std depth / sqrt(2)
    (:func:`~napari_sim_uq.tasks.sim.classical.patterns.parametric_patterns`); such angles
    are flagged (``ok``, ``messages``)."""
    bad = ~(np.isfinite(est.phases) & np.isfinite(est.frame_modulation))
    if not bad.any():
        return est
    good = est.frame_modulation[~bad]
    typical = float(np.median(good)) if good.size else 0.5
    est.phases = np.where(bad, 0.0, est.phases)
    est.frame_modulation = np.where(bad, 0.0, est.frame_modulation)
    est.modulation = np.where(np.isfinite(est.modulation), est.modulation, 0.0)
    if est.phase_std is not None:
        est.phase_std = np.where(bad, 0.0, est.phase_std)
    sd_m = est.modulation_std if est.modulation_std is not None else np.zeros_like(bad, float)
    est.modulation_std = np.where(bad, typical, np.nan_to_num(sd_m))
    est.unfitted = bad if est.unfitted is None else (bad | est.unfitted)
    for a in np.flatnonzero(bad.any(axis=1)):
        if est.ok[a]:
            est.ok[a] = False
            est.messages.append(f"angle {a}: no phase could be fitted (too little structure)")
    return est


def instrument_psf(instrument: Instrument, size: int, hr_factor: int, like: Any) -> Any:
    """The instrument's PSF on the HR grid: a Gaussian of std ``psf_sigma * hr_factor`` HR
    pixels, ``size x size``, summing to 1 (the camera pixel is the forward model's binning,
    as in the estimate's OTF model), with ``like``'s dtype and device."""
    from napari_sim_uq.tasks.sim.physics import gaussian_psf

    sigma = float(instrument.psf_sigma) * int(hr_factor)
    return gaussian_psf(sigma, int(size), dtype=like.dtype, device=like.device)


def profiled_background(x: Any, y0: Any, mask: Any = None) -> Any:
    """The least-squares background per sample, ``mean(x - y0)`` over frames and pixels
    (``mask`` ``(H, W)``: only those pixels), ``(B, 1, 1, 1)``; ``y0`` is the forward model
    without background. Differentiable in ``y0``: the background is profiled out of the
    fit rather than predicted (module docstring)."""
    d = x - y0
    if mask is None:
        return d.mean(dim=(1, 2, 3), keepdim=True)
    m = mask.to(d.dtype)
    return (d * m).sum(dim=(1, 2, 3), keepdim=True) / (m.sum() * d.shape[1]).clamp_min(1)


def apply_instrument(
    out: Any,
    x: Any,
    lp: Any,
    lp_var: Any,
    psf: Any,
    hr_factor: int,
    *,
    emitter_mask: Any = None,
    mask: Any = None,
) -> Any:
    """``out`` (a :class:`~napari_sim_uq.tasks.sim.net.SimOutput`) with the instrument's
    patterns ``lp`` (and variance ``lp_var``, used where the network has a pattern variance
    head, else ``None``), its PSF ``(k, k)`` (known: no variance) and the profiled
    background of the raw stack ``x`` (``emitter_mask``: HR 0/1 field of view of the
    emitter; ``mask``: LR pixels of ``x`` to fit the background on)."""
    from napari_sim_uq.tasks.sim.physics import sim_forward

    b = out.emitter.shape[0]
    like = out.emitter
    lp = lp.to(like)
    if lp.shape[0] != b:
        lp = lp.expand(b, -1, -1, -1)
    var = None
    if lp_var is not None and out.lp_var is not None:
        var = lp_var.to(like)
        if var.shape[0] != b:
            var = var.expand(b, -1, -1, -1)
    psf = psf.to(like).expand(b, -1, -1)
    e = out.emitter if emitter_mask is None else out.emitter * emitter_mask
    y0 = sim_forward(e, lp, psf, hr_factor, 0.0)
    background = profiled_background(x.to(like), y0, mask)
    return out._replace(
        lp=lp,
        lp_var=var,
        lp_logvar=None,
        psf=psf,
        psf_var=None,
        psf_logvar=None,
        background=background,
    )


def use_estimated_patterns(out: Any, batch: dict, psf: Any, hr_factor: int) -> tuple[Any, dict]:
    """For training: ``(out, batch)`` with the batch's estimated patterns (``"lp_est"``,
    ``"lp_est_var"``, set by :meth:`~napari_sim_uq.tasks.sim.dataset.SimStackDataset.
    set_pattern_estimates`), the instrument's PSF ``psf`` and the profiled background
    (:func:`apply_instrument`), and the pattern ground truth dropped (fixed patterns have
    nothing to learn from it); both unchanged for a batch without estimated patterns."""
    if "lp_est" not in batch:
        return out, batch
    out = apply_instrument(out, batch["x"], batch["lp_est"], batch["lp_est_var"], psf, hr_factor)
    return out, {k: v for k, v in batch.items() if k != "lp_gt"}
