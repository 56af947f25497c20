"""Generator settings that match a user's raw SIM stack ("make training data like mine").

From one raw stack: the illumination (period, orientation, modulation) and the PSF width
come from :func:`~napari_sim_uq.tasks.sim.classical.estimate.estimate_patterns`; the
background is the widefield image's 2nd percentile; the per-pixel noise variance is the
flat floor of the frames' power spectrum (divided by the window's energy), and the read
noise what remains of it after the shot noise of the mean signal (counts = photons, gain 1);
the peak photons are found by simulating the matched optics once with unit photons and
scaling its widefield 99.9th percentile to the stack's. The result is a
:class:`~napari_sim_uq.tasks.sim.synth.SynthConfig` with ``fixed_instrument`` on (the
optics exactly as estimated) and ranges around the intensity estimates, plus a report of
what was estimated and how well.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.classical.estimate import (
    PatternEstimate,
    as_angle_phase_stack,
    estimate_patterns,
)

__all__ = ["match_synth_config"]

#: relative spread of the photon, background and read-noise ranges around the estimates
INTENSITY_SPREAD = 0.3


def _noise_variance(x: np.ndarray, est: PatternEstimate) -> float:
    """Per-pixel white-noise variance of the frames from their spectrum's floor."""
    import torch

    from napari_sim_uq.tasks.sim.classical.estimate import _Frames

    fr = _Frames(torch.as_tensor(x), 0.15)
    from napari_sim_uq.tasks.sim.classical.otf import apodized_window

    win = apodized_window(fr.shape, 0.15)
    return float(fr.noise_frame / float((win**2).sum()))


def match_synth_config(
    raw: Any,
    n_angles: int = 3,
    n_phases: int = 3,
    *,
    estimate: PatternEstimate | None = None,
    base: Any = None,
    lr_size: tuple[int, int] | None = None,
    hr_factor: int = 2,
    **estimate_options: Any,
) -> tuple[Any, dict]:
    """A generator config whose optics and intensities match ``raw``, and a report.

    ``estimate``: the stack's illumination (estimated when ``None``; failed angles raise
    an :class:`InputError` that says why). ``base``: a :class:`SynthConfig` whose other
    fields (structures, noise regions ...) are kept; ``lr_size``: the generated frames'
    size (default: the stack's)."""
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

    x = as_angle_phase_stack(raw, n_angles, n_phases)
    a_n, p_n, h, w = x.shape
    if estimate is None:
        estimate = estimate_patterns(x, a_n, p_n, **estimate_options)
    estimate.require_ok()
    frames = x.numpy()
    from scipy import ndimage

    wf = frames.mean(axis=(0, 1))
    # smoothed first: the percentile of a noisy image lies below its background
    background = float(np.percentile(ndimage.gaussian_filter(wf, 2.0), 2))
    noise_var = _noise_variance(frames, estimate)
    shot = max(float(frames.mean()), 0.0)  # Poisson variance of the mean count (gain 1)
    read = math.sqrt(max(noise_var - shot, 0.25))
    periods = estimate.periods
    angles = np.mod(estimate.angles, math.pi)
    spacing = math.pi / a_n
    # the generator's orientations are offset + pi a / A: the offset that fits best
    offs = np.mod(angles - spacing * np.arange(a_n), math.pi)
    offset = float(np.angle(np.mean(np.exp(2j * offs))) / 2) % math.pi
    spread_deg = float(np.degrees(np.max(np.abs(np.angle(np.exp(2j * (offs - offset))) / 2))))
    d = (base or SynthConfig()).to_dict()
    d.update(
        lr_size=list(lr_size or (h, w)),
        hr_factor=int(hr_factor),
        n_angles=a_n,
        n_phases=p_n,
        period_lr=[float(periods.mean())] * 2,
        modulation=[float(min(1.0, estimate.modulation.mean()))] * 2,
        angle_offset=[offset, offset],
        psf_sigma_lr=[float(estimate.psf_sigma)] * 2,
        background=[background * (1 - INTENSITY_SPREAD), background * (1 + INTENSITY_SPREAD)],
        read_noise=[read * (1 - INTENSITY_SPREAD), read * (1 + INTENSITY_SPREAD)],
        gain=1.0,
        fixed_instrument=True,
    )
    # photons: simulate the matched optics with unit photons, compare the bright end
    probe = dict(d, photons=[1.0, 1.0], background=[0.0, 0.0], read_noise=[1e-6, 1e-6])
    probe["lr_size"] = [min(h, 96), min(w, 96)]
    cfg_probe = SynthConfig.from_dict(probe)
    unit = np.median(
        [np.percentile(generate_sample(cfg_probe, 90210, i).clean.mean(0), 99.9) for i in range(3)]
    )
    bright = float(np.percentile(wf, 99.9)) - background
    if unit <= 0 or bright <= 0:
        raise InputError("the stack has no signal above its background to match photons to")
    photons = bright / float(unit)
    d["photons"] = [photons * (1 - INTENSITY_SPREAD), photons * (1 + INTENSITY_SPREAD)]
    cfg = SynthConfig.from_dict(d)
    report = {
        "periods_raw_px": periods.tolist(),
        "angles_deg": np.degrees(angles).tolist(),
        "angle_offset_rad": offset,
        "angle_spacing_error_deg": spread_deg,
        "modulation": estimate.modulation.tolist(),
        "psf_sigma_raw_px": float(estimate.psf_sigma),
        "background": background,
        "noise_variance_per_pixel": noise_var,
        "read_noise": read,
        "photons": photons,
        "pattern_confidence": estimate.confidence.tolist(),
        "notes": [
            "photons assume the generator's structures (filaments, rings, beads): for other "
            "samples compare the generated stacks with yours by eye",
            "read noise assumes gain 1 (counts = photons)",
        ],
    }
    if spread_deg > 2:
        report["notes"].append(
            f"the angles are not {180 / a_n:g} degrees apart (up to {spread_deg:.1f} degrees "
            "off): the generator spaces them evenly"
        )
    return cfg, report
