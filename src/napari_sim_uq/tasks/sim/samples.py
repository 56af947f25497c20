"""Small deterministic sample images, generated in well under a second.

* :func:`sim_sample` — a raw 9-frame SIM stack (3 angles x 3 phases) of filaments, rings
  and beads from the synthetic generator, with its high-resolution ground-truth emitter;
* :func:`image2d_sample` — a 16-bit fluorescence-like 2D image of cell nuclei.

The same arrays are shipped in ``example_data/`` (see :func:`write_example_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_sim_uq.core.io.outputs import hr_scale_translate

__all__ = [
    "EXAMPLE_FILES",
    "SimSample",
    "hr_scale_translate",  # defined in data.outputs, kept here for existing callers
    "image2d_sample",
    "sim_sample",
    "sim_sample_layer_data",
    "write_example_data",
]


@dataclass
class SimSample:
    raw: np.ndarray  # (A*P, H, W) float32 counts
    emitter: np.ndarray  # (f*H, f*W) float32, ground truth on the HR grid
    noise_sigma: np.ndarray  # (A*P, H, W) per-pixel noise std of `raw`
    hr_factor: int
    angles: int
    phases: int
    metadata: dict


def sim_sample(seed: int = 0, lr_size: int = 96, hr_factor: int = 2, **config) -> SimSample:
    """A raw SIM stack from the synthetic generator (:mod:`napari_sim_uq.tasks.sim.synth`).

    ``config`` overrides :class:`~napari_sim_uq.tasks.sim.synth.SynthConfig` fields.
    """
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

    cfg = SynthConfig(lr_size=(lr_size, lr_size), hr_factor=hr_factor, **config)
    s = generate_sample(cfg, seed=seed)
    meta = {k: v for k, v in s.params.items() if k not in ("wave_vectors", "phases")}
    return SimSample(
        raw=s.raw,
        emitter=s.emitter,
        noise_sigma=s.noise_sigma,
        hr_factor=hr_factor,
        angles=cfg.n_angles,
        phases=cfg.n_phases,
        metadata=meta,
    )


def image2d_clean(seed: int = 0, size: int = 256, rng: np.random.Generator | None = None):
    """The noise-free image behind :func:`image2d_sample` (float64, about 100-1600 counts):
    textured nuclei blurred by the optics. ``rng`` (instead of ``seed``) continues a stream."""
    rng = np.random.default_rng(seed) if rng is None else rng
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
    return 100 + 1500 * img / img.max()


def image2d_sample(seed: int = 0, size: int = 256) -> np.ndarray:
    """A 16-bit fluorescence-like image of textured nuclei with shot and read noise."""
    from napari_sim_uq.core.data.noise import poisson_by_inversion

    rng = np.random.default_rng(seed)
    clean = image2d_clean(size=size, rng=rng)
    # shot noise by inversion: the same counts on every machine (core.data.noise)
    noisy = poisson_by_inversion(clean, rng) + rng.normal(0, 5, clean.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def sim_sample_layer_data(
    raw: np.ndarray,
    emitter: np.ndarray,
    hr_factor: int,
    *,
    name: str,
    noise_sigma: np.ndarray | None = None,
    angles: int = 3,
    phases: int = 3,
    metadata: dict | None = None,
) -> list[tuple]:
    """napari layer data tuples of a synthetic sample (no napari import needed).

    ``name`` (gray, the raw ``(A*P, H, W)`` stack on the unit grid), ``"<name> GT emitter"``
    (inferno, hidden, on the ``hr_factor`` times finer grid that overlays the raw frames,
    DESIGN.md 3) and, given ``noise_sigma``, ``"<name> noise sigma"`` (magma, hidden, the
    per-pixel noise std of the raw frames). ``metadata`` goes under ``"sim_uq"`` with the
    SIM layout added.
    """
    md = {
        "sim_uq": {
            **(metadata or {}),
            "layout": {"kind": "sim", "angles": int(angles), "phases": int(phases)},
        }
    }
    scale_hr, translate_hr = hr_scale_translate((1.0, 1.0), (0.0, 0.0), hr_factor)
    frame_axes = ("frame", "y", "x")
    lr_grid = {"scale": (1.0, 1.0, 1.0), "translate": (0.0, 0.0, 0.0)}
    raw_kw = {"name": name, "metadata": md, "colormap": "gray", "axis_labels": frame_axes}
    out = [
        (raw, {**raw_kw, **lr_grid}, "image"),
        (
            emitter,
            {
                "name": f"{name} GT emitter",
                "metadata": md,
                "colormap": "inferno",
                "scale": scale_hr,
                "translate": translate_hr,
                "visible": False,
                "axis_labels": ("y", "x"),
            },
            "image",
        ),
    ]
    if noise_sigma is not None:
        kwargs = {
            "name": f"{name} noise sigma",
            "metadata": md,
            "colormap": "magma",
            "visible": False,
            "axis_labels": frame_axes,
            **lr_grid,
        }
        out.append((noise_sigma, kwargs, "image"))
    return out


EXAMPLE_FILES = ("sim_stack.tif", "sim_stack_gt.tif", "cells_2d.tif", "cells_2d.png")


def write_example_data(out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write the sample images to ``out_dir`` (the files shipped in ``example_data/``)."""
    from PIL import Image

    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image

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
