"""Small deterministic sample images (NumPy/SciPy only, generated in well under a second).

* :func:`sim_sample` — a raw 9-frame SIM stack (3 angles x 3 phases) of filaments, rings
  and beads, with its high-resolution ground-truth emitter;
* :func:`image2d_sample` — a 16-bit fluorescence-like 2D image of cell nuclei.

The same arrays are shipped in ``example_data/`` (see :func:`write_example_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, signal


@dataclass
class SimSample:
    raw: np.ndarray  # (A*P, H, W) float32, photon-like units
    emitter: np.ndarray  # (f*H, f*W) float32, ground truth on the HR grid
    hr_factor: int
    angles: int
    phases: int
    metadata: dict


def _structures(rng: np.random.Generator, n: int) -> np.ndarray:
    """Filaments, rings and beads on an ``n x n`` grid, values in [0, ~1]."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    img = np.zeros((n, n))
    for _ in range(6):  # filaments: smooth random curves
        t = np.linspace(0, 1, 4 * n)
        p0 = rng.uniform(0, n, 2)
        ang = rng.uniform(0, 2 * np.pi)
        bend = rng.uniform(-2.5, 2.5)
        theta = ang + bend * t
        step = 1.4 * n / t.size
        ys = p0[0] + np.cumsum(np.sin(theta)) * step
        xs = p0[1] + np.cumsum(np.cos(theta)) * step
        iy, ix = np.round(ys).astype(int), np.round(xs).astype(int)
        ok = (iy >= 0) & (iy < n) & (ix >= 0) & (ix < n)
        img[iy[ok], ix[ok]] += rng.uniform(0.6, 1.0)
    for _ in range(4):  # rings
        cy, cx = rng.uniform(0.15 * n, 0.85 * n, 2)
        r = rng.uniform(0.04 * n, 0.09 * n)
        d = np.hypot(yy - cy, xx - cx)
        img += 0.8 * np.exp(-0.5 * ((d - r) / 0.8) ** 2)
    for _ in range(12):  # beads
        cy, cx = rng.uniform(2, n - 2, 2)
        img[int(cy), int(cx)] += rng.uniform(1.5, 3.0)
    img = ndimage.gaussian_filter(img, 0.7)
    return (img / img.max()).astype(np.float64)


def _gaussian_psf(sigma: float) -> np.ndarray:
    half = int(np.ceil(4 * sigma))
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (r / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def sim_sample(
    seed: int = 0,
    lr_size: int = 96,
    hr_factor: int = 2,
    angles: int = 3,
    phases: int = 3,
    period_lr: float = 3.2,
    modulation: float = 0.8,
    psf_sigma_lr: float = 1.3,
    photons: float = 400.0,
    background: float = 10.0,
    read_noise: float = 2.0,
) -> SimSample:
    """A raw SIM stack of a random structure: patterns x emitter, blurred, binned, noisy."""
    rng = np.random.default_rng(seed)
    n = lr_size * hr_factor
    emitter = _structures(rng, n)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    psf = _gaussian_psf(psf_sigma_lr * hr_factor)
    period = period_lr * hr_factor
    offset = rng.uniform(0, np.pi / angles)
    frames = []
    for a in range(angles):
        theta = offset + a * np.pi / angles
        kx, ky = np.cos(theta) / period, np.sin(theta) / period
        phi0 = rng.uniform(0, 2 * np.pi)
        for p in range(phases):
            pattern = 1 + modulation * np.cos(
                2 * np.pi * (kx * xx + ky * yy) + phi0 + 2 * np.pi * p / phases
            )
            blurred = signal.fftconvolve(emitter * pattern, psf, mode="same")
            binned = blurred.reshape(lr_size, hr_factor, lr_size, hr_factor).mean(axis=(1, 3))
            frames.append(binned)
    clean = photons * np.stack(frames) + background
    noisy = rng.poisson(np.clip(clean, 0, None)) + rng.normal(0, read_noise, clean.shape)
    meta = {
        "seed": seed,
        "hr_factor": hr_factor,
        "angles": angles,
        "phases": phases,
        "period_lr_px": period_lr,
        "modulation": modulation,
        "psf_sigma_lr_px": psf_sigma_lr,
        "photons": photons,
        "background": background,
        "read_noise": read_noise,
    }
    return SimSample(
        raw=noisy.astype(np.float32),
        emitter=(photons * emitter).astype(np.float32),
        hr_factor=hr_factor,
        angles=angles,
        phases=phases,
        metadata=meta,
    )


def image2d_sample(seed: int = 0, size: int = 256) -> np.ndarray:
    """A 16-bit fluorescence-like image of textured nuclei with shot and read noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    for _ in range(max(4, size * size // 2500)):
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(0.03, 0.06, 2) * size
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        img += rng.uniform(0.5, 1.0) / (1 + np.exp((np.hypot(u, v) - 1) * 8))
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.0)
    img *= 1 + 2.0 * texture
    img = ndimage.gaussian_filter(np.clip(img, 0, None), 1.2)
    clean = 100 + 1500 * img / img.max()
    noisy = rng.poisson(clean) + rng.normal(0, 5, clean.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def hr_scale_translate(scale_lr, translate_lr, hr_factor: int):
    """Scale and translate of an HR layer that overlays an LR layer exactly (DESIGN.md 3)."""
    scale_lr = np.asarray(scale_lr, dtype=float)
    translate_lr = np.asarray(translate_lr, dtype=float)
    scale = scale_lr / hr_factor
    translate = translate_lr - scale_lr * (1 - 1 / hr_factor) / 2
    return tuple(scale.tolist()), tuple(translate.tolist())


EXAMPLE_FILES = ("sim_stack.tif", "sim_stack_gt.tif", "cells_2d.tif", "cells_2d.png")


def write_example_data(out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write the sample images to ``out_dir`` (the files shipped in ``example_data/``)."""
    from PIL import Image

    from napari_sim_uq.data.tiff_io import atomic_write, write_image

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"'{out_dir}' is a file, not a folder")
    s = sim_sample()
    md = {"sim_uq": {"sample": "sim_sample", **s.metadata}}
    sc, tr = hr_scale_translate((1.0, 1.0), (0.0, 0.0), s.hr_factor)
    paths = [
        write_image(
            out_dir / "sim_stack.tif", s.raw, name="SIM sample", metadata=md, overwrite=overwrite
        ),
        write_image(
            out_dir / "sim_stack_gt.tif",
            s.emitter,
            name="SIM sample GT emitter",
            scale=sc,
            translate=tr,
            metadata=md,
            overwrite=overwrite,
        ),
    ]
    cells = image2d_sample()
    paths.append(
        write_image(
            out_dir / "cells_2d.tif",
            cells,
            name="cells 2D",
            metadata={"sim_uq": {"sample": "image2d_sample"}},
            overwrite=overwrite,
        )
    )
    png8 = (cells.astype(np.float64) / cells.max() * 255).round().astype(np.uint8)
    paths.append(
        atomic_write(
            out_dir / "cells_2d.png",
            lambda tmp: Image.fromarray(png8).save(tmp, format="PNG"),
            overwrite=overwrite,
        )
    )
    return paths
