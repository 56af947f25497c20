"""npe2 sample data: a synthetic raw SIM stack (+ ground truth) and a 2D image."""

from __future__ import annotations

from napari_sim_uq.tasks.sim.samples import image2d_sample, sim_sample, sim_sample_layer_data


def make_sim_sample() -> list[tuple]:
    """Raw 9-frame SIM stack and its ground-truth emitter, overlaid on the same grid."""
    s = sim_sample()
    return sim_sample_layer_data(
        s.raw,
        s.emitter,
        s.hr_factor,
        name="SIM sample",
        angles=s.angles,
        phases=s.phases,
        metadata={"sample": "sim_sample", **s.metadata},
    )


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
