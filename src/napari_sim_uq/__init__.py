"""napari-sim-uq: uncertainty-aware SIM and 2D image reconstruction.

Importing this package is cheap: it pulls in neither napari, Qt nor torch. The public
scripting API below is loaded on first use::

    import napari_sim_uq as squ
    rec = squ.read_image("example_data/sim_stack.tif")
"""

from __future__ import annotations

import importlib

from napari_sim_uq._version import __version__

# public name -> module that defines it (loaded lazily, see __getattr__)
_API = {
    "read_image": "napari_sim_uq.core.io.tiff_io",
    "write_image": "napari_sim_uq.core.io.tiff_io",
    "ImageRecord": "napari_sim_uq.core.io.tiff_io",
    "infer_layout": "napari_sim_uq.core.io.layout",
    "Layout": "napari_sim_uq.core.io.layout",
    "sim_sample": "napari_sim_uq.tasks.sim.samples",
    "image2d_sample": "napari_sim_uq.tasks.sim.samples",
    "SimUqError": "napari_sim_uq.core.errors",
    "InputError": "napari_sim_uq.core.errors",
    "reconstruct_sim": "napari_sim_uq.api",
    "generate_sim": "napari_sim_uq.api",
    "train_sim": "napari_sim_uq.api",
    "evaluate_sim": "napari_sim_uq.api",
    "calibrate_sim": "napari_sim_uq.api",
    "ensemble_sim": "napari_sim_uq.api",
    "wiener_sim": "napari_sim_uq.api",
    "estimate_sim_patterns": "napari_sim_uq.api",
    "match_sim_config": "napari_sim_uq.api",
    "example_model_path": "napari_sim_uq.api",
    "reconstruct_2d": "napari_sim_uq.api",
    "anomaly_map": "napari_sim_uq.api",
    "train_2d": "napari_sim_uq.api",
    "example_2d_model_path": "napari_sim_uq.api",
    "posterior_2d": "napari_sim_uq.api",
    "train_vae": "napari_sim_uq.api",
    "example_vae_model_path": "napari_sim_uq.api",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sim_uq' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
