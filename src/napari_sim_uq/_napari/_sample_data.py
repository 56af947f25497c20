"""npe2 sample data: a synthetic raw SIM stack (+ ground truth) and a 2D image."""

from __future__ import annotations

from napari_sim_uq.data.samples import hr_scale_translate, image2d_sample, sim_sample


def make_sim_sample() -> list[tuple]:
    """Raw 9-frame SIM stack and its ground-truth emitter, overlaid on the same grid."""
    s = sim_sample()
    md = {
        "sim_uq": {
            "sample": "sim_sample",
            **s.metadata,
            "layout": {"kind": "sim", "angles": s.angles, "phases": s.phases},
        }
    }
    scale_hr, translate_hr = hr_scale_translate((1.0, 1.0), (0.0, 0.0), s.hr_factor)
    raw = (
        s.raw,
        {
            "name": "SIM sample",
            "metadata": md,
            "colormap": "gray",
            "axis_labels": ("frame", "y", "x"),
        },
        "image",
    )
    gt = (
        s.emitter,
        {
            "name": "SIM sample GT emitter",
            "metadata": md,
            "colormap": "inferno",
            "scale": scale_hr,
            "translate": translate_hr,
            "visible": False,
            "axis_labels": ("y", "x"),
        },
        "image",
    )
    return [raw, gt]


def make_image2d_sample() -> list[tuple]:
    """A 16-bit fluorescence-like 2D image of nuclei."""
    return [
        (
            image2d_sample(),
            {
                "name": "cells 2D",
                "colormap": "gray",
                "metadata": {"sim_uq": {"sample": "image2d_sample"}},
            },
            "image",
        )
    ]
