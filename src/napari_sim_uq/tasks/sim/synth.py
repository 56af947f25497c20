"""Synthetic heteroscedastic SIM data with known ground truth and known noise.

One sample is made in four steps:

1. **Structures** (filaments, rings, beads; the mix is configurable) are drawn as points on
   a fine grid (``fine_factor`` x the HR grid), blurred to their line width and
   area-averaged down to the HR grid (``lr_size * hr_factor``), then scaled to the
   sample's photon level: the ground-truth emitter ``e``.
2. **Optics**: A x P illumination patterns with a random angle offset, per-angle phase
   offsets with jitter and a random modulation depth; a Gaussian PSF with a random sigma
   (with ``fixed_instrument``, period, orientation, modulation and PSF width are drawn once
   for the dataset, :func:`instrument_parameters`, and only the phases vary per stack);
   the forward model ``y_i = down_f(B(h * (e . l_i))) + b`` (``napari_sim_uq.tasks.sim.physics``).
3. **Noise level map**: a smooth random map of the camera read-noise sigma (lognormal
   field with a given range), optionally raised inside random high-noise regions (a mask).
4. **Camera noise**: Poisson shot noise on ``y`` plus Gaussian read noise with that map:
   ``x = Poisson(gain * y) / gain + N(0, sigma_read^2)``, so the per-pixel noise standard
   deviation is ``sqrt(y / gain + sigma_read^2)`` (saved as ``noise_sigma``).

Every random number of sample ``i`` comes from ``SeedSequence([seed, i])``, so a dataset is
the same whatever the number of worker processes, and sample ``i`` can be regenerated
alone. Noise has its own stream (``noise_seed``) so the clean data can be held fixed while
the noise is redrawn.

**Reproducible across machines.** The clean data pass through FFTs whose last bits depend
on the machine (CPU instruction set, thread count, the FFT library of the torch build). A
Poisson sampler such as NumPy's turns a last-bit change of its rate into a different draw
(1.6 % of the pixels change for a relative change of 1e-6 of the rate), so the same seed gave
visibly different stacks on two machines. Two rules make the data the same everywhere up to
rounding: the forward model is computed in float64 (rate errors ~1e-15 relative instead of
~1e-6), and the shot noise is drawn by inversion, ``k = F^-1(u; rate)`` with ``F`` the
Poisson CDF and ``u`` a uniform draw that does not depend on the rate
(:func:`poisson_by_inversion`). ``k`` is then a step function of the rate that changes only
where the rate crosses a CDF step, with probability ~ ``pmf * |d rate|`` per pixel
(~1e-13 per pixel for float64 rounding; measured: 27 of 82,944 pixels for a 1e-6 relative
change, 0 for 1e-12). Stored arrays are float32.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_sim_uq.core.config import JsonConfig, option
from napari_sim_uq.core.data.noise import poisson_by_inversion
from napari_sim_uq.core.data.structures import render_structures as _render_structures
from napari_sim_uq.core.errors import InputError

Range = tuple[float, float]

#: PSF shapes of the generator: ``"gaussian"`` (the default) or the ideal widefield Airy
#: PSF of the same best-fitting Gaussian sigma (:func:`generator_psf`).
PSF_MODELS = ("gaussian", "airy")


@dataclass
class SynthConfig(JsonConfig):
    """Parameters of the generator (ranges are sampled uniformly per sample)."""

    _what = "generator parameters"

    lr_size: tuple[int, int] = option(
        (80, 80), help="raw frame size in pixels", minimum=8, nargs="+", metavar=("H", "W")
    )
    hr_factor: int = option(
        2,
        help="HR grid is this many times finer (the models' and the bundled model's "
        "default is 2; CPU cost and disk use grow ~f^2; the reference set-up used 6)",
        minimum=1,
    )
    n_angles: int = option(3, help="pattern angles", minimum=1, flag="--angles")
    n_phases: int = option(3, help="phases per angle", minimum=1, flag="--phases")
    # illumination
    period_lr: Range = option(
        (2.6, 3.4), help="pattern period range in raw pixels", minimum=0.0, flag="--period"
    )
    modulation: Range = option(
        (0.6, 0.9), help="pattern modulation depth range", minimum=0.0, maximum=1.0
    )
    angle_offset: Range = (0.0, math.pi)  # rotation of the first angle (radians)
    phase_jitter: float = 0.05  # std of the per-frame phase error (radians)
    # optics
    psf_sigma_lr: Range = option(
        (0.9, 1.3),
        help="Gaussian PSF sigma range in raw pixels",
        minimum=0.0,
        flag="--psf-sigma",
    )
    psf_model: str = option(
        "gaussian",
        help="PSF shape: a Gaussian, or the ideal widefield Airy PSF (sharp OTF cut-off, "
        "dark rings) whose best-fitting Gaussian has the drawn sigma (for domain-shift tests)",
        choices=PSF_MODELS,
    )
    # intensities
    photons: Range = option((100.0, 500.0), help="peak photons per frame range", minimum=0.0)
    background: Range = option((5.0, 20.0), help="background photons per pixel range", minimum=0.0)
    gain: float = 1.0  # camera counts per photon
    # noise map (read-noise sigma, in counts)
    read_noise: Range = option(
        (1.0, 6.0), help="range of the smooth read-noise sigma map (counts)", minimum=0.0
    )
    noise_map_scale_lr: float = 12.0  # correlation length of the map (LR pixels)
    high_noise_regions: int = option(
        2,
        help="number of high-noise regions in the noise map (0: none)",
        minimum=0,
        flag="--noise-regions",
    )
    high_noise_factor: float = option(
        3.0,
        help="read-noise multiplier inside high-noise regions",
        minimum=0.0,
        flag="--noise-factor",
    )
    # structures
    n_filaments: tuple[int, int] = (4, 10)
    n_rings: tuple[int, int] = (1, 4)
    n_beads: tuple[int, int] = (5, 25)
    line_width_hr: float = option(
        0.8,
        help="Gaussian sigma of filaments and rings in HR pixels (e.g. 0.3 for sub-pixel "
        "thin structures)",
        minimum=0.0,
        flag="--line-width",
    )
    fine_factor: int = 2
    # instrument
    fixed_instrument: bool = option(
        False,
        help="one instrument for the whole dataset: the pattern period, orientation and "
        "modulation and the PSF width are drawn once (from --instrument-seed) within their "
        "ranges, and only the phases (and the sample, photons, noise) vary per stack, as on "
        "a real microscope",
    )
    instrument_seed: int = option(
        0,
        help="seed of the instrument drawn by --fixed-instrument (the same for every split "
        "of the dataset)",
        minimum=0,
    )

    def __post_init__(self) -> None:
        self.lr_size = _pair(self.lr_size)
        self.validate()

    @property
    def hr_size(self) -> tuple[int, int]:
        return (self.lr_size[0] * self.hr_factor, self.lr_size[1] * self.hr_factor)

    @property
    def n_frames(self) -> int:
        return self.n_angles * self.n_phases

    def validate(self) -> None:
        def positive_int(name, v, minimum=1):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")

        for i, s in enumerate(self.lr_size):
            positive_int(f"lr_size[{i}]", s, 8)
        positive_int("hr_factor", self.hr_factor)
        positive_int("n_angles", self.n_angles)
        positive_int("n_phases", self.n_phases)
        positive_int("fine_factor", self.fine_factor)
        for name in ("period_lr", "psf_sigma_lr", "photons", "read_noise"):
            lo, hi = _range(self, name)
            if lo <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        lo, hi = _range(self, "modulation")
        if lo < 0 or hi > 1:
            raise InputError(f"modulation must lie in [0, 1], got {self.modulation!r}")
        if _range(self, "background")[0] < 0:
            raise InputError(f"background must be >= 0, got {self.background!r}")
        _range(self, "angle_offset")
        for name in ("n_filaments", "n_rings", "n_beads"):
            lo, hi = _range(self, name)
            if lo < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if sum(_range(self, n)[1] for n in ("n_filaments", "n_rings", "n_beads")) <= 0:
            raise InputError("at least one of n_filaments, n_rings, n_beads must be > 0")
        for name in ("gain", "noise_map_scale_lr", "line_width_hr", "high_noise_factor"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.psf_model not in PSF_MODELS:
            raise InputError(f"psf_model must be one of {list(PSF_MODELS)}, got {self.psf_model!r}")
        if (
            isinstance(self.instrument_seed, bool)
            or not isinstance(self.instrument_seed, (int, np.integer))
            or self.instrument_seed < 0
        ):
            raise InputError(
                f"instrument_seed must be an integer >= 0, got {self.instrument_seed!r}"
            )
        if self.phase_jitter < 0 or self.high_noise_regions < 0:
            raise InputError("phase_jitter and high_noise_regions must be >= 0")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise InputError(f"lr_size must be one or two integers, got {v!r}")
    return v


def _range(cfg: SynthConfig, name: str) -> tuple[float, float]:
    v = getattr(cfg, name)
    try:
        lo, hi = (float(v[0]), float(v[1]))
    except (TypeError, IndexError, ValueError):
        raise InputError(f"{name} must be a (low, high) pair, got {v!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise InputError(f"{name} must be a (low, high) pair with low <= high, got {v!r}")
    return lo, hi


# --------------------------------------------------------------------------- structures


def render_structures(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Filaments, rings and beads on the HR grid, float32, maximum 1
    (:func:`napari_sim_uq.core.data.structures.render_structures` with this config)."""
    return _render_structures(
        cfg.hr_size,
        cfg.fine_factor,
        cfg.n_filaments,
        cfg.n_rings,
        cfg.n_beads,
        cfg.line_width_hr,
        rng,
    )


def smooth_noise_map(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Read-noise sigma map (LR grid) and the boolean mask of high-noise regions."""
    from scipy import ndimage

    h, w = cfg.lr_size
    lo, hi = cfg.read_noise
    field_ = ndimage.gaussian_filter(rng.normal(size=(h, w)), cfg.noise_map_scale_lr, mode="wrap")
    span = field_.max() - field_.min()
    u = (field_ - field_.min()) / span if span > 0 else np.zeros_like(field_)
    sigma = lo * (hi / lo) ** u  # log-uniform between lo and hi
    mask = np.zeros((h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(cfg.high_noise_regions):
        cy, cx = rng.uniform((0, 0), (h, w))
        ry, rx = rng.uniform(0.08, 0.2, 2) * np.array([h, w])
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    sigma = np.where(mask, sigma * cfg.high_noise_factor, sigma)
    return sigma.astype(np.float32), mask


# --------------------------------------------------------------------------- samples


@dataclass
class SimSampleData:
    """One generated sample: clean and noisy raw data, ground truth and parameters."""

    raw: np.ndarray  # (A*P, H, W) noisy frames, float32 counts
    clean: np.ndarray  # (A*P, H, W) noise-free forward model
    emitter: np.ndarray  # (fH, fW) ground-truth emitter (photons)
    patterns: np.ndarray  # (A*P, fH, fW) illumination patterns
    psf: np.ndarray  # (k, k) PSF on the HR grid (sums to 1)
    noise_sigma: np.ndarray  # (A*P, H, W) per-pixel noise std of `raw`
    read_sigma: np.ndarray  # (H, W) read-noise sigma map
    mask: np.ndarray  # (H, W) high-noise regions
    params: dict = field(default_factory=dict)

    def meta_arrays(self) -> dict:
        p = self.params
        return {
            "noise_sigma": self.noise_sigma,
            "read_sigma": self.read_sigma,
            "mask": self.mask,
            "psf": self.psf,
            "psf_sigma": np.float32(p["psf_sigma_hr"]),
            "psf_sigma_lr": np.float32(p["psf_sigma_lr"]),
            "wave_vectors": np.asarray(p["wave_vectors"], np.float32),
            "phases": np.asarray(p["phases"], np.float32),
            "modulation": np.float32(p["modulation"]),
            "photons": np.float32(p["photons"]),
            "background": np.float32(p["background"]),
            "gain": np.float32(p["gain"]),
            "hr_factor": np.int32(p["hr_factor"]),
            "seed": np.int64(p["seed"]),
            "index": np.int64(p["index"]),
        }


def shifted_config(cfg: SynthConfig) -> SynthConfig:
    """``cfg`` with other optics and structures, for domain-shift tests: the ideal Airy PSF
    instead of a Gaussian and sub-pixel thin filaments and rings (line width 0.3 HR
    pixels instead of 0.8); everything else (sizes, photons, patterns, noise) unchanged."""
    d = cfg.to_dict()
    d.update(psf_model="airy", line_width_hr=0.3)
    return SynthConfig.from_dict(d)


def generator_psf(model: str, sigma_hr: float, hr_size: tuple[int, int], **kw):
    """The generator's PSF on the HR grid: a Gaussian of std ``sigma_hr`` (HR pixels), or
    (``model="airy"``) the in-focus widefield Airy PSF whose best-fitting Gaussian has that
    std, ``sigma = 0.21 lambda / NA`` (:func:`~napari_sim_uq.tasks.sim.physics.psf.
    gaussian_sigma_from_na`), i.e. ``lambda / NA = sigma_hr / 0.21`` HR pixels: an ideal
    OTF with a sharp cut-off at ``2 NA / lambda`` and dark rings, which the Gaussian PSF the
    models learn cannot represent. The Airy kernel covers 4 dark rings, cut to the largest
    odd size that fits the HR grid."""
    from napari_sim_uq.tasks.sim import physics

    if model == "gaussian":
        return physics.gaussian_psf(sigma_hr, **kw)
    if model != "airy":
        raise InputError(f"psf_model must be one of {list(PSF_MODELS)}, got {model!r}")
    wavelength = sigma_hr / 0.21  # with na = 1 and pixel_size = 1
    r0 = physics.psf.airy_first_zero(1.0, wavelength, 1.0)
    fit = min(hr_size) - (1 - min(hr_size) % 2)  # largest odd size <= the grid
    size = max(3, min(2 * math.ceil(4 * r0) + 1, fit))
    return physics.psf.airy_psf(1.0, wavelength, 1.0, size, **kw)


def instrument_parameters(cfg: SynthConfig) -> tuple[float, float, float, float]:
    """``(period_lr, modulation, angle_offset, psf_sigma_lr)`` of the instrument that
    ``cfg.fixed_instrument`` uses for every stack: drawn within the ranges from
    ``SeedSequence([instrument_seed, 7])``, independent of the dataset and split seeds."""
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.instrument_seed), 7]))
    return (
        float(rng.uniform(*cfg.period_lr)),
        float(rng.uniform(*cfg.modulation)),
        float(rng.uniform(*cfg.angle_offset)),
        float(rng.uniform(*cfg.psf_sigma_lr)),
    )


def _rngs(seed: int, index: int, noise_seed: int | None):
    content = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    if noise_seed is None:
        noise = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    else:
        noise = np.random.default_rng(np.random.SeedSequence([int(noise_seed), int(index), 2]))
    return content, noise


def add_camera_noise(
    clean: np.ndarray, read_sigma: np.ndarray, gain: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson-Gaussian noise; returns (noisy, per-pixel noise std).

    Pass ``clean`` in float64 (as :func:`generate_sample` does) for draws that are the same
    on every machine; see :func:`poisson_by_inversion`."""
    expected = np.clip(clean.astype(np.float64), 0, None)
    shot = poisson_by_inversion(expected * gain, rng) / gain
    read = rng.normal(size=clean.shape) * read_sigma
    noisy = (shot + read).astype(np.float32)
    sigma = np.sqrt(expected / gain + read_sigma.astype(np.float64) ** 2).astype(np.float32)
    return noisy, sigma


def generate_sample(
    cfg: SynthConfig, seed: int, index: int = 0, noise_seed: int | None = None, device: str = "cpu"
) -> SimSampleData:
    """Generate sample ``index`` of the dataset with ``seed`` (deterministic)."""
    import torch

    from napari_sim_uq.tasks.sim import physics

    rng, noise_rng = _rngs(seed, index, noise_seed)
    f = cfg.hr_factor
    A, P = cfg.n_angles, cfg.n_phases
    structure = render_structures(cfg, rng)
    photons = rng.uniform(*cfg.photons)
    background = rng.uniform(*cfg.background)
    period_lr = rng.uniform(*cfg.period_lr)
    modulation = rng.uniform(*cfg.modulation)
    angle_offset = rng.uniform(*cfg.angle_offset)
    psf_sigma_lr = rng.uniform(*cfg.psf_sigma_lr)
    if cfg.fixed_instrument:  # drawn above all the same: the other draws stay as they were
        period_lr, modulation, angle_offset, psf_sigma_lr = instrument_parameters(cfg)
    base_phase = rng.uniform(0, 2 * np.pi, size=A)
    phases = (
        (
            base_phase[:, None]
            + 2 * np.pi * np.arange(P)[None, :] / P
            + rng.normal(0, cfg.phase_jitter, size=(A, P))
        )
        if cfg.phase_jitter
        else (base_phase[:, None] + 2 * np.pi * np.arange(P)[None, :] / P)
    )
    read_sigma, mask = smooth_noise_map(cfg, rng)

    dev = torch.device(device)
    # float64 throughout the forward model: the rates of the Poisson draws must not depend
    # on the machine's float32 FFT rounding (module docstring)
    f64 = torch.float64
    period_hr = period_lr * f
    kvec = physics.wave_vectors(A, period_hr, angle_offset=angle_offset)
    # one pattern per (angle, phase) with its own (jittered) phase: batch over phases of
    # single-phase patterns, (P, A, H, W) -> angle-major (A*P, H, W)
    patterns = physics.illumination_patterns(
        cfg.hr_size,
        A,
        1,
        period=period_hr,
        modulation=modulation,
        angle_offset=angle_offset,
        phase_offsets=torch.as_tensor(phases.T.copy()),
        device=dev,
        dtype=f64,
    )
    patterns = patterns.transpose(0, 1).reshape(A * P, *cfg.hr_size)
    psf_sigma_hr = psf_sigma_lr * f
    psf = generator_psf(cfg.psf_model, psf_sigma_hr, cfg.hr_size, device=dev, dtype=f64)
    emitter = torch.as_tensor(structure.astype(np.float64) * photons, device=dev)
    clean = physics.sim_forward(emitter, patterns, psf, f, background=background)
    clean64 = clean.cpu().numpy()
    raw, sigma = add_camera_noise(clean64, read_sigma, cfg.gain, noise_rng)
    clean_np = clean64.astype(np.float32)
    params = {
        "seed": int(seed),
        "index": int(index),
        "hr_factor": f,
        "photons": float(photons),
        "background": float(background),
        "gain": float(cfg.gain),
        "period_lr": float(period_lr),
        "modulation": float(modulation),
        "angle_offset": float(angle_offset),
        "psf_sigma_lr": float(psf_sigma_lr),
        "psf_sigma_hr": float(psf_sigma_hr),
        "psf_model": cfg.psf_model,
        "wave_vectors": kvec.cpu().numpy().tolist(),
        "phases": phases.tolist(),
    }
    return SimSampleData(
        raw=raw,
        clean=clean_np,
        emitter=emitter.cpu().numpy().astype(np.float32),
        patterns=patterns.cpu().numpy().astype(np.float32),
        psf=psf.cpu().numpy().astype(np.float32),
        noise_sigma=sigma,
        read_sigma=read_sigma,
        mask=mask,
        params=params,
    )


# --------------------------------------------------------------------------- datasets

_SAMPLE_RE = re.compile(r"^sample_\d{5}(_lp)?\.(tif|npz)$")


def split_dirs(out_dir: Path, split: str) -> dict[str, Path]:
    return {
        "raw": out_dir / split,
        "gt": out_dir / f"{split}_gt",
        "meta": out_dir / f"{split}_meta",
    }


def sample_name(index: int) -> str:
    return f"sample_{index:05d}"


def prepare_out_dir(out_dir: Path, split: str, overwrite: bool) -> dict[str, Path]:
    """Check ``out_dir`` and make the split folders; never deletes anything unasked."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", split):
        raise InputError(f"--split must be a simple folder name like 'train', got {split!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder '{out_dir}' is a file; choose a folder")
    dirs = split_dirs(out_dir, split)
    for d in dirs.values():
        if d.exists() and not d.is_dir():
            raise InputError(f"'{d}' is a file; choose another --out-dir or --split")
        if d.is_dir() and any(d.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"'{d}' is not empty; not overwriting an existing dataset (use "
                    "--overwrite to replace it, or another --out-dir/--split)"
                )
            for p in d.iterdir():  # remove only files this generator writes
                if p.is_file() and _SAMPLE_RE.match(p.name):
                    p.unlink()
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def write_sample(sample: SimSampleData, dirs: dict[str, Path], index: int) -> None:
    from napari_sim_uq.core.io.outputs import hr_scale_translate
    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image

    name = sample_name(index)
    f = sample.params["hr_factor"]
    sc, tr = hr_scale_translate((1.0, 1.0), (0.0, 0.0), f)
    md = {
        "sim_uq": {
            "synthetic": {
                k: v for k, v in sample.params.items() if k not in ("wave_vectors", "phases")
            }
        }
    }
    write_image(dirs["raw"] / f"{name}.tif", sample.raw, name=name, metadata=md, overwrite=True)
    write_image(
        dirs["gt"] / f"{name}.tif",
        sample.emitter,
        name=f"{name} GT emitter",
        scale=sc,
        translate=tr,
        metadata=md,
        overwrite=True,
    )
    write_image(
        dirs["gt"] / f"{name}_lp.tif",
        sample.patterns,
        name=f"{name} GT light pattern",
        scale=(1.0, *sc),
        translate=(0.0, *tr),
        metadata=md,
        overwrite=True,
    )
    meta = sample.meta_arrays()

    def write_meta(tmp: str) -> None:
        # an open file: given a name, numpy would append ".npz" to the temporary one
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **meta)

    atomic_write(dirs["meta"] / f"{name}.npz", write_meta, overwrite=True)


def _worker(args) -> int:
    cfg_dict, seed, index, dirs = args
    import torch

    torch.set_num_threads(1)
    cfg = SynthConfig.from_dict(cfg_dict)
    write_sample(generate_sample(cfg, seed, index), {k: Path(v) for k, v in dirs.items()}, index)
    return index


#: seed offset between the splits of one dataset (split i uses ``seed + SPLIT_SEED_STRIDE*i``),
#: so that train, val and test never share a sample
SPLIT_SEED_STRIDE = 1000


def generate_splits(
    out_dir: str | os.PathLike,
    counts: dict[str, int],
    cfg: SynthConfig | None = None,
    *,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
) -> Iterator:
    """Job: several splits (``{"train": 64, "val": 8}``) with one config, as
    :func:`generate_dataset` per split with seed ``seed + SPLIT_SEED_STRIDE * i`` for the
    i-th split. Splits with count 0 are skipped. Yields ``"generate"`` events over all
    samples (message ``"<split> k/n"``) and returns ``{split: summary}``."""
    from napari_sim_uq.core.events import Event

    todo = [(i, split, n) for i, (split, n) in enumerate(counts.items()) if n]
    if not todo:
        raise InputError("nothing to generate: every split has 0 samples")
    total = sum(n for _, _, n in todo)
    done, results = 0, {}
    for i, split, n in todo:
        job = generate_dataset(
            out_dir,
            n,
            cfg,
            seed=seed + SPLIT_SEED_STRIDE * i,
            split=split,
            workers=workers,
            overwrite=overwrite,
        )
        try:
            while True:
                try:
                    ev = next(job)
                except StopIteration as stop:
                    results[split] = stop.value
                    break
                yield Event("generate", done + ev.step, total, message=f"{split} {ev.step}/{n}")
        finally:
            job.close()  # on stop: the split's process pool shuts down
        done += n
    return results


def generate_dataset(
    out_dir: str | os.PathLike,
    n_samples: int,
    cfg: SynthConfig | None = None,
    *,
    seed: int = 0,
    split: str = "train",
    workers: int | None = None,
    overwrite: bool = False,
) -> Iterator:
    """Job: write ``n_samples`` samples to ``out_dir`` (yields progress, returns a summary).

    Layout: ``{split}/sample_XXXXX.tif`` raw (A*P, H, W) float32 stacks,
    ``{split}_gt/sample_XXXXX.tif`` HR emitter, ``{split}_gt/sample_XXXXX_lp.tif`` patterns
    (A*P, fH, fW), ``{split}_meta/sample_XXXXX.npz`` noise sigma map, mask and the optical
    parameters, and ``dataset.json`` with all parameters (one entry per split).
    """
    from napari_sim_uq.core.events import Event

    cfg = cfg or SynthConfig()
    cfg.validate()
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
    out_dir = Path(out_dir)
    dirs = prepare_out_dir(out_dir, split, overwrite)
    if workers is None:
        # each worker process pays ~2-3 s to start (it imports torch): only worth it for
        # larger datasets (bench/generate.py)
        workers = min(os.cpu_count() or 1, max(1, n_samples // 32))
    workers = max(1, min(int(workers), n_samples))
    tasks = [
        (cfg.to_dict(), seed, i, {k: str(v) for k, v in dirs.items()}) for i in range(n_samples)
    ]
    done = 0
    yield Event("generate", 0, n_samples)
    if workers == 1:
        for t in tasks:
            _worker(t)
            done += 1
            yield Event("generate", done, n_samples)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        try:
            futures = [ex.submit(_worker, t) for t in tasks]
            for fut in as_completed(futures):
                fut.result()
                done += 1
                yield Event("generate", done, n_samples)
        finally:  # also on stop (generator closed): drop what has not started
            ex.shutdown(wait=True, cancel_futures=True)
    doc_path = out_dir / "dataset.json"
    doc = json.loads(doc_path.read_text()) if doc_path.exists() else {}
    from napari_sim_uq._version import __version__

    doc.setdefault("format", "napari-sim-uq synthetic SIM dataset")
    doc["generator_version"] = __version__
    doc.setdefault("splits", {})[split] = {
        "n_samples": int(n_samples),
        "seed": int(seed),
        "config": cfg.to_dict(),
        "files": {
            "raw": f"{split}/sample_XXXXX.tif  ({cfg.n_frames}, {cfg.lr_size[0]}, "
            f"{cfg.lr_size[1]}) float32, angle-major frames",
            "emitter": f"{split}_gt/sample_XXXXX.tif  ({cfg.hr_size[0]}, {cfg.hr_size[1]})",
            "patterns": f"{split}_gt/sample_XXXXX_lp.tif  ({cfg.n_frames}, {cfg.hr_size[0]}, "
            f"{cfg.hr_size[1]})",
            "meta": f"{split}_meta/sample_XXXXX.npz  noise_sigma, read_sigma, mask, psf, "
            "psf_sigma, wave_vectors, phases, modulation, photons, background, gain",
        },
    }
    from napari_sim_uq.core.io.tiff_io import atomic_write

    text = json.dumps(doc, indent=2)
    atomic_write(doc_path, lambda tmp: Path(tmp).write_text(text), overwrite=True)
    return {
        "out_dir": str(out_dir),
        "split": split,
        "n_samples": int(n_samples),
        "dataset_json": str(doc_path),
    }
