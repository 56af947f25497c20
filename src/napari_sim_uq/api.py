"""Console API: one-call versions of the jobs for napari's console and scripts (DESIGN.md 2).

``reconstruct_sim(layer_or_array, checkpoint)`` returns napari layer data tuples
``(data, kwargs, "image")`` for the emitter, light patterns, PSF and their std maps, on
the grids of DESIGN.md 3; given a ``viewer`` it adds them (replacing the layers of the
same names from an earlier run) and returns the layers. ``generate_sim``, ``train_sim``
and ``evaluate_sim`` drive the existing jobs to the end and return their results.

The 2D task (``tasks/ae2d``) has the same shape: ``reconstruct_2d(layer_or_array)`` gives
``"<source> mean"``, ``"<source> std"``, ``"<source> epistemic std"`` and ``"<source>
aleatoric std"`` (and ``"<source> degraded"``), ``anomaly_map`` the ``"<source> anomaly
score"``, ``train_2d`` trains on a folder or on arrays / layers; the 2D widgets
(``_napari/_reconstruct2d_widget.py``, ...) use the same jobs (:func:`reconstruct_2d_job`,
:func:`train_2d_job_from`) and layer builder (:func:`layer_data_2d`).

Nothing here imports Qt or napari: a napari layer is recognised by its attributes (or
class name), and a viewer is only used through ``viewer.layers`` / ``viewer.add_image``.
The napari widget (``_napari/_reconstruct_widget.py``) goes through the same helpers
(:func:`sim_source`, :func:`reconstruction_layer_data`, :func:`add_or_replace_layers`).
"""

from __future__ import annotations

import copy
import dataclasses
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
    "Image2DSource",
    "SimSource",
    "add_or_replace_layers",
    "anomaly_map",
    "calibrate_sim",
    "ensemble_sim",
    "estimate_sim_patterns",
    "estimated_pattern_layers",
    "evaluate_sim",
    "example_2d_model_path",
    "example_model_path",
    "example_mae_model_path",
    "example_vae_model_path",
    "generate_sim",
    "image2d_source",
    "inpaint_2d",
    "inpaint_2d_job",
    "layer_data_2d",
    "mask_from_layer",
    "match_sim_config",
    "pattern_diagnostics_layers",
    "posterior_2d",
    "posterior_2d_job",
    "reconstruct_2d",
    "reconstruct_2d_job",
    "reconstruct_sim",
    "reconstruction_layer_data",
    "resolve_2d_checkpoint",
    "resolve_checkpoint",
    "resolve_mae_checkpoint",
    "resolve_vae_checkpoint",
    "sim_source",
    "train_2d",
    "train_2d_job_from",
    "train_mae",
    "train_sim",
    "train_vae",
    "wiener_sim",
    "write_training_images_2d",
]

EXAMPLE_MODEL = "sim_uq_demo_model.pt"
EXAMPLE_2D_MODEL = "ae2d_demo_model.pt"
EXAMPLE_VAE_MODEL = "vae2d_demo_model.pt"
EXAMPLE_MAE_MODEL = "mae2d_demo_model.pt"

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
    """A :class:`SimSource` from a napari Image layer, an array, a file path or a
    :class:`SimSource` (returned as it is, renamed when ``name`` is given)."""
    angles = phases = None
    if isinstance(layer_or_array, SimSource):
        return dataclasses.replace(layer_or_array, name=name or layer_or_array.name)
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
        if spec.key not in rec.arrays:  # the std parts exist with MC dropout only
            continue
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
    """Add image (and points) layer tuples to ``viewer``; an image layer of the same name
    is updated in place.

    An existing Image layer with the same number of dimensions gets the new data, scale,
    translate and metadata (its display settings other than contrast are kept); any other
    layer of that name is removed and a new one added. Points layers are always replaced.
    Returns the layers, in order.
    """
    layers = []
    for data, kwargs, kind in layer_data:
        if kind not in ("image", "points"):
            raise InputError(f"internal: only image and points layers are supported, got {kind!r}")
        name = kwargs["name"]
        old = viewer.layers[name] if name in viewer.layers else None
        if kind == "points":
            if old is not None:
                viewer.layers.remove(old)
            layers.append(viewer.add_points(data, **kwargs))
            continue
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


def remove_stale_outputs(viewer: Any, source_name: str, layer_data: list[tuple]) -> list[str]:
    """Remove the layers of an earlier SIM reconstruction of ``source_name`` that the new
    one does not make (the emitter std parts of an MC-dropout run, when the new run has no
    MC samples), so that no layer from another run is left looking current. Returns the
    names removed."""
    new = {kw["name"] for _data, kw, _kind in layer_data}
    stale = [
        name
        for spec in SIM_OUTPUTS
        if (name := f"{source_name} {spec.suffix}") not in new and name in viewer.layers
    ]
    for name in stale:
        viewer.layers.remove(viewer.layers[name])
    return stale


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
    remove_stale_outputs(viewer, source.name, layer_data)
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


def train_sim(
    train_glob: str, ckpt_dir: str | os.PathLike, ensemble: int = 1, **train_options
) -> dict:
    """Train the SIM network (as ``sim-uq train``); returns the training summary.

    Keywords are :class:`~napari_sim_uq.tasks.sim.train.TrainConfig` fields (``epochs``,
    ``batch_size``, ``model={...}``, ``loss={...}``, ...); unknown names raise.
    ``ensemble=N`` (N >= 2) trains a deep ensemble as ``sim-uq train --ensemble N``
    (:func:`~napari_sim_uq.tasks.sim.ensemble.train_sim_ensemble_job`: members with seeds
    seed + i in ``ckpt_dir/member_<i>``, combined into ``ckpt_dir/ensemble.pt``) and
    returns ``{"members": [summaries], "ensemble": path}``.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

    cfg = TrainConfig.from_dict(
        {"train_glob": str(train_glob), "ckpt_dir": str(ckpt_dir), **train_options}
    )
    if ensemble != 1:
        from napari_sim_uq.tasks.sim.ensemble import train_sim_ensemble_job

        return run(train_sim_ensemble_job(cfg, ensemble))
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
    (``mc_samples``, ``tile``, ``device``, ``max_samples``, ``overwrite``, ``wiener``) go to
    :func:`~napari_sim_uq.tasks.sim.evaluate.evaluate_sim_job`.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.evaluate import evaluate_sim_job

    return run(evaluate_sim_job(resolve_checkpoint(checkpoint), data_dir, split, out_dir, **kw))


def calibrate_sim(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "val",
    **kw,
) -> dict:
    """Recalibrate a checkpoint on ``data_dir/split`` (as ``sim-uq calibrate``): sigma
    scales, the emitter sigma map (``method="map-intensity"`` by default; ``"map"``,
    ``"scale"``) and the self-check reference are stored in the checkpoint. Other keywords
    (``mc_samples``, ``tile``, ``device``, ``max_samples``, ``quantities``, ``out``,
    ``n_bins``) go to :func:`~napari_sim_uq.tasks.sim.evaluate.calibrate_sim_job`."""
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.evaluate import calibrate_sim_job

    return run(calibrate_sim_job(checkpoint, data_dir, split, **kw))


def ensemble_sim(
    checkpoints: list[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = True
) -> Path:
    """Combine SIM checkpoints trained on the same data (different seeds) into a deep
    ensemble checkpoint at ``out`` (as ``sim-uq ensemble``); returns its path. Calibrate it
    (:func:`calibrate_sim`) before use."""
    from napari_sim_uq.tasks.sim.ensemble import combine_sim_checkpoints

    return combine_sim_checkpoints(checkpoints, out, overwrite=overwrite)


# --------------------------------------------------------------------------- 2D task
#
# The 2D autoencoders (tasks/ae2d): reconstruction with epistemic and aleatoric std maps,
# anomaly scores and training. Layers are placed on the source's pixel grid with the
# task's output tables (AE2D_OUTPUTS, ANOMALY_OUTPUTS) through core placement().

_2D_TRAIN_COMMAND = "sim-uq train-2d"
LAYER_DATA_DIR = "layer_data"


def _bundled(filename: str, what: str) -> Path:
    path = Path(__file__).resolve().parents[2] / "example_data" / filename
    if not path.is_file():
        raise InputError(
            f"the bundled {what} ({filename}) was not found at '{path}' (it ships with a "
            "source checkout only): pass checkpoint='path/to/model.pt'"
        )
    return path


def example_2d_model_path() -> Path:
    """Path of the small 2D model shipped in ``example_data/`` (an MC-dropout U-Net with an
    aleatoric head, trained on synthetic images with ``noise:0.1``; editable installs)."""
    return _bundled(EXAMPLE_2D_MODEL, "2D example model")


def example_vae_model_path() -> Path:
    """Path of the small VAE shipped in ``example_data/`` (64 x 64 patches, 16 latents,
    trained on clean images made like the 2D sample; editable installs)."""
    return _bundled(EXAMPLE_VAE_MODEL, "example VAE")


def example_mae_model_path() -> Path:
    """Path of the small masked autoencoder shipped in ``example_data/`` (ViT block, 32 x 32
    images, 4-pixel tokens, trained on clean images made like the 2D sample; editable
    installs)."""
    return _bundled(EXAMPLE_MAE_MODEL, "example masked autoencoder")


def _resolve(checkpoint, default: Any, what: str, train_command: str) -> Path:
    if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint.strip()):
        return default()
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise InputError(
            f"checkpoint '{path}' does not exist: pass the path of a trained {what} (e.g. "
            f"OUT_DIR/best.pt from `{train_command}`), or checkpoint=None for the "
            "bundled example model"
        )
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' is a folder, not a checkpoint file")
    return path


def resolve_2d_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """``None`` (or an empty string) -> the bundled 2D example model; else the path, which
    must be a file. Whether it is a 2D checkpoint is checked when it is loaded."""
    return _resolve(checkpoint, example_2d_model_path, "2D model", _2D_TRAIN_COMMAND)


def resolve_vae_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """``None`` (or an empty string) -> the bundled example VAE; else the path, which must
    be a file (a VAE checkpoint: checked when it is loaded)."""
    return _resolve(checkpoint, example_vae_model_path, "VAE", "sim-uq train-vae")


def resolve_mae_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """``None`` (or an empty string) -> the bundled example masked autoencoder; else the
    path, which must be a file (checked when it is loaded)."""
    return _resolve(checkpoint, example_mae_model_path, "masked autoencoder", "sim-uq train-mae")


@dataclass
class Image2DSource:
    """One grey 2D image (float32 ``(H, W)``) with its name and the world placement of its
    pixels (scale and translate of the last two axes)."""

    data: np.ndarray
    name: str
    scale: tuple[float, float]
    translate: tuple[float, float]


def _looks_rgb(data: np.ndarray) -> bool:
    # (H, W, 3|4) with more than 4 rows: a colour image, not a stack of 3 or 4 planes
    return data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4


def image2d_source(
    layer_or_array: Any, name: str | None = None, *, allow_nan: bool = False
) -> Image2DSource:
    """An :class:`Image2DSource` from a napari Image layer, an array or a file path.

    Colour (RGB/RGBA) images are converted to luminance ``0.299 R + 0.587 G + 0.114 B``
    with a ``UserWarning``; singleton leading axes are dropped; stacks, non-numeric data and
    NaN/inf values raise :class:`~napari_sim_uq.core.errors.InputError` (with
    ``allow_nan``, NaN is kept: it marks missing pixels for the posterior reconstruction).
    """
    import warnings

    from napari_sim_uq.core.data.images2d import LUMA_WEIGHTS, image_from_array, read_image_2d

    if _is_layer(layer_or_array):
        layer = layer_or_array
        if getattr(layer, "multiscale", False):
            raise InputError(f"layer '{layer.name}' is multiscale; use one level")
        data = np.asarray(layer.data)
        src_name = str(layer.name)
        scale = tuple(float(s) for s in layer.scale)[-2:]
        translate = tuple(float(t) for t in layer.translate)[-2:]
        rgb = bool(getattr(layer, "rgb", False))
    elif isinstance(layer_or_array, (str, os.PathLike)):
        data = read_image_2d(layer_or_array, min_size=1)  # converts colour with a warning
        src_name = Path(layer_or_array).stem
        scale, translate, rgb = (1.0, 1.0), (0.0, 0.0), False
    else:
        try:
            data = np.asarray(layer_or_array)
        except Exception:  # anything that is not array-like
            data = None
        if data is None or data.dtype == object or data.ndim == 0:
            raise InputError(
                "the 2D reconstruction needs a napari Image layer, a NumPy array or a file "
                f"path, got {type(layer_or_array).__name__}"
            )
        src_name = "array"
        scale, translate = (1.0, 1.0), (0.0, 0.0)
        rgb = _looks_rgb(data)
    name = name or src_name
    what = f"'{name}'"
    if rgb:
        if data.ndim != 3 or data.shape[-1] not in (3, 4):
            raise InputError(f"{what}: an RGB image must have shape (H, W, 3|4), got {data.shape}")
        warnings.warn(
            f"{what}: a colour (RGB) image was converted to grey (luminance 0.299 R + "
            "0.587 G + 0.114 B) for the 2D model",
            UserWarning,
            stacklevel=3,
        )
        data = data[..., :3].astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim < 2:
        raise InputError(f"{what}: a {data.ndim}D array is not an image")
    if data.ndim > 2:
        raise InputError(
            f"{what} has shape {data.shape}: the 2D model works on one 2D image, not a stack "
            "of planes; choose one plane (e.g. layer.data[i]) or a SIM widget for SIM stacks"
        )
    if allow_nan and data.dtype.kind == "f":
        nan = np.isnan(data)
        checked = image_from_array(np.where(nan, 0.0, data), what, min_size=1)
        return Image2DSource(np.where(nan, np.nan, checked), name, scale, translate)
    return Image2DSource(image_from_array(data, what, min_size=1), name, scale, translate)


def reconstruct_2d_job(
    source: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mc_samples: int = 30,
    degrade: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    tile: int | None = 256,
    overlap: int | None = 32,
    scores: bool = False,
):
    """Job (generator of Events): load a 2D checkpoint and reconstruct ``source`` (an
    :class:`Image2DSource`, or anything :func:`image2d_source` takes); returns the
    :class:`~napari_sim_uq.core.task.Prediction` with what the layers record about the
    model and the parameters in its ``meta``. A SIM (or other) checkpoint is refused."""
    from napari_sim_uq.tasks.ae2d.predict import STAGE, load_ae2d_model, predict_2d

    if not isinstance(source, Image2DSource):
        source = image2d_source(source)

    def predict(model, ck, dev):
        return predict_2d(
            model,
            ck,
            source.data,
            mc_samples=mc_samples,
            tile=tile,
            overlap=overlap,
            seed=seed,
            device=dev,
            degrade=degrade,
            degrade_seed=seed,
            scores=scores,
            what=f"'{source.name}'",
        )

    pred = yield from _checkpoint_job(
        resolve_2d_checkpoint(checkpoint), STAGE, load_ae2d_model, device, predict
    )
    pred.meta = {"task": "ae2d", **pred.meta, "mc_samples": int(mc_samples), "seed": int(seed)}
    return pred


def _checkpoint_job(ckpt: Path, stage: str, load: Any, device: Any, predict: Any):
    """Job: load ``ckpt`` with ``load(path, device)`` and run the job ``predict(model, ck,
    device)``; its Prediction's ``meta`` gains the checkpoint's layer metadata (model, config
    hash, version, sigma-scale), the checkpoint path and the device."""
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event

    yield Event(stage, 0, None, message=f"loading {ckpt.name} …")
    dev = resolve_device(device)
    model, ck = load(ckpt, dev)
    pred = yield from predict(model, ck, dev)
    pred.meta = {**ck.layer_metadata(), **pred.meta, "checkpoint": str(ckpt), "device": str(dev)}
    return pred


def layer_data_2d(pred: Any, source: Image2DSource, outputs: Any = None) -> list[tuple]:
    """Layer data tuples of a 2D :class:`~napari_sim_uq.core.task.Prediction`, one per row
    of the output table ``outputs`` (default ``AE2D_OUTPUTS``) whose array is present:
    named ``"<source> <suffix>"``, placed with :func:`~napari_sim_uq.core.io.outputs.placement`
    on the source's pixel grid; the metadata records the model, config hash and parameters
    (``metadata["sim_uq"]["reconstruction"]``). An anomaly-score layer also records the
    image score (``metadata["sim_uq"]["image_score"]``)."""
    from napari_sim_uq.tasks.ae2d.predict import AE2D_OUTPUTS

    outputs = AE2D_OUTPUTS if outputs is None else outputs
    params = {k: v for k, v in pred.meta.items() if k not in ("image_score", "mse_score")}
    out = []
    for spec in outputs:
        data = pred.arrays.get(spec.key)
        if data is None:
            continue
        scale, translate, labels = placement(spec, source.scale, source.translate)
        md: dict[str, Any] = {
            "output": spec.key,
            "source": source.name,
            "grid": spec.grid,
            "task": pred.meta.get("task", "ae2d"),
            "reconstruction": copy.deepcopy(params),
        }
        if spec.key == "anomaly_score":
            md["image_score"] = float(pred.meta["image_score"])
            md["mse_score"] = float(pred.meta["mse_score"])
        kwargs = {
            "name": f"{source.name} {spec.suffix}",
            "scale": scale,
            "translate": translate,
            "colormap": spec.colormap,
            "axis_labels": labels,
            "metadata": {"sim_uq": md},
        }
        if not spec.visible:
            kwargs["visible"] = False  # the mean shows; the std maps are one click away
        out.append((np.asarray(data, dtype=np.float32), kwargs, "image"))
    return out


def reconstruct_2d(
    layer_or_array: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mc_samples: int = 30,
    degrade: str | None = None,
    seed: int = 0,
    viewer: Any = None,
    device: str = "cpu",
    tile: int | None = 256,
    overlap: int | None = 32,
    name: str | None = None,
):
    """Reconstruct a 2D image with a 2D autoencoder; layer tuples, or layers in ``viewer``.

    Gives ``"<name> mean"``, ``"<name> std"`` (total), ``"<name> epistemic std"`` (MC
    dropout, ``mc_samples > 1``), ``"<name> aleatoric std"`` (variance head) and, with
    ``degrade`` (a spec such as ``"noise:0.1"``, applied in normalised units with ``seed``
    before the reconstruction), ``"<name> degraded"``; all on the source's pixel grid.
    ``layer_or_array``: a napari Image layer, a 2D array (RGB is converted to grey with a
    warning) or a file path; ``checkpoint=None``: the bundled 2D example model. Given a
    ``viewer``, layers of the same names are replaced. Bad input (a stack, NaN, an image
    smaller than the model's minimum, a SIM checkpoint) raises
    :class:`~napari_sim_uq.core.errors.InputError` before any layer is added.
    """
    from napari_sim_uq.tasks.ae2d.predict import AE2D_OUTPUTS

    opts = dict(
        mc_samples=mc_samples, degrade=degrade, seed=seed, device=device, tile=tile, overlap=overlap
    )
    return _run_2d(layer_or_array, name, viewer, AE2D_OUTPUTS, checkpoint, **opts)


def anomaly_map(
    layer_or_array: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mc_samples: int = 30,
    degrade: str | None = None,
    seed: int = 0,
    viewer: Any = None,
    device: str = "cpu",
    tile: int | None = 256,
    overlap: int | None = 32,
    name: str | None = None,
):
    """Per-pixel anomaly score ``(x - mu)^2 / sigma^2`` of a 2D image (``x`` the input in
    normalised units, ``mu`` and ``sigma`` the model's reconstruction and total std): the
    layer ``"<name> anomaly score"``; its ``metadata["sim_uq"]["image_score"]`` is the
    image score, the mean over the pixels (DESIGN.md 5). Arguments as
    :func:`reconstruct_2d`; a model trained with ``degrade="none"`` (an autoencoder of
    normal images) is the intended kind.
    """
    from napari_sim_uq.tasks.ae2d.predict import ANOMALY_OUTPUTS

    opts = dict(
        mc_samples=mc_samples,
        degrade=degrade,
        seed=seed,
        device=device,
        tile=tile,
        overlap=overlap,
        scores=True,
    )
    return _run_2d(layer_or_array, name, viewer, ANOMALY_OUTPUTS, checkpoint, **opts)


def _as_layers(pred, source: Image2DSource, outputs, viewer):
    """A 2D task's Prediction as layer tuples of ``outputs`` (or layers added to / updated
    in ``viewer``)."""
    layer_data = layer_data_2d(pred, source, outputs)
    if viewer is None:
        return layer_data
    return add_or_replace_layers(viewer, layer_data)


def _run_2d(layer_or_array, name, viewer, outputs, checkpoint, **options):
    """The 2D job on one source, as layer tuples (or layers added to ``viewer``)."""
    from napari_sim_uq.core.events import run

    source = image2d_source(layer_or_array, name)
    pred = run(reconstruct_2d_job(source, checkpoint, **options))
    return _as_layers(pred, source, outputs, viewer)


def _training_items(images: Any, what: str) -> list[Any]:
    """The single images of ``images``: a layer, an array (a 3D non-colour array is a
    stack of images), or a list/tuple of those."""
    if _is_layer(images) or isinstance(images, np.ndarray):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise InputError(
            f"{what}: give a folder or glob of images, or a non-empty list of 2D arrays / "
            f"image layers, got {type(images).__name__}"
        )
    items: list[Any] = []
    for item in images:
        if isinstance(item, (str, os.PathLike, Image2DSource)):
            items.append(item)
            continue
        data = np.asarray(item.data) if _is_layer(item) else np.asarray(item)
        rgb = bool(getattr(item, "rgb", False)) if _is_layer(item) else _looks_rgb(data)
        if data.ndim == 3 and not rgb and data.shape[0] > 1:
            base = str(item.name) if _is_layer(item) else "array"
            items += [image2d_source(plane, f"{base} plane {i}") for i, plane in enumerate(data)]
        else:
            items.append(item)
    return items


def write_training_images_2d(out_dir: str | os.PathLike, images: Any, split: str = "train") -> Path:
    """Write training images given as arrays or layers to ``out_dir/layer_data/<split>/``
    (float32 TIFFs, grey; colour converted with a warning) and return that folder, so that
    a checkpoint names files that outlive the session. Every image is checked before any
    file is written; ``.tif`` files of an earlier call in that folder are removed."""
    from napari_sim_uq.core.io.tiff_io import write_image
    from napari_sim_uq.tasks.sim.layer_data import safe_stem

    sources = _checked_sources(images, f"{split} images")
    folder = Path(out_dir).expanduser() / LAYER_DATA_DIR / split
    for parent in (folder.parent.parent, folder.parent, folder):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"'{parent}' is a file; choose another output folder")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tif"):
        old.unlink()  # from an earlier call: the folder holds exactly these images
    for i, src in enumerate(sources):
        write_image(folder / f"{i:03d}_{safe_stem(src.name)}.tif", src.data, name=src.name)
    return folder


def train_2d_job_from(data: Any, out_dir: str | os.PathLike, *, task: str = "ae2d", **options):
    """The training job of a 2D task (``"ae2d"``: the autoencoders, ``"vae2d"``: the VAE,
    ``"mae2d"``: the masked autoencoder)
    for ``data`` (a folder or glob of images, or arrays / layers, written first with
    :func:`write_training_images_2d`) writing to ``out_dir``.

    Options are fields of the task's training config
    (:class:`~napari_sim_uq.tasks.ae2d.train.Train2DConfig`: ``epochs``, ``batch_size``,
    ``patch``, ``degrade``, ``model={...}``, ...;
    :class:`~napari_sim_uq.tasks.vae2d.train.TrainVAEConfig`: ``latent_dim``, ...);
    ``val_dir`` may be arrays / layers too. Options, images and the output folder are
    checked here, before the job starts and before anything is written
    (:class:`InputError`)."""
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.tasks import get_task

    task_obj = get_task(task)
    config_cls = task_obj.train_config

    if "data_dir" in options or "ckpt_dir" in options:
        raise InputError("give the training data and the output folder as the first two arguments")
    out = Path(out_dir).expanduser()
    val = options.pop("val_dir", None)

    def is_files(x):
        return isinstance(x, (str, os.PathLike))

    cfg = {
        **options,
        "ckpt_dir": str(out),
        "data_dir": str(data) if is_files(data) else "(layers)",
        "val_dir": None if val is None else (str(val) if is_files(val) else "(layers)"),
    }
    config_cls.from_dict(cfg).validate()
    if task == "ae2d":
        from napari_sim_uq.tasks.ae2d.net import AE2DConfig

        AE2DConfig.from_dict(dict(cfg.get("model") or {})).validate()
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder '{out}' is a file")
    if (out / "latest.pt").exists() and not cfg.get("resume"):
        raise InputError(
            f"'{out / 'latest.pt'}' exists: pass resume=True to continue that run, or choose "
            "another output folder"
        )
    from napari_sim_uq.core.data.loaders import resolve_files

    for files in (data, val):
        if files is not None and is_files(files):
            resolve_files(files)  # an empty glob, a missing folder: a clear error now
    # check the in-memory images now (writing them is part of the job)
    train_src = None if is_files(data) else _checked_sources(data, "training images")
    val_src = None if val is None or is_files(val) else _checked_sources(val, "validation images")

    def job():
        if train_src is not None or val_src is not None:
            yield Event("prepare", 0, 1, message=f"writing the layer images to {out} …")
        if train_src is not None:
            cfg["data_dir"] = str(write_training_images_2d(out, train_src, "train"))
        if val_src is not None:
            cfg["val_dir"] = str(write_training_images_2d(out, val_src, "val"))
        return (yield from task_obj.train(config_cls.from_dict(cfg)))

    return job()


def _checked_sources(images: Any, what: str) -> list[Image2DSource]:
    return [
        s if isinstance(s, Image2DSource) else image2d_source(s)
        for s in _training_items(images, what)
    ]


def train_2d(data_dir_or_layers: Any, out_dir: str | os.PathLike, **options) -> dict:
    """Train a 2D autoencoder (as ``sim-uq train-2d``); returns the training summary
    (``latest``/``best`` checkpoint paths, ``history``, ...).

    ``data_dir_or_layers``: a folder or glob of PNG/TIFF images, or a list of 2D arrays /
    napari image layers (written to ``out_dir/layer_data/train/`` first). Keywords are
    :class:`~napari_sim_uq.tasks.ae2d.train.Train2DConfig` fields (``epochs``,
    ``batch_size``, ``patch``, ``degrade``, ``val_dir``, ``model={"base_channels": 16,
    ...}``); unknown names raise.
    """
    from napari_sim_uq.core.events import run

    return run(train_2d_job_from(data_dir_or_layers, out_dir, **options))


# --------------------------------------------------------------------------- VAE posterior


def mask_from_layer(layer: Any, shape: tuple[int, int]) -> np.ndarray:
    """The *observed* pixels (bool ``shape``) given a napari layer that marks the
    **missing** ones: a Labels layer (label > 0 = missing) or a Shapes layer (inside any
    shape = missing). An array is taken as it is (1 / True = observed), as on the command
    line."""
    layer = getattr(layer, "__wrapped__", layer)  # napari hands plugins proxies of layers
    kind = type(layer).__name__
    if kind == "Labels":
        data = np.asarray(layer.data)
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
        if data.shape != tuple(shape):
            raise InputError(
                f"labels layer '{layer.name}' has shape {data.shape}, the image {tuple(shape)}; "
                "paint the missing region on a labels layer of the image's size"
            )
        return data == 0
    if kind == "Shapes":
        if len(layer.data) == 0:
            raise InputError(f"shapes layer '{layer.name}' has no shapes: draw the missing region")
        masks = np.asarray(layer.to_masks(mask_shape=tuple(shape)))
        return ~masks.reshape(-1, *shape).any(0)
    if _is_layer(layer):
        raise InputError(
            f"layer '{layer.name}' ({kind}) cannot be a mask: use a Labels or Shapes layer "
            "that marks the missing region"
        )
    return np.asarray(layer)


def posterior_2d_job(
    source: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mask: Any = None,
    noise_sigma: float | None = None,
    n_samples: int = 64,
    n_starts: int = 10,
    seed: int = 0,
    device: str = "cpu",
    **options: Any,
):
    """Job (generator of Events): load a VAE checkpoint and compute the posterior of
    ``source`` (an :class:`Image2DSource` or anything :func:`image2d_source` takes; NaN
    pixels are missing) with :func:`~napari_sim_uq.tasks.vae2d.reconstruct.posterior_2d`;
    returns its :class:`~napari_sim_uq.core.task.Prediction` with the model and parameters
    in ``meta``. ``mask``: 1 / True = observed (an array), or a Labels / Shapes layer marking
    the missing region (:func:`mask_from_layer`). Another task's checkpoint is refused."""
    from napari_sim_uq.tasks.vae2d.reconstruct import STAGE, load_vae_model, posterior_2d

    return (
        yield from _masked_image_job(
            source,
            mask,
            resolve_vae_checkpoint(checkpoint),
            STAGE,
            load_vae_model,
            device,
            posterior_2d,
            noise_sigma=noise_sigma,
            n_samples=n_samples,
            n_starts=n_starts,
            seed=seed,
            **options,
        )
    )


def _masked_image_job(source, mask, ckpt: Path, stage: str, load, device, task_job, **options):
    """Job: the 2D image ``source`` (NaN = missing) with ``mask`` (an array, 1 = observed,
    or a Labels / Shapes layer marking the missing region) through ``task_job(model, ck,
    image, mask=..., device=..., what=..., **options)`` with the checkpoint ``ckpt``."""
    if not isinstance(source, Image2DSource):
        source = image2d_source(source, allow_nan=True)
    if mask is not None:
        mask = mask_from_layer(mask, source.data.shape)

    def predict(model, ck, dev):
        return task_job(
            model, ck, source.data, mask=mask, device=dev, what=f"'{source.name}'", **options
        )

    return (yield from _checkpoint_job(ckpt, stage, load, device, predict))


def posterior_2d(
    layer_or_array: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mask: Any = None,
    noise_sigma: float | None = None,
    n_samples: int = 64,
    n_starts: int = 10,
    seed: int = 0,
    viewer: Any = None,
    device: str = "cpu",
    name: str | None = None,
    **options: Any,
):
    """Posterior reconstruction of a corrupted 2D image with a VAE (DeepUQ); layer tuples,
    or layers in ``viewer``.

    Gives ``"<name> MAP"``, ``"<name> posterior mean"``, ``"<name> posterior std"``,
    ``"<name> samples"`` (a stack to scroll) and, for an image no larger than the VAE's
    patch, ``"<name> modes"`` (one plane per posterior mode; weights in the layer
    metadata). ``mask``: observed pixels (array, 1 = observed) or a Labels / Shapes layer
    marking the missing region; NaN pixels are missing too. ``noise_sigma``: the noise std
    in the image's units (default: estimated from the image). ``checkpoint=None``: the
    bundled example VAE. Other keywords go to
    :func:`~napari_sim_uq.tasks.vae2d.reconstruct.posterior_2d` (``overlap``,
    ``model_error``, ``adam_steps``, ...). Bad input raises
    :class:`~napari_sim_uq.core.errors.InputError` before any layer is added.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.vae2d.reconstruct import POSTERIOR_OUTPUTS

    source = image2d_source(layer_or_array, name, allow_nan=True)
    pred = run(
        posterior_2d_job(
            source,
            checkpoint,
            mask=mask,
            noise_sigma=noise_sigma,
            n_samples=n_samples,
            n_starts=n_starts,
            seed=seed,
            device=device,
            **options,
        )
    )
    return _as_layers(pred, source, POSTERIOR_OUTPUTS, viewer)


def train_vae(data_dir_or_layers: Any, out_dir: str | os.PathLike, **options) -> dict:
    """Train the VAE of the posterior reconstruction on clean images (as ``sim-uq
    train-vae``); returns the training summary. ``data_dir_or_layers`` as for
    :func:`train_2d`; keywords are :class:`~napari_sim_uq.tasks.vae2d.train.TrainVAEConfig`
    fields (``epochs``, ``latent_dim``, ``patch``, ``val_dir``, ...)."""
    from napari_sim_uq.core.events import run

    return run(train_2d_job_from(data_dir_or_layers, out_dir, task="vae2d", **options))


def inpaint_2d_job(
    source: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mask: Any = None,
    mask_ratio: float | None = None,
    num_samples: int = 16,
    seed: int = 0,
    device: str = "cpu",
    **options: Any,
):
    """Job (generator of Events): load a masked-autoencoder checkpoint and inpaint
    ``source`` (an :class:`Image2DSource` or anything :func:`image2d_source` takes; NaN
    pixels are missing) with :func:`~napari_sim_uq.tasks.mae2d.inpaint.inpaint_2d`; returns
    its :class:`~napari_sim_uq.core.task.Prediction` with the model in ``meta``. ``mask``:
    1 / True = observed (an array), or a Labels / Shapes layer marking the missing region;
    ``mask_ratio``: hide that fraction of the tokens at random (then the metrics of the
    hidden pixels are in ``meta["metrics"]``). Another task's checkpoint is refused."""
    from napari_sim_uq.tasks.mae2d.inpaint import STAGE, inpaint_2d, load_mae_model

    return (
        yield from _masked_image_job(
            source,
            mask,
            resolve_mae_checkpoint(checkpoint),
            STAGE,
            load_mae_model,
            device,
            inpaint_2d,
            mask_ratio=mask_ratio,
            num_samples=num_samples,
            seed=seed,
            **options,
        )
    )


def inpaint_2d(
    layer_or_array: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    mask: Any = None,
    mask_ratio: float | None = None,
    num_samples: int = 16,
    seed: int = 0,
    viewer: Any = None,
    device: str = "cpu",
    name: str | None = None,
    **options: Any,
):
    """Masked reconstruction of a 2D image with a masked autoencoder; layer tuples, or
    layers in ``viewer``.

    Gives ``"<name> inpainted"`` (observed pixels kept, the reconstruction elsewhere),
    ``"<name> MAE std"`` (over ``num_samples`` stochastic passes, calibrated) and
    ``"<name> masked input"``. ``mask``: observed pixels (array, 1 =
    observed) or a Labels / Shapes layer marking the missing region; NaN pixels are missing
    too; ``mask_ratio``: hide that fraction of the tokens at random instead (a test on a
    complete image: the hidden pixels' PSNR, SSIM and std calibration go to the layer
    metadata). ``checkpoint=None``: the bundled example model. Other keywords go to
    :func:`~napari_sim_uq.tasks.mae2d.inpaint.inpaint_2d` (``drop_visible``, ``overlap``,
    ``baseline``, ...). Bad input raises :class:`~napari_sim_uq.core.errors.InputError`
    before any layer is added.
    """
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.mae2d.inpaint import INPAINT_OUTPUTS

    source = image2d_source(layer_or_array, name, allow_nan=True)
    pred = run(
        inpaint_2d_job(
            source,
            checkpoint,
            mask=mask,
            mask_ratio=mask_ratio,
            num_samples=num_samples,
            seed=seed,
            device=device,
            **options,
        )
    )
    return _as_layers(pred, source, INPAINT_OUTPUTS, viewer)


def train_mae(data_dir_or_layers: Any, out_dir: str | os.PathLike, **options) -> dict:
    """Train a masked autoencoder on clean images (as ``sim-uq train-mae``); returns the
    training summary. ``data_dir_or_layers`` as for :func:`train_2d`; keywords are
    :class:`~napari_sim_uq.tasks.mae2d.train.TrainMAEConfig` fields (``block``,
    ``mask_ratio``, ``epochs``, ``val_dir``, ``model={...}``, ...)."""
    from napari_sim_uq.core.events import run

    return run(train_2d_job_from(data_dir_or_layers, out_dir, task="mae2d", **options))


# --------------------------------------------------------------------------- classical SIM


def _sim_frames(source: SimSource, n_angles: int | None, n_phases: int | None):
    a = int(n_angles or source.angles or 3)
    p = int(n_phases or source.phases or 3)
    data = np.asarray(source.data)
    if data.ndim == 4 and data.shape[:2] == (a, p):
        data = data.reshape(a * p, *data.shape[2:])
    if data.ndim != 3 or data.shape[0] != a * p:
        raise InputError(
            f"{source.name}: expected one raw SIM stack of {a * p} frames ({a} angles x {p} "
            f"phases), got shape {tuple(data.shape)}"
        )
    return data, a, p


def match_sim_config(
    layer_or_array: Any,
    *,
    n_angles: int | None = None,
    n_phases: int | None = None,
    **options,
):
    """Generator settings that make training data like this raw SIM stack (as
    ``sim-uq generate --match``): ``(SynthConfig, report)`` with the estimated pattern
    period, orientation and modulation, PSF width, background, read noise and photons
    (one fixed instrument). Keywords: ``base`` (a SynthConfig whose other fields are kept),
    ``lr_size``, ``hr_factor`` and the estimation options (:func:`~napari_sim_uq.tasks.
    sim.classical.match.match_synth_config`); ``generate_sim(out, n, **cfg.to_dict())``
    then writes the data."""
    from napari_sim_uq.tasks.sim.classical.match import match_synth_config

    source = sim_source(layer_or_array)
    data, a, p = _sim_frames(source, n_angles, n_phases)
    return match_synth_config(data, a, p, **options)


def estimate_sim_patterns(
    layer_or_array: Any,
    *,
    n_angles: int | None = None,
    n_phases: int | None = None,
    **options,
):
    """Estimate the illumination (wave vectors, per-frame phases, modulation, PSF width)
    of one raw SIM stack without a model; returns a
    :class:`~napari_sim_uq.tasks.sim.classical.estimate.PatternEstimate` whose ``ok`` and
    ``messages`` say which angles failed and why. Keywords as
    :func:`~napari_sim_uq.tasks.sim.classical.estimate.estimate_patterns` (``psf_sigma``,
    ``binning``, ``period_range``, ``min_confidence``)."""
    from napari_sim_uq.tasks.sim.classical.estimate import estimate_patterns

    source = sim_source(layer_or_array)
    data, a, p = _sim_frames(source, n_angles, n_phases)
    return estimate_patterns(data, a, p, **options)


def pattern_diagnostics_layers(source: SimSource, estimate: Any) -> list[tuple]:
    """Layers to check an illumination estimate by eye, as in the reference SIM tools: the
    log power spectrum of the raw frames (mean over frames, zero frequency in the centre)
    and a Points layer with the estimated carriers ``+-k_a`` of every angle, labelled with
    the angle, period, modulation and whether the estimate passed its checks. The
    spectrum sits to the right of the raw frames (its own grid: one pixel per frequency
    bin), hidden until the user shows it."""
    data = np.asarray(source.data, dtype=np.float64)
    frames = data.reshape(-1, *data.shape[-2:])
    h, w = frames.shape[-2:]
    power = np.abs(np.fft.fft2(frames - frames.mean(axis=(-2, -1), keepdims=True))) ** 2
    spec = np.fft.fftshift(np.log10(power.mean(axis=0) + 1e-12)).astype(np.float32)
    sc = tuple(float(v) for v in source.scale[-2:])
    tr = (float(source.translate[-2]), float(source.translate[-1]) + (w + 4) * sc[1])
    cy, cx = h // 2, w // 2  # the centre bin after fftshift
    points, labels, ok = [], [], []
    for a, k in enumerate(estimate.wave_vectors):
        for sgn in (1, -1):
            points.append((cy + sgn * k[1] * h, cx + sgn * k[0] * w))
            labels.append(
                f"angle {a}: period {estimate.periods[a]:.3f} px, m {estimate.modulation[a]:.2f}"
                + ("" if estimate.ok[a] else " (failed)")
            )
            ok.append(bool(estimate.ok[a]))
    meta = {"sim_uq": {"output": "pattern_diagnostics", "source": source.name}}
    spectrum = (
        spec,
        {
            "name": f"{source.name} power spectrum",
            "scale": sc,
            "translate": tr,
            "colormap": "magma",
            "visible": False,
            "metadata": {**meta, "patterns": estimate.to_dict()},
        },
        "image",
    )
    carriers = (
        np.asarray(points, np.float64).reshape(-1, 2),
        {
            "name": f"{source.name} carriers",
            "scale": sc,
            "translate": tr,
            "size": max(3.0, 0.04 * min(h, w)),
            "symbol": "ring",
            "face_color": "transparent",
            "border_color": ["cyan" if v else "red" for v in ok],
            "properties": {"label": labels, "ok": ok},
            "text": {"string": "{label}", "size": 8, "color": "white", "anchor": "upper_left"},
            "visible": False,
            "metadata": meta,
        },
        "points",
    )
    return [spectrum, carriers]


def estimated_pattern_layers(
    source: SimSource, estimate: Any, hr_factor: int = 2, sigma_scale: float | None = None
) -> list[tuple]:
    """The parametric light patterns of an illumination estimate and their std as layers
    ``"<source> light pattern (estimated)"`` / ``"... std"`` on the HR grid
    (:func:`~napari_sim_uq.tasks.sim.classical.patterns.parametric_patterns`). The std
    counts the parameters' noise only; ``sigma_scale`` (stored by ``sim-uq calibrate`` in
    a SIM checkpoint) calibrates it, and the metadata says whether it was applied."""
    from napari_sim_uq.core.io.outputs import hr_scale_translate
    from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns

    mean, std = parametric_patterns(estimate, hr_factor)
    if sigma_scale is not None:
        std = std * np.float32(sigma_scale)
    sc, tr = hr_scale_translate(source.scale[-2:], source.translate[-2:], hr_factor)
    meta = {
        "sim_uq": {
            "output": "light_pattern_estimated",
            "source": source.name,
            "std_sigma_scale": sigma_scale,
            "std_note": "parameter noise only"
            + ("" if sigma_scale is None else ", times the scale fitted by sim-uq calibrate")
            + (": not calibrated, too small" if sigma_scale is None else ""),
        }
    }
    kw = {"scale": (1.0, *sc), "translate": (0.0, *tr), "visible": False, "metadata": meta}
    name = f"{source.name} light pattern (estimated)"
    return [
        (mean, {"name": name, "colormap": "inferno", **kw}, "image"),
        (std, {"name": f"{name} std", "colormap": "magma", **copy.deepcopy(kw)}, "image"),
    ]


def wiener_sim(
    layer_or_array: Any,
    viewer: Any = None,
    *,
    hr_factor: int = 2,
    name: str | None = None,
    n_angles: int | None = None,
    n_phases: int | None = None,
    estimate: Any = None,
    diagnostics: bool = False,
    patterns: bool = False,
    pattern_sigma_scale: float | None = None,
    **options,
):
    """Classical Wiener SIM reconstruction of one raw stack (as ``sim-uq wiener``): the
    illumination is estimated from the stack (or taken from ``estimate``), the bands are
    separated and combined by a generalised Wiener filter. Returns an image layer tuple
    ``"<source> Wiener SIM"`` on the HR grid (the estimate in its metadata), or adds it to
    ``viewer``. Keywords: ``wiener``, ``otf_floor``, ``apodization_bend``, ``psf_sigma``,
    ``binning``, ``period_range``, ... (:func:`~napari_sim_uq.tasks.sim.classical.wiener.
    wiener_sim_array`). ``diagnostics``: also the power-spectrum and carrier layers of
    :func:`pattern_diagnostics_layers`. A stack whose pattern cannot be estimated raises
    an :class:`InputError` that says why."""
    from napari_sim_uq.core.io.outputs import hr_scale_translate
    from napari_sim_uq.tasks.sim.classical.wiener import wiener_sim_array

    source = sim_source(layer_or_array, name)
    data, a, p = _sim_frames(source, n_angles, n_phases)
    res = wiener_sim_array(data, estimate, hr_factor=hr_factor, n_angles=a, n_phases=p, **options)
    sc, tr = hr_scale_translate(source.scale[-2:], source.translate[-2:], res.params["hr_factor"])
    layer = (
        res.image,
        {
            "name": f"{source.name} Wiener SIM",
            "scale": sc,
            "translate": tr,
            "colormap": "gray",
            "metadata": {
                "sim_uq": {
                    "output": "wiener",
                    "source": source.name,
                    "wiener": res.params,
                    "patterns": res.estimate.to_dict(),
                }
            },
        },
        "image",
    )
    layers = [layer]
    if patterns:
        layers += estimated_pattern_layers(
            source, res.estimate, res.params["hr_factor"], pattern_sigma_scale
        )
    if diagnostics:
        layers += pattern_diagnostics_layers(source, res.estimate)
    if viewer is not None:
        return add_or_replace_layers(viewer, layers)
    return layers
