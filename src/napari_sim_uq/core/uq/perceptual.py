"""Optional perceptual metrics: LPIPS and FID, computed only from weights already on disk.

Nothing here downloads anything. LPIPS needs the third-party ``lpips`` package *and* its
torchvision backbone weights in the torch hub cache (or in a folder the caller names);
when either is missing :func:`lpips_distance` returns ``None`` and
:func:`perceptual_metrics` reports a one-line skip message. FID works on feature vectors
(:func:`fid`) or on images through a feature extractor the user supplies
(:func:`fid_from_images`): a TorchScript file (``torch.jit.save``), a ``torch.export``
``.pt2`` file, or any callable. The Frechet distance itself is NumPy/SciPy.

Importing this module does not import torch. Bad input raises
:class:`napari_sim_uq.core.errors.InputError`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import linalg

from napari_sim_uq.core.errors import FileFormatError, InputError

__all__ = [
    "LPIPS_BACKBONE_FILES",
    "frechet_distance",
    "fid",
    "feature_statistics",
    "extract_features",
    "fid_from_images",
    "lpips_backbone_path",
    "lpips_distance",
    "lpips_status",
    "perceptual_metrics",
]

#: torchvision checkpoint file of each LPIPS backbone, as stored in ``<hub>/checkpoints/``.
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
_BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16", "squeeze": "SqueezeNet 1.1"}
_LPIPS_MODELS: dict = {}  # (package id, net, hub dir, device) -> built model


# ----------------------------------------------------------------------------------- FID


def _array(a: Any, name: str, fn: str) -> np.ndarray:
    if a is None:
        raise InputError(f"{fn}: {name} is missing (got None)")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{fn}: {name} must be a real numeric array ({err})") from None
    n_bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        raise InputError(f"{fn}: {name} contains {n_bad} NaN or infinite value(s)")
    return arr


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    ev, vec = linalg.eigh(c)
    return (vec * np.sqrt(np.clip(ev, 0.0, None))) @ vec.T


def _check_cov(c: np.ndarray, d: int, name: str, fn: str) -> np.ndarray:
    if c.shape != (d, d):
        raise InputError(f"{fn}: {name} must have shape ({d}, {d}), got {c.shape}")
    scale = max(float(np.max(np.abs(c))), np.finfo(np.float64).tiny)
    if np.max(np.abs(c - c.T)) > 1e-8 * scale:
        raise InputError(f"{fn}: {name} must be symmetric (a covariance matrix)")
    c = 0.5 * (c + c.T)
    lo = float(linalg.eigvalsh(c)[0])
    if lo < -1e-8 * scale * d:
        raise InputError(
            f"{fn}: {name} is not positive semi-definite (smallest eigenvalue {lo:.3g})"
        )
    return c


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Frechet distance between the Gaussians N(mu1, cov1) and N(mu2, cov2).

    ``|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2))``. The trace of the matrix
    square root is computed as ``sum sqrt(eig(S1 C2 S1))`` with ``S1 = C1^(1/2)`` (a
    symmetric positive semi-definite matrix with the same eigenvalues as ``C1 C2``), so
    it is real by construction and stays defined for singular covariances (fewer samples
    than feature dimensions); it equals ``tr(scipy.linalg.sqrtm(C1 @ C2))`` without that
    function's spurious imaginary parts. Rounding below zero is returned as 0.
    """
    fn = "frechet_distance"
    m1, m2 = _array(mu1, "mu1", fn), _array(mu2, "mu2", fn)
    if m1.ndim != 1 or m1.size == 0 or m1.shape != m2.shape:
        raise InputError(
            f"{fn}: mu1 and mu2 must be 1D vectors of one length, got {m1.shape}, {m2.shape}"
        )
    d = m1.size
    c1 = _check_cov(np.atleast_2d(_array(cov1, "cov1", fn)), d, "cov1", fn)
    c2 = _check_cov(np.atleast_2d(_array(cov2, "cov2", fn)), d, "cov2", fn)
    s1 = _psd_sqrt(c1)
    mid = s1 @ c2 @ s1
    ev = linalg.eigvalsh(0.5 * (mid + mid.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    diff = m1 - m2
    fd = float(diff @ diff) + float(np.trace(c1)) + float(np.trace(c2)) - 2.0 * tr_sqrt
    return max(fd, 0.0)


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and sample covariance ``(D, D)`` (``ddof=1``) of ``(N, D)`` features."""
    fn = "feature_statistics"
    f = _array(features, "features", fn)
    return _stats(f, "features", fn)


def _stats(f: np.ndarray, name: str, fn: str) -> tuple[np.ndarray, np.ndarray]:
    if f.ndim != 2 or f.shape[1] == 0:
        raise InputError(f"{fn}: {name} must have shape (N, D), got {f.shape}")
    if f.shape[0] < 2:
        raise InputError(
            f"{fn}: {name} needs at least 2 samples for a covariance, got {f.shape[0]}"
        )
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def fid(real_features: Any, fake_features: Any) -> float:
    """Frechet (Inception) distance between two feature sets of shape ``(N, D)``.

    Mean and sample covariance (``ddof=1``) of each set, then :func:`frechet_distance`.
    The two sets may differ in ``N`` but not in ``D``. FID is biased for small ``N``:
    compare values computed with the same number of samples and the same extractor.
    """
    fn = "fid"
    a = _array(real_features, "real_features", fn)
    b = _array(fake_features, "fake_features", fn)
    mu1, c1 = _stats(a, "real_features", fn)
    mu2, c2 = _stats(b, "fake_features", fn)
    if mu1.shape != mu2.shape:
        raise InputError(
            f"{fn}: real_features and fake_features must have the same feature dimension, "
            f"got {a.shape[1]} and {b.shape[1]}"
        )
    return frechet_distance(mu1, c1, mu2, c2)


def _load_extractor(extractor: Any, device: Any, fn: str) -> Callable:
    import torch

    if isinstance(extractor, (str, os.PathLike)):
        path = Path(extractor)
        if not path.is_file():
            raise InputError(f"{fn}: feature extractor file {path} does not exist")
        try:
            if path.suffix == ".pt2":
                model = torch.export.load(str(path)).module().to(device)
            else:
                with warnings.catch_warnings():  # TorchScript is deprecated, still works
                    warnings.simplefilter("ignore", DeprecationWarning)
                    model = torch.jit.load(str(path), map_location=device)
                model.eval()
        except Exception as err:
            raise FileFormatError(
                f"{fn}: cannot load {path} as a TorchScript (or torch.export .pt2) feature "
                f"model: {type(err).__name__}: {err}"
            ) from None
        return model
    if callable(extractor):
        return extractor
    raise InputError(
        f"{fn}: extractor must be a path to a TorchScript/.pt2 feature model or a callable, "
        f"got {type(extractor).__name__}"
    )


def _default_device(images: Any, extractor: Any):
    import torch

    if isinstance(images, torch.Tensor):
        return images.device
    if isinstance(extractor, torch.nn.Module):
        p = next(extractor.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _image_stack(images: Any, name: str, fn: str):
    import torch

    if isinstance(images, torch.Tensor):
        t = images.detach()
        if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
    else:
        t = torch.from_numpy(_array(images, name, fn)).float()
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[0] == 0 or t[0].numel() == 0:
        raise InputError(
            f"{fn}: {name} must be a non-empty stack (N, H, W) or (N, C, H, W), "
            f"got shape {tuple(t.shape)}"
        )
    n_bad = int((~torch.isfinite(t)).sum())
    if n_bad:
        raise InputError(f"{fn}: {name} contains {n_bad} NaN or infinite value(s)")
    return t


def _extract(model: Callable, stack: Any, device: Any, batch_size: int, fn: str) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, stack.shape[0], batch_size):
            batch = stack[i : i + batch_size].to(device)
            try:
                f = model(batch)
            except Exception as err:
                raise InputError(
                    f"{fn}: the feature extractor failed on a batch of shape "
                    f"{tuple(batch.shape)}: {type(err).__name__}: {err}"
                ) from err
            if not isinstance(f, torch.Tensor) or f.ndim < 1 or f.shape[0] != batch.shape[0]:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise InputError(
                    f"{fn}: the feature extractor must return a tensor with one row per "
                    f"image ({batch.shape[0]}), got {got}"
                )
            out.append(f.reshape(f.shape[0], -1).detach().cpu().double().numpy())
    return np.concatenate(out, axis=0)


def extract_features(
    images: Any, extractor: Any, *, batch_size: int = 64, device: Any = None
) -> np.ndarray:
    """Features ``(N, D)`` (float64) of an image stack through a feature extractor.

    ``images``: ``(N, H, W)`` (a channel axis of 1 is added) or ``(N, C, H, W)``, NumPy or
    torch; they reach the extractor as float32 (or the tensor's float dtype) batches of
    ``(b, C, H, W)`` on ``device``, unchanged otherwise, so resizing, intensity scaling and
    channel repetition belong inside the extractor. ``extractor``: a TorchScript file
    (loaded with ``torch.jit.load(path, map_location=device)``), a ``torch.export``
    ``.pt2`` file, or a callable (used as is, e.g. an ``nn.Module`` already in eval mode).
    Outputs are flattened per image (``(b, D, 1, 1)`` -> ``(b, D)``). ``device`` defaults
    to the images' device (tensor input), else the callable module's, else the CPU.
    """
    fn = "extract_features"
    bs = _batch_size(batch_size, fn)
    dev = device if device is not None else _default_device(images, extractor)
    model = _load_extractor(extractor, dev, fn)
    return _extract(model, _image_stack(images, "images", fn), dev, bs, fn)


def _batch_size(v: Any, fn: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{fn}: batch_size must be an integer >= 1, got {v!r}")
    return int(v)


def fid_from_images(
    real: Any, fake: Any, extractor: Any, *, batch_size: int = 64, device: Any = None
) -> float:
    """FID between two image stacks through a user-given feature extractor.

    The extractor is loaded once and applied to both stacks as in
    :func:`extract_features`; then :func:`fid`. Each stack needs at least 2 images (and,
    for a meaningful value, many more images than feature dimensions). Nothing is
    downloaded: the extractor and its weights must be supplied by the caller.
    """
    fn = "fid_from_images"
    bs = _batch_size(batch_size, fn)
    dev = device if device is not None else _default_device(real, extractor)
    model = _load_extractor(extractor, dev, fn)
    fr = _extract(model, _image_stack(real, "real", fn), dev, bs, fn)
    ff = _extract(model, _image_stack(fake, "fake", fn), dev, bs, fn)
    for name, f in (("real", fr), ("fake", ff)):
        if f.shape[0] < 2:
            raise InputError(f"{fn}: {name} needs at least 2 images, got {f.shape[0]}")
    return fid(fr, ff)


# --------------------------------------------------------------------------------- LPIPS


def lpips_backbone_path(net: str = "alex", weights: Any = None) -> Path:
    """Where the LPIPS backbone checkpoint must be: ``<hub>/checkpoints/<file>``.

    ``weights``: ``None`` for the torch hub cache (``torch.hub.get_dir()``, i.e.
    ``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``); a folder used as the hub
    folder instead (it must hold ``checkpoints/<file>``); or the checkpoint file itself,
    if it is named as torchvision names it (:data:`LPIPS_BACKBONE_FILES`) and lies in a
    folder called ``checkpoints``.
    """
    fn = "lpips_backbone_path"
    if net not in LPIPS_BACKBONE_FILES:
        raise InputError(f"{fn}: net must be one of {tuple(LPIPS_BACKBONE_FILES)}, got {net!r}")
    fname = LPIPS_BACKBONE_FILES[net]
    if weights is None:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / fname
    p = Path(weights)
    if p.is_file() or p.suffix == ".pth":
        if p.name != fname or p.parent.name != "checkpoints":
            raise InputError(
                f"{fn}: a weights file must be torchvision's {fname} inside a folder named "
                f"'checkpoints', got {p}; or pass the folder that holds checkpoints/{fname}"
            )
        return p
    return p / "checkpoints" / fname


def _missing_backbone(net: str, path: Path) -> str:
    return (
        f"LPIPS skipped: the {_BACKBONE_NAMES[net]} backbone weights are not on disk "
        f"({path}; copy torchvision's {path.name} there, nothing is downloaded)"
    )


def _import_lpips():
    """``(module, None)`` or ``(None, skip message)``."""
    try:
        import lpips as lpips_pkg
    except ModuleNotFoundError as err:
        if err.name not in (None, "lpips"):
            return None, f"LPIPS skipped: importing `lpips` failed (missing module {err.name!r})"
        return None, (
            "LPIPS skipped: the `lpips` package is not installed (pip install lpips; its "
            "AlexNet weights must be in the torch hub cache, nothing is downloaded)"
        )
    except Exception as err:  # a broken installation
        return None, f"LPIPS skipped: importing `lpips` failed ({type(err).__name__}: {err})"
    return lpips_pkg, None


def _lpips_model(net: str, weights: Any, device: Any):
    """``(model, None)`` or ``(None, skip message)``; never downloads."""
    import torch

    pkg, msg = _import_lpips()
    if pkg is None:
        return None, msg
    path = lpips_backbone_path(net, weights)
    if not path.is_file():
        return None, _missing_backbone(net, path)
    hub = path.parent.parent
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (id(pkg), net, str(hub.resolve()), str(dev))
    if key in _LPIPS_MODELS:
        return _LPIPS_MODELS[key], None
    previous = torch.hub.get_dir()
    switch = Path(previous).resolve() != hub.resolve()
    try:
        if switch:  # torchvision looks for the backbone in <hub>/checkpoints
            torch.hub.set_dir(str(hub))
        model = pkg.LPIPS(net=net, verbose=False)
    except Exception as err:
        return None, f"LPIPS skipped: building the model failed ({type(err).__name__}: {err})"
    finally:
        if switch:
            torch.hub.set_dir(previous)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _LPIPS_MODELS[key] = model
    return model, None


def lpips_status(net: str = "alex", weights: Any = None) -> str | None:
    """``None`` if LPIPS can be computed here, else the one-line skip message.

    Checks that ``lpips`` imports and that the backbone file exists; builds nothing.
    """
    pkg, msg = _import_lpips()
    if pkg is None:
        return msg
    path = lpips_backbone_path(net, weights)
    if not path.is_file():
        return _missing_backbone(net, path)
    return None


def _lpips_inputs(x: Any, ref: Any, value_range: Any, device: Any, fn: str):
    """Both images as float32 ``(B, 3, H, W)`` in [-1, 1] on one device."""
    import torch

    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise InputError(f"{fn}: value_range must be (low, high), got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise InputError(f"{fn}: value_range must be finite with high > low, got {value_range!r}")
    out = []
    for name, a in (("x", x), ("ref", ref)):
        t = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(_array(a, name, fn))
        t = t.float()
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[:, None]
        if t.ndim != 4 or t.shape[1] not in (1, 3) or t.shape[0] == 0 or t[0].numel() == 0:
            raise InputError(
                f"{fn}: {name} must be (H, W), (B, H, W), (B, 1, H, W) or (B, 3, H, W), "
                f"got shape {tuple(a.shape)}"
            )
        n_bad = int((~torch.isfinite(t)).sum())
        if n_bad:
            raise InputError(f"{fn}: {name} contains {n_bad} NaN or infinite value(s)")
        out.append(t)
    X, Y = out
    if X.shape != Y.shape:
        raise InputError(
            f"{fn}: x and ref must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}"
        )
    dev = device if device is not None else (x.device if isinstance(x, torch.Tensor) else None)
    dev = torch.device(dev) if dev is not None else torch.device("cpu")
    X, Y = ((2.0 * (t - lo) / (hi - lo) - 1.0).to(dev) for t in (X, Y))
    if X.shape[1] == 1:
        X, Y = X.expand(-1, 3, -1, -1), Y.expand(-1, 3, -1, -1)
    return X, Y, dev


def _lpips_run(model: Any, X: Any, Y: Any):
    import torch

    with torch.no_grad():
        d = model(X, Y)
    return d.reshape(X.shape[0], -1).mean(dim=1)


def lpips_distance(
    x: Any,
    ref: Any,
    weights: Any = None,
    *,
    net: str = "alex",
    value_range: tuple[float, float] = (0.0, 1.0),
    device: Any = None,
):
    """Per-image LPIPS distance ``(B,)`` (float32 tensor), or ``None`` if unavailable.

    Uses the ``lpips`` package (``lpips.LPIPS(net=net)``, its linear layers shipped with
    the package) only if it imports *and* the backbone checkpoint is already on disk
    (:func:`lpips_backbone_path`; ``weights`` as there). The file is checked before
    anything is built, so nothing is downloaded; otherwise ``None`` is returned
    (:func:`lpips_status` gives the reason). ``x``/``ref``: ``(H, W)``, ``(B, H, W)``,
    ``(B, 1, H, W)`` or ``(B, 3, H, W)``; gray images are repeated to 3 channels and
    ``value_range`` is mapped linearly to LPIPS's [-1, 1]. The model is built once per
    (net, weights folder, device) and cached.
    """
    fn = "lpips_distance"
    X, Y, dev = _lpips_inputs(x, ref, value_range, device, fn)
    model, _ = _lpips_model(net, weights, dev)
    if model is None:
        return None
    return _lpips_run(model, X, Y)


def perceptual_metrics(
    x: Any,
    ref: Any,
    *,
    lpips: bool = True,
    fid_extractor: Any = None,
    lpips_weights: Any = None,
    lpips_net: str = "alex",
    value_range: tuple[float, float] = (0.0, 1.0),
    device: Any = None,
    batch_size: int = 64,
) -> tuple[dict, list[str]]:
    """The perceptual metrics that can be computed here, and why the others were not.

    Returns ``(values, skipped)``. ``values`` may hold ``"lpips"`` (per-image tensor
    ``(B,)``, see :func:`lpips_distance`) and ``"fid"`` (a float: FID between the image
    sets ``ref`` (real) and ``x`` (generated) through ``fid_extractor``, see
    :func:`fid_from_images`; needs at least 2 images per set). ``skipped`` holds one line
    per metric not computed: LPIPS (unless ``lpips=False``) when the ``lpips`` package or
    its backbone weights are missing, FID when no extractor is given or a set has fewer
    than 2 images. Nothing is downloaded.
    """
    values: dict = {}
    skipped: list[str] = []
    if lpips:
        X, Y, dev = _lpips_inputs(x, ref, value_range, device, "perceptual_metrics")
        model, msg = _lpips_model(lpips_net, lpips_weights, dev)
        if model is None:
            skipped.append(msg)
        else:
            values["lpips"] = _lpips_run(model, X, Y)
    if fid_extractor is None:
        skipped.append(
            "FID skipped: no feature extractor given (pass fid_extractor=, a TorchScript or "
            ".pt2 file or a callable returning (N, D) features; nothing is downloaded)"
        )
    else:
        n = min(_n_images(x), _n_images(ref))
        if n < 2:
            skipped.append(f"FID skipped: it needs at least 2 images per set, got {n}")
        else:
            values["fid"] = fid_from_images(
                ref, x, fid_extractor, batch_size=batch_size, device=device
            )
    return values, skipped


def _n_images(a: Any) -> int:
    shape = tuple(getattr(a, "shape", np.shape(a)))
    return 1 if len(shape) <= 2 else int(shape[0])
