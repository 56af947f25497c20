"""Array layouts the plugin understands, and how to tell them apart.

A raw SIM acquisition is ``A`` angles x ``P`` phases of frames. The plugin accepts

=============  ====================  =====================================
layout         array shape           axis labels
=============  ====================  =====================================
``image2d``    ``(H, W)``            ``("y", "x")``
``sim``        ``(A*P, H, W)``       ``("frame", "y", "x")``, angle-major
``sim_ap``     ``(A, P, H, W)``      ``("angle", "phase", "y", "x")``
``sim_t``      ``(T, A*P, H, W)``    ``("t", "frame", "y", "x")``
=============  ====================  =====================================

Frames are angle-major: ``frame = a * P + p``. Without metadata a 9-frame stack is read
as 3 angles x 3 phases; other frame counts need the number of angles and phases from the
file's metadata (or from the caller).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from napari_sim_uq.core.errors import InputError

DEFAULT_ANGLES = 3
DEFAULT_PHASES = 3

AXIS_LABELS = {
    "image2d": ("y", "x"),
    "sim": ("frame", "y", "x"),
    "sim_ap": ("angle", "phase", "y", "x"),
    "sim_t": ("t", "frame", "y", "x"),
    # a plain stack of planes that is not SIM data (e.g. a time series of reconstructed
    # emitters); only files written by this package are read as such
    "stack": ("plane", "y", "x"),
}

#: Layout kinds that hold SIM frames.
SIM_KINDS = ("sim", "sim_ap", "sim_t")


@dataclass(frozen=True)
class Layout:
    """What an array is: its layout kind and, for SIM data, angles and phases."""

    kind: str
    angles: int | None = None
    phases: int | None = None
    n_timepoints: int | None = None

    @property
    def axis_labels(self) -> tuple[str, ...]:
        return AXIS_LABELS[self.kind]

    @property
    def is_sim(self) -> bool:
        return self.kind in SIM_KINDS

    @property
    def what(self) -> str:
        """What the array is, for messages: "a 2D image", "a stack of planes", "a SIM stack"."""
        if self.kind == "image2d":
            return "a 2D image"
        return "a SIM stack" if self.is_sim else "a stack of planes (not SIM data)"

    @property
    def n_frames(self) -> int | None:
        if not self.is_sim:
            return None
        return self.angles * self.phases

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _check_ap(angles: int | None, phases: int | None, what: str) -> tuple[int | None, int | None]:
    for name, v in (("angles", angles), ("phases", phases)):
        if v is not None and (int(v) != v or v < 1):
            raise InputError(f"{what}: number of {name} must be a positive integer, got {v!r}")
    return (None if angles is None else int(angles), None if phases is None else int(phases))


def _frames_split(n: int, angles: int | None, phases: int | None, what: str) -> tuple[int, int]:
    """Angles and phases for a stack of ``n`` frames, or a clear error."""
    if angles is not None and phases is not None:
        if angles * phases != n:
            raise InputError(
                f"{what}: has {n} frames but its metadata says {angles} angles x "
                f"{phases} phases = {angles * phases} frames"
            )
        return angles, phases
    if angles is not None and n % angles == 0:
        return angles, n // angles
    if phases is not None and n % phases == 0:
        return n // phases, phases
    if angles is None and phases is None and n == DEFAULT_ANGLES * DEFAULT_PHASES:
        return DEFAULT_ANGLES, DEFAULT_PHASES
    raise InputError(
        f"{what}: has {n} frames, which is not a SIM stack this plugin can read without "
        f"more information. A raw SIM stack has angles x phases frames (9 for the usual "
        f"3 angles x 3 phases). If this is SIM data with another number of angles or "
        f"phases, save it with ImageJ metadata 'sim_angles' and 'sim_phases' "
        f"(or pass angles=/phases= from Python)."
    )


def infer_layout(
    shape: tuple[int, ...],
    *,
    angles: int | None = None,
    phases: int | None = None,
    axes: str | None = None,
    what: str = "array",
) -> Layout:
    """Infer the layout of an array of ``shape``.

    ``axes`` is a tifffile-style axes string (e.g. ``"TZYX"``) used to tell a time series
    ``(T, A*P, H, W)`` from an ``(A, P, H, W)`` stack when the shape alone is ambiguous.
    ``what`` names the array (a file name) in error messages.
    """
    angles, phases = _check_ap(angles, phases, what)
    shape = tuple(int(s) for s in shape)
    if any(s == 0 for s in shape):
        raise InputError(f"{what}: is empty (shape {shape})")
    nd = len(shape)
    if nd == 2:
        return Layout("image2d")
    if nd == 3:
        a, p = _frames_split(shape[0], angles, phases, what)
        return Layout("sim", a, p)
    if nd == 4:
        n0, n1 = shape[:2]
        time_first = axes is not None and axes.upper().startswith("T")
        if not time_first:
            # (A, P, H, W)?
            if angles is not None or phases is not None:
                if (angles in (None, n0)) and (phases in (None, n1)):
                    return Layout("sim_ap", n0, n1)
            elif (n0, n1) == (DEFAULT_ANGLES, DEFAULT_PHASES):
                return Layout("sim_ap", n0, n1)
        a, p = _frames_split(n1, angles, phases, what)
        return Layout("sim_t", a, p, n_timepoints=n0)
    raise InputError(
        f"{what}: has shape {shape} ({nd} dimensions). Supported are a 2D image (H, W), "
        f"a SIM stack (A*P, H, W) or (A, P, H, W), and a SIM time series (T, A*P, H, W)."
    )


def as_frames(data: np.ndarray, layout: Layout) -> np.ndarray:
    """View SIM data as ``(T, A*P, H, W)`` (T = 1 for a single stack)."""
    if not layout.is_sim:
        raise InputError("expected a SIM stack, got a 2D image")
    h, w = data.shape[-2:]
    return np.asarray(data).reshape(-1, layout.n_frames, h, w)
