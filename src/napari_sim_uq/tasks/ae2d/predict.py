"""2D reconstruction with uncertainty: a trained autoencoder applied to one image.

:func:`predict_2d` (a job) normalises the image with the checkpoint's rule (per image,
as in training), optionally degrades it first (the widget's "degrade first"), runs the
tiled, batched MC-dropout prediction of the core
(:func:`~napari_sim_uq.core.uq.predict.mc_tiled_predict`) and maps the results back to the
image's units. Arrays (keys of :data:`AE2D_OUTPUTS`):

- ``mean``: the reconstruction (mean over the MC samples);
- ``epistemic_std``: the std of the MC means (MC dropout; ``mc_samples > 1``);
- ``aleatoric_std``: the root of the mean predicted variance (variance head);
- ``std``: the total, ``sqrt(epistemic^2 + aleatoric^2)``;
- with ``scores=True``, ``anomaly_score``: ``(x - mu)^2 / sigma^2`` per pixel of the input
  ``x`` (DESIGN.md 5), and ``meta["image_score"]`` its mean.

Every std is multiplied by the checkpoint's sigma-scale (``sigma_scale["mean"]``, fitted by
:func:`~napari_sim_uq.tasks.ae2d.calibrate.calibrate_2d_job`) and then, if the checkpoint
holds one (``extra["sigma_map"]``), mapped by its monotone sigma map
(:class:`~napari_sim_uq.core.uq.calibrate.SigmaMap`; or one such map per class of the
predicted intensity, :class:`~napari_sim_uq.core.uq.calibrate.ClassSigmaMap`), applied to
the total std in normalised units; the parts get the same per-pixel factor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.outputs import OutputSpec
from napari_sim_uq.core.task import Prediction

__all__ = ["AE2D_OUTPUTS", "ANOMALY_OUTPUTS", "load_ae2d_model", "predict_2d"]

AE2D_OUTPUTS = (
    OutputSpec("mean", "mean", "gray", "raw", visible=True),
    OutputSpec("std", "std", "magma", "raw"),
    OutputSpec("epistemic_std", "epistemic std", "magma", "raw"),
    OutputSpec("aleatoric_std", "aleatoric std", "magma", "raw"),
    OutputSpec("degraded", "degraded", "gray", "raw"),
)
ANOMALY_OUTPUTS = (OutputSpec("anomaly_score", "anomaly score", "inferno", "raw", visible=True),)

STAGE = "reconstruct 2D"


def load_ae2d_model(checkpoint: Any, device: Any = "cpu"):
    """``(model in eval mode, Checkpoint)`` of a 2D autoencoder checkpoint; a clear error
    for a missing, damaged or another task's checkpoint."""
    from napari_sim_uq.tasks import load_task_model
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig, build_model

    return load_task_model(
        checkpoint, "ae2d", lambda cfg: build_model(AE2DConfig.from_dict(cfg)), device
    )


def _normalization(ck, image: np.ndarray, what: str):
    from napari_sim_uq.core.data.normalization import Normalization

    mode = (ck.normalization or {}).get("mode", "percentile")
    return Normalization(mode).fit(image, what)


def predict_2d(
    model,
    ck,
    image: Any,
    *,
    mc_samples: int = 30,
    mc_batch: int | None = None,
    tile: int | None = 256,
    overlap: int | None = 32,
    seed: int = 0,
    device: Any = "cpu",
    degrade: Any = None,
    degrade_seed: int = 0,
    scores: bool = False,
    what: str = "image",
):
    """Reconstruct ``image`` (``(H, W)``, any real dtype; RGB is converted with a warning);
    a job returning a :class:`~napari_sim_uq.core.task.Prediction` (module docstring).

    ``degrade``: a degradation spec (``"noise:0.1"``, ...) applied to the normalised image
    before the reconstruction (the degraded input is returned as ``degraded``), or ``None``.
    ``scores``: also the per-pixel anomaly score of the (possibly degraded) input.
    """
    import torch

    from napari_sim_uq.core.data.degrade import degrade_array
    from napari_sim_uq.core.data.images2d import image_from_array
    from napari_sim_uq.core.uq.calibrate import sigma_map_ratio, stored_sigma_map
    from napari_sim_uq.core.uq.predict import mc_tiled_predict, total_std

    img = _as_gray(image, what)
    img = image_from_array(img, what, min_size=model.min_size)
    norm = _normalization(ck, img, what)
    x = norm.apply(img).astype(np.float32)
    degraded = None
    if degrade is not None and str(degrade).strip().lower() not in ("", "none"):
        x, _ = degrade_array(x, degrade, degrade_seed)
        degraded = x

    def pass_fn(xb: torch.Tensor):
        out = model(xb)
        return {"mean": (out.mean, out.var)}

    arrays, meta = yield from mc_tiled_predict(
        pass_fn,
        x,
        model=model,
        multiple=model.multiple,
        tile=tile,
        overlap=overlap,
        mc_samples=mc_samples,
        mc_batch=mc_batch,
        seed=seed,
        device=device,
        stage=STAGE,
    )
    scale = float((ck.sigma_scale or {}).get("mean", 1.0))
    mu = arrays["mean"][0]
    stds = total_std({k: v[0] for k, v in arrays.items()}, "mean", scale)
    smap = stored_sigma_map(ck, "mean")
    if smap is not None and stds["std"] is not None:
        # the monotone map acts on the total std (after the scale); each part gets the same
        # per-pixel factor, so total^2 = epistemic^2 + aleatoric^2 still holds; a per-class
        # map also takes the predicted intensity (normalised units)
        ratio = sigma_map_ratio(smap, stds["std"], mu)
        stds = {k: None if v is None else (v * ratio).astype(np.float32) for k, v in stds.items()}
    out: dict[str, Any] = {"mean": norm.invert(mu).astype(np.float32)}
    for key, sd in (
        ("std", stds["std"]),
        ("epistemic_std", stds["epistemic_std"]),
        ("aleatoric_std", stds["aleatoric_std"]),
    ):
        out[key] = None if sd is None else norm.invert_std(sd).astype(np.float32)
    if degraded is not None:
        out["degraded"] = norm.invert(degraded).astype(np.float32)
    if scores:
        sd = stds["std"]
        if sd is None:
            raise InputError(
                "anomaly scores need a predicted std: use a model with a variance head "
                "(--model hetero) or MC dropout (mc_samples > 1)"
            )
        z2 = (x - mu) ** 2 / np.maximum(sd, 1e-12) ** 2
        out["anomaly_score"] = z2.astype(np.float32)
        meta["image_score"] = float(z2.mean())
        meta["mse_score"] = float(((x - mu) ** 2).mean())
    meta.update(
        {
            "normalization": norm.to_dict(),
            "sigma_scale": scale,
            "sigma_map": smap is not None,
            "degrade": None if degraded is None else str(degrade),
            "model": dict(ck.config.get("model", {})),
        }
    )
    return Prediction(out, meta)


def _as_gray(image: Any, what: str) -> Any:
    """RGB(A) ``(H, W, 3|4)`` arrays -> luminance, with a warning; anything else as is."""
    import warnings

    a = image
    if hasattr(a, "shape") and len(a.shape) == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        from napari_sim_uq.core.data.images2d import LUMA_WEIGHTS

        warnings.warn(
            f"{what}: a colour (RGB) image was converted to grey (luminance) for the 2D model",
            UserWarning,
            stacklevel=3,
        )
        a = np.asarray(a, np.float64)[..., :3] @ np.asarray(LUMA_WEIGHTS)
    return a
