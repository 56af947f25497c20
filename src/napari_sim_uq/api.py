"""Console API: one-call versions of the jobs for napari's console and scripts (DESIGN.md 2).

``reconstruct_sim(layer_or_array, checkpoint)`` returns napari layer data tuples
``(data, kwargs, "image")`` for the emitter, light patterns, PSF and their std maps, on
the grids of DESIGN.md 3; given a ``viewer`` it adds them (replacing the layers of the
same names from an earlier run) and returns the layers. ``generate_sim``, ``train_sim``
and ``evaluate_sim`` drive the existing jobs to the end and return their results.

Nothing here imports Qt or napari: a napari layer is recognised by its attributes (or
class name), and a viewer is only used through ``viewer.layers`` / ``viewer.add_image``.
The napari widget (``_napari/_reconstruct_widget.py``) goes through the same helpers
(:func:`sim_source`, :func:`reconstruction_layer_data`, :func:`add_or_replace_layers`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.outputs import placement
from napari_sim_uq.tasks.sim.reconstruct import SIM_OUTPUTS

__all__ = [
    "LAYER_SUFFIXES",
    "SimSource",
    "add_or_replace_layers",
    "evaluate_sim",
    "example_model_path",
    "generate_sim",
    "reconstruct_sim",
    "reconstruction_layer_data",
    "resolve_checkpoint",
    "sim_source",
    "train_sim",
]

EXAMPLE_MODEL = "sim_uq_demo_model.pt"

#: output key of :class:`~napari_sim_uq.tasks.sim.reconstruct.SimReconstruction` ->
#: (layer name suffix, colormap, grid) in the order the layers are returned/added; read
#: from the SIM output table (``jobs.reconstruct.SIM_OUTPUTS``), which the file writer uses
#: too.
LAYER_SUFFIXES: dict[str, tuple[str, str, str]] = {
    o.key: (o.suffix, o.colormap, o.grid) for o in SIM_OUTPUTS
}


# --------------------------------------------------------------------------- checkpoints


def example_model_path() -> Path:
    """Path of the small demo model shipped in ``example_data/`` (editable installs)."""
    path = Path(__file__).resolve().parents[2] / "example_data" / EXAMPLE_MODEL
    if not path.is_file():
        raise InputError(
            f"the bundled example model ({EXAMPLE_MODEL}) was not found at '{path}' (it "
            "ships with a source checkout only): pass checkpoint='path/to/model.pt'"
        )
    return path


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """``None`` -> the bundled example model; else the path, which must be a file."""
    if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint.strip()):
        return example_model_path()
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise InputError(
            f"checkpoint '{path}' does not exist: pass the path of a trained model "
            "(e.g. CKPT_DIR/best.pt from `sim-uq train`), or checkpoint=None for the "
            "bundled example model"
        )
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' is a folder, not a checkpoint file")
    return path


# --------------------------------------------------------------------------- inputs


@dataclass
class SimSource:
    """A raw SIM input with its name and world placement (full-length scale/translate)."""

    data: np.ndarray
    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    angles: int | None = None
    phases: int | None = None


def _is_layer(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("data", "scale", "translate", "name", "metadata"))


def sim_source(layer_or_array: Any, name: str | None = None) -> SimSource:
    """A :class:`SimSource` from a napari Image layer, an array or a file path."""
    angles = phases = None
    if _is_layer(layer_or_array):
        layer = layer_or_array
        if getattr(layer, "multiscale", False):
            raise InputError(f"layer '{layer.name}' is multiscale; reconstruct one level")
        if getattr(layer, "rgb", False):
            raise InputError(f"layer '{layer.name}' is an RGB image, not a raw SIM stack")
        data = np.asarray(layer.data)
        src_name = str(layer.name)
        scale = tuple(float(s) for s in layer.scale)
        translate = tuple(float(t) for t in layer.translate)
        layout = ((layer.metadata or {}).get("sim_uq") or {}).get("layout") or {}
        if isinstance(layout, dict):
            angles, phases = layout.get("angles"), layout.get("phases")
    elif isinstance(layer_or_array, (str, os.PathLike)):
        from napari_sim_uq.core.io.tiff_io import read_image

        rec = read_image(layer_or_array)
        data, src_name = np.asarray(rec.data), str(rec.name)
        scale = tuple(float(s) for s in rec.scale)
        translate = tuple(float(t) for t in rec.translate)
        if rec.layout.kind != "image2d":
            angles, phases = rec.layout.angles, rec.layout.phases
    else:
        try:
            data = np.asarray(layer_or_array)
        except Exception:  # anything that is not array-like
            data = None
        if data is None or data.dtype == object or data.ndim == 0:
            raise InputError(
                "reconstruct_sim needs a napari Image layer, a NumPy array or a file path, "
                f"got {type(layer_or_array).__name__}"
            )
        src_name = "array"
        scale = (1.0,) * data.ndim
        translate = (0.0,) * data.ndim
    if data.ndim < 2:
        raise InputError(f"{src_name}: a {data.ndim}D array is not an image")
    return SimSource(data, name or src_name, scale, translate, angles, phases)


# --------------------------------------------------------------------------- outputs


def reconstruction_layer_data(rec: Any, source: SimSource, *, device: str | None = None):
    """Layer data tuples of a :class:`SimReconstruction` made from ``source``.

    Names, colormaps and grids come from the SIM output table (``SIM_OUTPUTS``, shared with
    the file writer): HR outputs overlay the raw frames, the reconstruction std lies on the
    raw grid, the PSF on its own pixel grid (no spatial alignment). A time series keeps the
    source's time axis placement.
    """
    sc_lr, tr_lr = tuple(source.scale[-2:]), tuple(source.translate[-2:])
    lead = {
        "lead_scale": (float(source.scale[0]),),
        "lead_translate": (float(source.translate[0]),),
        "lead_labels": ("t",),
    }
    params = dict(rec.metadata)
    if device is not None:
        params["device"] = device
    out = []
    for spec in SIM_OUTPUTS:
        key, data = spec.key, rec.arrays[spec.key]
        scale, translate, labels = placement(
            spec, sc_lr, tr_lr, hr_factor=rec.hr_factor, **(lead if rec.time_series else {})
        )
        if data.ndim != len(scale):
            raise InputError(f"internal: {key} has shape {data.shape}, expected {len(scale)}D")
        kwargs = {
            "name": f"{source.name} {spec.suffix}",
            "scale": scale,
            "translate": translate,
            "colormap": spec.colormap,
            "axis_labels": labels,
            "metadata": {
                "sim_uq": {
                    "output": key,
                    "source": source.name,
                    "grid": spec.grid,
                    "reconstruction": copy.deepcopy(params),
                }
            },
        }
        if not spec.visible:
            # only the emitter shows over the raw frames; the rest is one click away (the
            # light patterns would cover it, the PSF sits on its own grid at the origin)
            kwargs["visible"] = False
        out.append((data, kwargs, "image"))
    return out


def _is_napari_image(layer: Any) -> bool:
    # by class name, so that this module never imports napari (DESIGN.md 1); __class__,
    # not type(): plugin widgets see layers through napari's PublicOnlyProxy, whose type
    # is the proxy but whose __class__ is the layer's
    return any(
        c.__name__ == "Image" and c.__module__.startswith("napari.layers")
        for c in layer.__class__.__mro__
    )


def add_or_replace_layers(viewer: Any, layer_data: list[tuple]) -> list:
    """Add image layer tuples to ``viewer``; a layer of the same name is updated in place.

    An existing Image layer with the same number of dimensions gets the new data, scale,
    translate and metadata (its display settings other than contrast are kept); any other
    layer of that name is removed and a new one added. Returns the layers, in order.
    """
    layers = []
    for data, kwargs, kind in layer_data:
        if kind != "image":
            raise InputError(f"internal: only image layers are supported, got {kind!r}")
        name = kwargs["name"]
        old = viewer.layers[name] if name in viewer.layers else None
        if _is_napari_image(old) and old.ndim == np.ndim(data) and not old.rgb:
            old.data = data
            old.scale = kwargs["scale"]
            old.translate = kwargs["translate"]
            old.metadata = kwargs["metadata"]
            if hasattr(old, "reset_contrast_limits_range"):
                old.reset_contrast_limits_range()
            old.reset_contrast_limits()
            layers.append(old)
            continue
        if old is not None:
            viewer.layers.remove(old)
        layers.append(viewer.add_image(data, **kwargs))
    return layers


# --------------------------------------------------------------------------- console API


def reconstruct_sim(
    layer_or_array: Any,
    checkpoint: str | os.PathLike | None = None,
    viewer: Any = None,
    *,
    mc_samples: int = 0,
    tile: int | None = None,
    overlap: int | None = None,
    device: str = "auto",
    name: str | None = None,
):
    """Reconstruct a raw SIM stack with uncertainty; layer tuples, or layers in ``viewer``.

    ``layer_or_array``: a napari Image layer (its data, scale, translate, name and stored
    SIM layout are used), an array ``(A*P, H, W)``, ``(A, P, H, W)`` or ``(T, A*P, H, W)``,
    or a file path. ``checkpoint=None`` uses the bundled example model. ``name`` replaces
    the source name in the layer names ``"<name> emitter"``, ``"<name> emitter std"``, ...
    Raises :class:`~napari_sim_uq.core.errors.InputError` for a 2D image, a wrong number of
    frames or a missing checkpoint.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job

    source = sim_source(layer_or_array, name)
    ckpt = resolve_checkpoint(checkpoint)
    rec = run(
        reconstruct_sim_job(
            source.data,
            ckpt,
            mc_samples=mc_samples,
            tile=tile,
            overlap=overlap,
            device=device,
            angles=source.angles,
            phases=source.phases,
        )
    )
    layer_data = reconstruction_layer_data(rec, source, device=device)
    if viewer is None:
        return layer_data
    return add_or_replace_layers(viewer, layer_data)


_GENERATE_KEYS = ("seed", "split", "workers", "overwrite")


def generate_sim(out_dir: str | os.PathLike, n_samples: int, **synth_options) -> dict:
    """Write a synthetic SIM dataset (as ``sim-uq generate``); returns the job's summary.

    ``seed``, ``split``, ``workers`` and ``overwrite`` go to the job, every other keyword
    is a :class:`~napari_sim_uq.tasks.sim.synth.SynthConfig` field (unknown names raise).
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset

    job_kw = {k: synth_options.pop(k) for k in _GENERATE_KEYS if k in synth_options}
    cfg = SynthConfig.from_dict(synth_options)
    return run(generate_dataset(out_dir, n_samples, cfg, **job_kw))


def train_sim(train_glob: str, ckpt_dir: str | os.PathLike, **train_options) -> dict:
    """Train the SIM network (as ``sim-uq train``); returns the training summary.

    Keywords are :class:`~napari_sim_uq.tasks.sim.train.TrainConfig` fields (``epochs``,
    ``batch_size``, ``model={...}``, ``loss={...}``, ...); unknown names raise.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

    cfg = TrainConfig.from_dict(
        {"train_glob": str(train_glob), "ckpt_dir": str(ckpt_dir), **train_options}
    )
    return run(train_sim_job(cfg))


def evaluate_sim(
    checkpoint: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    **kw,
) -> dict:
    """Evaluate a checkpoint on ``data_dir/split`` (as ``sim-uq evaluate``); the metrics.

    ``checkpoint=None`` evaluates the bundled example model. Other keywords
    (``mc_samples``, ``tile``, ``device``, ``max_samples``, ``overwrite``) go to
    :func:`~napari_sim_uq.tasks.sim.evaluate.evaluate_sim_job`.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.evaluate import evaluate_sim_job

    return run(evaluate_sim_job(resolve_checkpoint(checkpoint), data_dir, split, out_dir, **kw))
