"""The per-pixel std scales of a VAE posterior calibration table (fitted by
:mod:`.calibrate`, applied by :mod:`.reconstruct`): pixel classes by distance to the data
and predicted intensity, and the stretch of the samples about their mean."""

from __future__ import annotations

import numpy as np

__all__ = [
    "DISTANCE_EDGES",
    "INTENSITY_THRESHOLD",
    "N_BINS",
    "apply_calibration",
    "distance_to_observed",
    "pixel_classes",
    "pixel_scales",
]

#: upper edges (pixels) of the distance bins of missing pixels; the last bin is open
DISTANCE_EDGES = (2.0, 4.0, 8.0, 16.0)
#: background / structure boundary of the posterior mean (normalised units)
INTENSITY_THRESHOLD = 0.25
N_BINS = len(DISTANCE_EDGES) + 1


def distance_to_observed(observed: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of every pixel to the nearest observed one (0 on
    observed pixels)."""
    from scipy import ndimage

    if observed.all():
        return np.zeros(observed.shape)
    return ndimage.distance_transform_edt(~observed)


def _bin(dist: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(DISTANCE_EDGES), dist, side="left")


def pixel_classes(observed: np.ndarray, mean_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distance class, intensity class)`` per pixel: ``0`` observed or ``1 + bin`` for
    missing pixels; ``0`` background or ``1`` structure (posterior mean, normalised)."""
    where = np.zeros(observed.shape, int)
    if not observed.all():
        where[~observed] = 1 + _bin(distance_to_observed(observed)[~observed])
    return where, (mean_norm >= INTENSITY_THRESHOLD).astype(int)


def pixel_scales(table: dict, observed: np.ndarray, mean_norm: np.ndarray) -> np.ndarray:
    """The per-pixel std scale of a calibration ``table`` for a mask ``observed`` and the
    posterior mean ``mean_norm`` (normalised units)."""
    where, level = pixel_classes(observed, mean_norm)
    return np.asarray(table["scales"])[where, level]


def apply_calibration(samples: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Stretch each pixel's samples about their mean by its scale (in place, returned)."""
    mean = samples.mean(0)
    samples -= mean
    samples *= scales.astype(samples.dtype)
    samples += mean
    return samples
