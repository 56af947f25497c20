"""Estimation of the SIM illumination parameters from raw frames (no model, no training).

For each angle ``a`` the ``P`` phase frames ``D_p(k) = O(k) [S(k) + c_p S(k - k_a) +
conj(c_p) S(k + k_a)]`` (``O`` the raw OTF, ``S`` the sample spectrum, ``c_p = (m/2)
exp(i phi_p)``) are estimated in three steps (the approach of Gustafsson 2000 and fairSIM;
the code is this project's own):

1. **Wave vector.** Bands are separated with the nominal phase steps ``2 pi p / P``:
   ``B0 = mean_p D_p`` holds ``O S``, ``B+ = mean_p D_p exp(-2 pi i p / P)`` holds
   ``c O S(k - k_a)``. Their cross-correlation ``CC(q) = sum_k conj(B0(k - q)) B+(k)`` peaks
   at ``q = k_a``. ``B0`` is weighted by a Wiener-like deconvolution and ``B+`` by the
   OTF's shape (both from the radially averaged widefield power and the noise floor of
   the spectrum's corners), the matched weights when ``B+`` is mostly noise; ``|CC|^2`` is
   divided by its variance without a carrier (the *coherence*, exponential with mean 1
   at every unrelated shift; computed at the FFT bins, via real-space products). The
   five highest peaks in the searched band of ``|k|`` are candidates.
2. **Verification and refinement.** With the right wave vector and Gaussian OTF ``O_s``,
   ``T = B0(k - k_a) O_s(k)`` and ``Y = B+(k) O_s(k - k_a)`` are the same spectrum up to the
   factor ``c``: their correlation coefficient ``rho`` (noise power removed) is near 1 for
   the carrier and low for peaks that come from the sample's own structure. The candidate
   with the highest ``rho`` wins (the PSF width, when not given, is the one that maximises
   ``rho``); its wave vector is refined to a fraction of a bin by maximising ``rho``.
3. **Phases and modulation, per frame.** ``z_p = sum_k conj(T) O(k - k_a) (D_p - X0)``
   with ``X0`` the separated unshifted band equals ``c_p G``, ``G = sum |T|^2`` less its
   noise power; ``phi_p = arg z_p``, ``m_p = 2 |z_p| / G``. ``X0`` is separated again with
   the estimated ``c_p`` and the step repeated (three times), which removes the leak of the
   phase-step errors into ``X0``.

4. **Consistency and recovery.** The angles of one instrument share their period and
   (roughly) their modulation: an angle whose period differs by more than 1.5 % from the
   passed angles' or whose modulation is below half of theirs is flagged. A failed angle
   is searched again where the passed ones predict it (orientations ``pi / A`` apart,
   :func:`_recover_from_other_angles`). Frames larger than :data:`SEARCH_SIZE` search on
   their central crop; the wave vectors are refined and the phases estimated on the whole
   frames.

**Failures are flagged**, with a message per angle: ``rho`` outside
``[min_confidence, 1.3]`` (default 0.75; above 1.3 the noise correction dominates), a
coherence below the largest one expected without a carrier plus a margin, a modulation
outside ``(0.02, 1.2)`` or inconsistent with the other angles, or a carrier at the edge of
the searched band. Small or sparse fields and weak modulation fail this way instead of
returning a wrong carrier (:meth:`PatternEstimate.require_ok` raises it as an error).
``confidence`` is ``rho``.

**A dataset** of one instrument shares its wave vectors (only the phases drift):
:func:`estimate_patterns_dataset` adds ``|CC_s(q)|^2`` over the stacks before the peak
search, and pools the PSF-width criterion, so that small fields whose single-stack peaks
drown in noise still give the carrier; phases and modulation are then estimated per stack.

Units: wave vectors in cycles per raw pixel ``(k_x, k_y)`` = (column, row); phases in
radians, of the pattern ``1 + m cos(2 pi k . r + phi)`` at the frame's centre
(:attr:`PatternEstimate.phase_origin`; :meth:`PatternEstimate.to_hr` converts to an HR
grid's convention, phases at HR pixel [0, 0]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.classical.otf import (
    apodized_window,
    frequency_grid,
    raw_otf,
)

__all__ = [
    "DatasetPatternEstimate",
    "PatternEstimate",
    "estimate_patterns",
    "estimate_patterns_dataset",
    "estimate_phases",
    "pattern_errors",
]

#: default band of |k| searched for the carrier, in cycles per raw pixel (periods 2.1-8 px)
DEFAULT_K_RANGE = (0.125, 0.48)
#: default minimum peak-to-second-peak ratio of the cross-correlation
DEFAULT_MIN_CONFIDENCE = 0.75
_SIGMA_BRACKET = (0.25, 4.0)  # raw pixels searched for the PSF width
_PHASE_ITERATIONS = 3
_MIN_OVERLAP = 0.02  # of the largest band overlap, for a shift to be searched
_N_CANDIDATES = 5  # coherence peaks verified per angle
_COHERENCE_MARGIN = 6.0  # a carrier's coherence above the largest expected without one
_MAX_CORRELATION = 1.3  # a noise-corrected band correlation above this is mostly noise
#: frames larger than this (pixels per side) search the carrier on their central crop
SEARCH_SIZE = 256
_SHIFT_CACHE_BYTES = 256 * 2**20  # shifted bands kept for the PSF-width search
_PERIOD_SPREAD = 0.015  # an angle's period may differ this much from the others' median
_MODULATION_RATIO = 0.5  # an angle's modulation must reach this fraction of the others'
_REFINE_ROUNDS = 3  # rounds of the phase refinement of the wave vector
_MIN_SIGNAL = 0.05  # least fraction of a band's power that is signal, for its correlation


@dataclass
class PatternEstimate:
    """Illumination parameters estimated from one raw stack (see the module docstring)."""

    wave_vectors: np.ndarray  # (A, 2) cycles per raw pixel, (k_x, k_y)
    phases: np.ndarray  # (A, P) radians at the frame's centre (phase_origin)
    modulation: np.ndarray  # (A,) mean over the angle's frames
    frame_modulation: np.ndarray  # (A, P)
    confidence: np.ndarray  # (A,) band correlation at the carrier (1: perfect match)
    ok: np.ndarray  # (A,) bool
    psf_sigma: float  # raw pixels (given or estimated)
    psf_sigma_estimated: bool
    shape: tuple[int, int]
    binning: int | None = None
    messages: list[str] = field(default_factory=list)
    coherence: np.ndarray | None = None  # (A,) carrier peak's coherence (see _candidates)
    # noise std of the estimates (from the spectrum's noise floor; systematic errors not
    # included): per frame phase (rad) and modulation, per angle each wave-vector component
    phase_std: np.ndarray | None = None  # (A, P)
    modulation_std: np.ndarray | None = None  # (A, P)
    k_std: np.ndarray | None = None  # (A,) cycles per raw pixel
    # (A, P) frames whose phase could not be fitted: an "unknown fringe" of depth
    # modulation_std at a uniformly unknown phase (tasks/sim/pattern_model._fill_unfitted)
    unfitted: np.ndarray | None = None

    @property
    def phase_origin(self) -> tuple[float, float]:
        """``(x, y)`` in raw pixels (from the centre of pixel [0, 0]) where ``phases``
        apply: the frame's centre, where the estimate is best conditioned (an error
        ``dk`` of the wave vector turns into a phase error ``2 pi dk . r`` at a distance
        ``r`` from it)."""
        h, w = self.shape
        return ((w - 1) / 2, (h - 1) / 2)

    def phases_at(self, x: float, y: float) -> np.ndarray:
        """Phases (A, P) of the patterns at raw-pixel position ``(x, y)``."""
        ox, oy = self.phase_origin
        d = self.wave_vectors[:, 0] * (x - ox) + self.wave_vectors[:, 1] * (y - oy)
        return self.phases + 2 * math.pi * d[:, None]

    @property
    def n_angles(self) -> int:
        return int(self.wave_vectors.shape[0])

    @property
    def n_phases(self) -> int:
        return int(self.phases.shape[1])

    @property
    def periods(self) -> np.ndarray:
        """Fringe periods in raw pixels, (A,)."""
        return 1.0 / np.linalg.norm(self.wave_vectors, axis=1)

    @property
    def angles(self) -> np.ndarray:
        """Orientations ``atan2(k_y, k_x)`` in radians, (A,)."""
        return np.arctan2(self.wave_vectors[:, 1], self.wave_vectors[:, 0])

    @property
    def all_ok(self) -> bool:
        return bool(np.all(self.ok))

    def require_ok(self) -> PatternEstimate:
        """``self`` if every angle succeeded, else an :class:`InputError` that says why."""
        if not self.all_ok:
            raise InputError(
                "the illumination pattern could not be estimated from this stack: "
                + "; ".join(self.messages)
            )
        return self

    def to_hr(self, hr_factor: int) -> tuple[np.ndarray, np.ndarray]:
        """Wave vectors (cycles per HR pixel) and phases at the centre of HR pixel [0, 0] of
        a grid ``hr_factor`` times finer whose pixels subdivide the raw ones (the
        generator's and the models' convention)."""
        f = int(hr_factor)
        k_hr = self.wave_vectors / f
        # HR pixel [0, 0]'s centre lies at raw position -(f - 1) / (2 f) on both axes
        off = -(f - 1) / (2 * f)
        return k_hr, self.phases_at(off, off)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wave_vectors_cycles_per_raw_px": self.wave_vectors.tolist(),
            "periods_raw_px": self.periods.tolist(),
            "angles_deg": np.degrees(self.angles).tolist(),
            "phases_rad": self.phases.tolist(),
            "phase_origin_raw_px": list(self.phase_origin),
            "modulation": self.modulation.tolist(),
            "frame_modulation": self.frame_modulation.tolist(),
            "confidence": self.confidence.tolist(),
            "coherence": None if self.coherence is None else self.coherence.tolist(),
            "phase_std_rad": None if self.phase_std is None else self.phase_std.tolist(),
            "modulation_std": None if self.modulation_std is None else self.modulation_std.tolist(),
            "k_std_cycles_per_raw_px": None if self.k_std is None else self.k_std.tolist(),
            "unfitted": None if self.unfitted is None else self.unfitted.tolist(),
            "ok": [bool(v) for v in self.ok],
            "psf_sigma_raw_px": float(self.psf_sigma),
            "psf_sigma_estimated": bool(self.psf_sigma_estimated),
            "binning": self.binning,
            "shape": list(self.shape),
            "messages": list(self.messages),
        }

    @classmethod
    def from_truth(
        cls,
        k_hr: Any,
        phases_hr: Any,
        modulation: float,
        psf_sigma: float,
        shape: tuple[int, int],
        hr_factor: int,
    ) -> PatternEstimate:
        """Known parameters in the generator's convention (wave vectors in cycles per HR
        pixel, phases at HR pixel [0, 0], PSF std in raw pixels) as an estimate, e.g. for
        an oracle Wiener reconstruction."""
        f = int(hr_factor)
        k_hr = np.asarray(k_hr, np.float64)
        ph = np.asarray(phases_hr, np.float64)
        h, w = int(shape[0]), int(shape[1])
        cx, cy = f * (w - 1) / 2 + (f - 1) / 2, f * (h - 1) / 2 + (f - 1) / 2  # HR coords
        ph_c = ph + 2 * math.pi * (k_hr[:, 0] * cx + k_hr[:, 1] * cy)[:, None]
        a, p = ph.shape
        return cls(
            wave_vectors=k_hr * f,
            phases=ph_c,
            modulation=np.full(a, float(modulation)),
            frame_modulation=np.full((a, p), float(modulation)),
            confidence=np.ones(a),
            ok=np.ones(a, bool),
            psf_sigma=float(psf_sigma),
            psf_sigma_estimated=False,
            shape=(h, w),
            binning=f,
            messages=[],
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatternEstimate:
        try:
            return cls(
                wave_vectors=np.asarray(d["wave_vectors_cycles_per_raw_px"], np.float64),
                phases=np.asarray(d["phases_rad"], np.float64),
                modulation=np.asarray(d["modulation"], np.float64),
                frame_modulation=np.asarray(d["frame_modulation"], np.float64),
                confidence=np.asarray(d["confidence"], np.float64),
                ok=np.asarray(d["ok"], bool),
                psf_sigma=float(d["psf_sigma_raw_px"]),
                psf_sigma_estimated=bool(d.get("psf_sigma_estimated", False)),
                shape=tuple(int(s) for s in d["shape"]),
                binning=d.get("binning"),
                messages=list(d.get("messages", [])),
                coherence=_opt_array(d.get("coherence")),
                phase_std=_opt_array(d.get("phase_std_rad")),
                modulation_std=_opt_array(d.get("modulation_std")),
                k_std=_opt_array(d.get("k_std_cycles_per_raw_px")),
                unfitted=None if d.get("unfitted") is None else np.asarray(d["unfitted"], bool),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a pattern estimate: {exc}") from exc


def _opt_array(v: Any) -> np.ndarray | None:
    return None if v is None else np.asarray(v, np.float64)


@dataclass
class DatasetPatternEstimate:
    """Wave vectors and PSF width shared by a dataset, with per-stack phases/modulation."""

    wave_vectors: np.ndarray  # (A, 2)
    confidence: np.ndarray  # (A,)
    ok: np.ndarray  # (A,)
    psf_sigma: float
    stacks: list[PatternEstimate]
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wave_vectors_cycles_per_raw_px": self.wave_vectors.tolist(),
            "periods_raw_px": (1.0 / np.linalg.norm(self.wave_vectors, axis=1)).tolist(),
            "confidence": self.confidence.tolist(),
            "ok": [bool(v) for v in self.ok],
            "psf_sigma_raw_px": float(self.psf_sigma),
            "n_stacks": len(self.stacks),
            "messages": list(self.messages),
        }


# --------------------------------------------------------------------------- input


def as_angle_phase_stack(raw: Any, n_angles: int, n_phases: int) -> torch.Tensor:
    """``(A*P, H, W)`` or ``(A, P, H, W)`` raw frames as a float64 ``(A, P, H, W)`` tensor,
    with clear errors for wrong shapes and non-finite values."""
    if isinstance(n_angles, bool) or int(n_angles) < 1:
        raise InputError(f"n_angles must be an integer >= 1, got {n_angles!r}")
    if isinstance(n_phases, bool) or int(n_phases) < 3:
        raise InputError(
            f"n_phases must be >= 3 to separate the SIM bands (got {n_phases!r}): three "
            "unknown bands per angle need at least three phase frames"
        )
    a, p = int(n_angles), int(n_phases)
    x = raw.detach().cpu() if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
    if x.ndim == 4 and tuple(x.shape[:2]) == (a, p):
        pass
    elif x.ndim == 3 and x.shape[0] == a * p:
        x = x.reshape(a, p, *x.shape[1:])
    else:
        raise InputError(
            f"expected a raw SIM stack of {a * p} frames ({a} angles x {p} phases), shape "
            f"({a * p}, H, W) or ({a}, {p}, H, W); got {tuple(x.shape)}"
        )
    if min(x.shape[-2:]) < 16:
        raise InputError(
            f"frames of {tuple(x.shape[-2:])} pixels are too small to estimate a pattern "
            "(at least 16 x 16)"
        )
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InputError("the raw stack contains NaN or infinite values")
    return x


def _require_structure(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(A, P, H, W)`` unless a frame is constant (nothing to estimate from)."""
    flat = x.flatten(-2).std(dim=-1) == 0
    if bool(flat.any()):
        a, p = (int(v) for v in torch.nonzero(flat)[0])
        raise InputError(
            f"frame {a * x.shape[1] + p} of the raw stack is constant: there is no structure "
            "to estimate a pattern from"
        )
    return x


def _k_range(period_range: tuple[float, float] | None) -> tuple[float, float]:
    if period_range is None:
        return DEFAULT_K_RANGE
    try:
        lo, hi = (float(period_range[0]), float(period_range[1]))
    except (TypeError, IndexError, ValueError):
        raise InputError(
            f"period_range must be (low, high) raw pixels, got {period_range!r}"
        ) from None
    if not (2.0 <= lo < hi) or not math.isfinite(hi):
        raise InputError(
            f"period_range must be (low, high) raw pixels with 2 <= low < high (a period "
            f"below 2 raw pixels is beyond the camera's Nyquist limit), got {period_range!r}"
        )
    return (1.0 / hi, 1.0 / lo)


# --------------------------------------------------------------------------- Fourier parts


def _shift(spec: torch.Tensor, k: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
    """Spectrum of ``x(r) exp(2 pi i k . r)``, i.e. ``X(q - k)``, for continuous ``k``."""
    x = torch.fft.ifft2(spec)
    ramp = torch.exp(2j * math.pi * (k[0] * xs[None, :] + k[1] * ys[:, None]))
    return torch.fft.fft2(x * ramp)


class _Frames:
    """Windowed frames of one stack and the quantities every step needs."""

    def __init__(self, x: torch.Tensor, taper: float):
        a, p, h, w = x.shape
        self.n_angles, self.n_phases, self.shape = a, p, (h, w)
        win = apodized_window((h, w), taper)
        # gradient of log(window): the shifted band sees the window displaced by an
        # imaginary amount (see _window_phase)
        logw = torch.log(win)
        self.dlogw_x = torch.gradient(logw, dim=1)[0]
        self.dlogw_y = torch.gradient(logw, dim=0)[0]
        # each frame's mean is removed before the window: the window's spectrum times a
        # large mean (background) would otherwise swamp B0's low frequencies
        frames = (x - x.mean(dim=(-2, -1), keepdim=True)) * win
        self.D = torch.fft.fft2(frames)  # (A, P, H, W)
        self.kx, self.ky = frequency_grid((h, w))
        self.kr = torch.sqrt(self.kx**2 + self.ky**2)
        # coordinates from the frame's centre: phases refer to it (best conditioned)
        self.xs = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
        self.ys = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
        steps = torch.exp(-2j * math.pi * torch.arange(p, dtype=torch.float64) / p)
        self.B0 = self.D.mean(dim=1)  # (A, H, W)
        self.Bp = (self.D * steps[None, :, None, None]).mean(dim=1)
        # noise power per bin of one frame: the spectrum's floor beyond |k| = 0.5 (corners)
        corner = self.kr >= 0.5
        if int(corner.sum()) < 8:
            corner = self.kr >= 0.45
        power = self.D.abs() ** 2
        # |noise|^2 of a bin is exponentially distributed: mean = median / ln 2
        self.noise_frame = float(power[..., corner].median()) / math.log(2.0)
        self.noise_band = self.noise_frame / p  # B0 and B+ (weights of modulus 1/P)
        # bins of the window's DC lobe: they hold the unmodulated background, excluded
        # where a band is compared with a shifted copy of itself (modulation estimate)
        self.dc_radius = 3.0 / min(h, w)
        self._shifted: dict[tuple[int, float, float], torch.Tensor] = {}

    def shifted_b0(self, a: int, k: torch.Tensor) -> torch.Tensor:
        """``B0(q - k)`` of angle ``a`` (cached: the PSF-width search reuses it)."""
        key = (a, float(k[0]), float(k[1]))
        out = self._shifted.get(key)
        if out is None:
            # at most 64 entries and ~256 MB (large frames)
            cap = max(4, min(64, _SHIFT_CACHE_BYTES // (16 * self.B0[a].numel())))
            while len(self._shifted) >= cap:
                self._shifted.pop(next(iter(self._shifted)))
            out = self._shifted[key] = _shift(self.B0[a], k, self.xs, self.ys)
        return out

    def band_weights(self, a: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of ``B0`` and ``B+`` for the carrier search of angle ``a``.

        ``B0`` is well measured where the sample is, ``B+`` is mostly noise (its carrier is
        attenuated by the OTF there). Given the carrier, a term ``conj(B0(k - q)) B+(k)``
        has mean ``c O(k) / O(k - q) |B0(k - q)|^2`` and variance ``|B0(k - q)|^2 N``, so
        the matched weights are ``B0 / O`` (a Wiener deconvolution: ``A / P``, with ``P`` the
        radially averaged power of ``B0`` and ``A = sqrt(P - N)`` its signal amplitude,
        ``O S``) and ``B+ O`` (``A``, up to the sample's radial spectrum)."""
        power = (self.B0[a].abs() ** 2).flatten()
        h, w = self.shape
        step = 1.0 / min(h, w)
        idx = torch.clamp((self.kr / step).round().long(), max=int(0.75 / step)).flatten()
        total = torch.zeros(int(idx.max()) + 1, dtype=torch.float64).index_add_(0, idx, power)
        count = torch.zeros_like(total).index_add_(0, idx, torch.ones_like(power))
        radial = (total / count.clamp(min=1)).clamp(min=1e-300)
        amp = torch.sqrt((radial - self.noise_band).clamp(min=0))
        w0 = (amp / radial)[idx].reshape(h, w)
        w0 = torch.where(self.kr <= self.dc_radius, torch.zeros_like(w0), w0)  # DC lobe
        wp = (amp / amp.max().clamp(min=1e-300))[idx].reshape(h, w)
        return w0, wp


def _dtft(q: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, xs, ys) -> torch.Tensor:
    """``sum_r q(r) exp(-2 pi i k . r)`` at the points ``(kx[j], ky[j])``."""
    ex = torch.exp(-2j * math.pi * kx[:, None] * xs[None, :])  # (n, W)
    ey = torch.exp(-2j * math.pi * ky[:, None] * ys[None, :])  # (n, H)
    return torch.einsum("nh,hw,nw->n", ey, q, ex)


def _refine_peak(
    qs: list[torch.Tensor], k0: torch.Tensor, xs, ys, step: float, n_iter: int = 14
) -> torch.Tensor:
    """Maximise ``sum_s |DTFT(q_s)(k)|^2`` around ``k0`` by a shrinking 3 x 3 search."""
    k = k0.clone()
    offs = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    ox, oy = torch.meshgrid(offs, offs, indexing="xy")
    ox, oy = ox.flatten(), oy.flatten()
    for _ in range(n_iter):
        cx, cy = k[0] + step * ox, k[1] + step * oy
        score = sum(_dtft(q, cx, cy, xs, ys).abs() ** 2 for q in qs)
        j = int(torch.argmax(score))
        k = torch.stack((cx[j], cy[j]))
        if j == 4:
            step *= 0.5
    return k


def _correlation_planes(fr: _Frames, a: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``conj(b0) b+`` of angle ``a`` in real space (weighted bands, :meth:`_Frames.
    band_weights`), and ``conj(u0) u+`` with ``u0``, ``u+`` the inverse FFTs of ``|B0 w0|^2``
    and ``w+^2``: the transform of the latter is ``sum_k |B0(k - q) w0|^2 w+(k)^2``, the
    variance of ``CC(q)`` over the noise of ``B+`` (in units of its noise power)."""
    w0, wp = fr.band_weights(a)
    b0, bp = fr.B0[a] * w0, fr.Bp[a] * wp
    q = torch.conj(torch.fft.ifft2(b0)) * torch.fft.ifft2(bp)
    qn = torch.conj(torch.fft.ifft2(b0.abs() ** 2)) * torch.fft.ifft2(bp.abs() ** 2)
    return q, qn


def _coarse_map(q: torch.Tensor, qn: torch.Tensor):
    """Coherence ``|CC|^2 / sum |B0(k - q)|^2 |B+(k)|^2`` at the FFT bins, with the bins'
    ``(kx, ky)``: exponentially distributed with mean 1 at every shift where the bands are
    unrelated, large at the carrier. (Only at the bins: between them the transform of the
    periodic products is not this ratio, so the sub-bin peak is refined separately.)"""
    h, w = q.shape
    cc = torch.fft.fft2(q).abs() ** 2
    nv = torch.fft.fft2(qn).real / (h * w)
    # shifts whose bands barely overlap (a few bins at the passband's edge) are not
    # searched: their ratio rests on a handful of bins
    usable = nv >= _MIN_OVERLAP * float(nv.max())
    cc = torch.where(usable, cc / nv.clamp(min=1e-300), torch.zeros_like(cc))
    kx, ky = frequency_grid((h, w))
    return cc, kx.expand(h, w), ky.expand(h, w)


def _candidates(
    planes: list[tuple[torch.Tensor, torch.Tensor]],
    k_range: tuple[float, float],
    xs,
    ys,
    shape: tuple[int, int],
    n: int = _N_CANDIDATES,
) -> tuple[list[tuple[torch.Tensor, float, bool]], float]:
    """The ``n`` highest peaks (more than 3 bins apart) of the summed coherence of
    ``planes`` within the searched band, each refined to sub-bin precision:
    ``(k, coherence, at_edge)``; and the least coherence a carrier must reach.

    With no carrier the coherence of ``S`` stacks is a sum of ``S`` unit exponentials per
    bin, whose largest value over the band's ``M`` bins stays below about
    ``S + sqrt(2 S ln M) + ln M``; a carrier must exceed that by ``_COHERENCE_MARGIN``
    (sample structure, not only noise, raises false peaks on small sparse fields)."""
    cc = None
    for q, qn in planes:
        m, kx, ky = _coarse_map(q, qn)
        cc = m if cc is None else cc + m
    qs = [q for q, _ in planes]
    kr = torch.sqrt(kx**2 + ky**2)
    band = (kr >= k_range[0]) & (kr <= k_range[1])
    masked = torch.where(band, cc, torch.zeros_like(cc))
    bin_ = 1.0 / min(shape)
    out = []
    for _ in range(n):
        j = int(torch.argmax(masked))
        value = float(masked.flatten()[j])
        if value <= 0:
            break
        k0 = torch.stack((kx.flatten()[j], ky.flatten()[j]))
        masked = torch.where(
            torch.sqrt((kx - k0[0]) ** 2 + (ky - k0[1]) ** 2) <= 3 * bin_,
            torch.zeros_like(masked),
            masked,
        )
        k = _refine_peak(qs, k0, xs, ys, step=0.5 * bin_)
        kabs = float(torch.linalg.norm(k))
        at_edge = kabs < k_range[0] + 0.5 * bin_ or kabs > k_range[1] - 0.5 * bin_
        out.append((k, value, at_edge))
    n_s, n_bins = len(planes), max(int(band.sum()), 2)
    log_m = math.log(n_bins)
    threshold = n_s + math.sqrt(2 * n_s * log_m) + log_m + _COHERENCE_MARGIN
    return out, threshold


@dataclass
class _Carrier:
    k: torch.Tensor
    rho: float  # band correlation at the carrier
    coherence: float
    threshold: float  # least coherence of a carrier (see _candidates)
    at_edge: bool

    def problems(self, min_confidence: float) -> list[str]:
        why = []
        if not (min_confidence <= self.rho <= _MAX_CORRELATION):
            why.append(
                f"the shifted band does not match the unshifted one (band correlation "
                f"{self.rho:.2f}, expected {min_confidence:g}-{_MAX_CORRELATION:g})"
            )
        if self.coherence < self.threshold:
            why.append(
                f"the carrier peak is not above chance (coherence {self.coherence:.1f} < "
                f"{self.threshold:.1f})"
            )
        if why:
            why.append(
                "the field is too small or too sparse, or the modulation too weak; estimate "
                "it from a dataset of the same instrument (estimate_patterns_dataset) or "
                "give the pattern parameters"
            )
        if self.at_edge:
            why.append(
                "the carrier lies at the edge of the searched band of periods: widen period_range"
            )
        return why


def _verify(frames: list[_Frames], a: int, cands, threshold: float, psf_sigma, binning):
    """The candidate whose shifted band matches the unshifted one best, its wave vector
    refined by maximising that match, as a :class:`_Carrier` (``rho`` from
    :func:`_sigma_score`, at the given PSF width or the best one)."""
    best = None
    for k, coh, edge in cands:
        items = [(fr, a, k) for fr in frames]
        sigma = psf_sigma if psf_sigma is not None else _estimate_sigma(items, binning)
        rho = _sigma_score(items, sigma, binning)
        if best is None or rho > best[1]:
            best = (k, rho, edge, coh, sigma)
    if best is None:  # nothing in the band at all (a flat stack)
        return _Carrier(torch.zeros(2, dtype=torch.float64), 0.0, 0.0, threshold, True)
    k, rho, edge, coh, sigma = best
    k = _refine_by_phase(frames, a, k, sigma, binning)
    rho = _sigma_score([(fr, a, k) for fr in frames], sigma, binning)
    return _Carrier(k, rho, coh, threshold, edge)


def _window_phase(fr: _Frames, k: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(i theta(r))`` that removes the window's phase from ``conj(t) y``.

    Both bands are windowed in real space, where the OTF weights vary across the window's
    spectral width: the relative weight of ``Y`` and ``T`` is ``exp(c . (q' - q))`` with
    ``c = grad log O(q) - grad log O(q - k) = -4 pi^2 sigma^2 k`` (constant for a Gaussian
    OTF), i.e. ``Y``'s window is ``w(r - i 2 pi sigma^2 k) ~ w (1 - i 2 pi sigma^2 k .
    grad log w)``: a phase ``-2 pi sigma^2 k . grad log w(r)`` that is odd across the field
    and would bias the wave vector outwards (0.6 % on 48-pixel fields)."""
    theta = 2 * math.pi * sigma**2 * (k[0] * fr.dlogw_x + k[1] * fr.dlogw_y)
    return torch.exp(1j * theta)


def _refine_by_phase(frames, a, k, sigma, binning):
    """Sub-bin wave vector from the phase of ``p(r) = conj(t(r)) y(r)``, with ``t``, ``y``
    the real-space ``T`` and ``Y`` of :func:`_sigma_score` at the current ``k``.

    At the true wave vector ``Y = c T``, so ``p = c |t|^2`` has one phase everywhere; an
    error ``d`` of ``k`` compares the sample at shifted frequencies, i.e. multiplies ``y``
    by ``exp(2 pi i d . r)``. The ``d`` that maximises ``|sum_r p(r) exp(-2 pi i d . r)|``
    (summed over the stacks) is the correction; three rounds. Unlike the peak of ``|CC|``
    this is not pulled by how the correlation's weights fall off with the shift (which
    moved ``k`` outwards by ~0.25 bin on small fields)."""
    fr0 = frames[0]
    step = 0.5 / min(fr0.shape)
    for _ in range(_REFINE_ROUNDS):
        ps = []
        for fr in frames:
            o, o_s = _otf(fr, sigma, binning), _otf(fr, sigma, binning, k)
            t = torch.fft.ifft2(fr.shifted_b0(a, k) * o)
            y = torch.fft.ifft2(fr.Bp[a] * o_s)
            ps.append(torch.conj(t) * y * _window_phase(fr, k, sigma))
        d = _refine_peak(ps, torch.zeros(2, dtype=torch.float64), fr0.xs, fr0.ys, step)
        k = k + d
        step = max(2 * float(torch.linalg.norm(d)), 0.05 / min(fr0.shape))
    return k


def _otf(fr: _Frames, sigma: float, binning, k: torch.Tensor | None = None) -> torch.Tensor:
    if k is None:
        return raw_otf(fr.kx, fr.ky, sigma, binning)
    return raw_otf(fr.kx - k[0], fr.ky - k[1], sigma, binning)


def _sigma_score(items: list[tuple[_Frames, int, torch.Tensor]], sigma: float, binning) -> float:
    """Pooled correlation of ``T = B0(k - k_a) O(k)`` and ``Y = B+(k) O(k - k_a)``."""
    num = den_t = den_y = 0.0
    for fr, a, k in items:
        o, o_s = _otf(fr, sigma, binning), _otf(fr, sigma, binning, k)
        t = fr.shifted_b0(a, k) * o
        y = fr.Bp[a] * o_s
        # sum_q conj(T) Y = N sum_r conj(t) y, with the window's phase removed
        prod = torch.conj(torch.fft.ifft2(t)) * torch.fft.ifft2(y) * _window_phase(fr, k, sigma)
        num_a = torch.sum(prod) * t.numel()
        pt, py = float(torch.sum(t.abs() ** 2)), float(torch.sum(y.abs() ** 2))
        dt = pt - fr.noise_band * float(torch.sum(o**2))
        dy = py - fr.noise_band * float(torch.sum(o_s**2))
        if dt <= 0 or dy <= 0 or dt < _MIN_SIGNAL * pt or dy < _MIN_SIGNAL * py:
            # (almost) all noise: the noise-corrected ratio would be meaningless
            den_t += 1.0
            den_y += 1.0
            continue
        # each angle's phase differs: add magnitudes, normalised per angle
        num += float(num_a.abs()) / math.sqrt(dt * dy)
        den_t += 1.0
        den_y += 1.0
    return num / den_t if den_t else 0.0


def _estimate_sigma(items, binning) -> float:
    """Golden-section search of the PSF width on log(sigma)."""
    lo, hi = (math.log(s) for s in _SIGMA_BRACKET)
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = _sigma_score(items, math.exp(c), binning), _sigma_score(items, math.exp(d), binning)
    for _ in range(20):
        if fc > fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = _sigma_score(items, math.exp(c), binning)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = _sigma_score(items, math.exp(d), binning)
    return math.exp(0.5 * (lo + hi))


def _phases(
    fr: _Frames, a: int, k: torch.Tensor, sigma: float, binning
) -> tuple[torch.Tensor, float, float]:
    """Per-frame ``c_p = (m/2) exp(i phi_p)`` of angle ``a`` (complex, (P,)), the noise
    variance of each ``c_p`` (complex: both parts together) and the rms distance of the
    signal from the frame's centre (raw pixels, weights ``|t(r)|^2``).

    ``z_p`` sums the frame's noise with the weights ``conj(T) O_s``: its variance is
    ``N sum |T O_s|^2`` for a white noise power ``N`` per bin, so ``Var(c_p) = N sum |T
    O_s|^2 / G^2``."""
    p = fr.n_phases
    o, o_s = _otf(fr, sigma, binning), _otf(fr, sigma, binning, k)
    D = fr.D[a]
    x0, noise_x0 = fr.B0[a], fr.noise_band
    c = torch.zeros(p, dtype=torch.complex128)
    # T(k) = X0(k - k_a) O(k) without X0's DC lobe (the unmodulated background)
    keep = (torch.sqrt((fr.kx - k[0]) ** 2 + (fr.ky - k[1]) ** 2) > fr.dc_radius).to(o.dtype)
    o = o * keep
    win_phase = _window_phase(fr, k, sigma)
    for _ in range(_PHASE_ITERATIONS):
        t = _shift(x0, k, fr.xs, fr.ys) * o
        g = float(torch.sum(t.abs() ** 2) - noise_x0 * torch.sum(o**2))
        if g <= 0:
            return torch.full((p,), complex("nan"), dtype=torch.complex128), math.nan, math.nan
        # z_p = sum_q conj(T) O_s (D_p - X0), in real space with the window's phase removed
        yp = torch.fft.ifft2(o_s * (D - x0[None]))
        tw = torch.conj(torch.fft.ifft2(t)) * win_phase
        z = torch.einsum("hw,phw->p", tw, yp) * t.numel()
        c = z / g
        mix = torch.stack((torch.ones_like(c), c, torch.conj(c)), dim=1)  # (P, 3)
        row0 = torch.linalg.pinv(mix)[0]  # (P,)
        x0 = torch.einsum("p,phw->hw", row0, D)
        noise_x0 = fr.noise_frame * float(torch.sum(row0.abs() ** 2))
    var_c = fr.noise_frame * float(torch.sum((t * o_s).abs() ** 2)) / g**2
    w_r = torch.fft.ifft2(t).abs() ** 2
    r2 = fr.xs[None, :] ** 2 + fr.ys[:, None] ** 2
    r_rms = math.sqrt(float((w_r * r2).sum() / w_r.sum().clamp(min=1e-300)))
    return c, var_c, r_rms


def _finish(
    fr: _Frames,
    carriers: list[_Carrier],
    sigma: float,
    sigma_estimated: bool,
    binning,
    min_confidence: float,
    n_stacks: int = 1,
) -> PatternEstimate:
    a_n, p_n = fr.n_angles, fr.n_phases
    phases = np.zeros((a_n, p_n))
    fmod = np.zeros((a_n, p_n))
    phase_std = np.zeros((a_n, p_n))
    mod_std = np.zeros((a_n, p_n))
    k_std = np.zeros(a_n)
    ok = np.ones(a_n, bool)
    messages = []
    for a, car in enumerate(carriers):
        c, var_c, r_rms = _phases(fr, a, car.k, sigma, binning)
        c = c.numpy()
        phases[a] = np.angle(c)
        fmod[a] = 2 * np.abs(c)
        # complex noise of variance V: each part V / 2; phase std sqrt(V / 2) / |c|
        half = math.sqrt(var_c / 2) if math.isfinite(var_c) else math.nan
        phase_std[a] = half / np.maximum(np.abs(c), 1e-12)
        mod_std[a] = 2 * half
        # the wave vector comes from the phase slope across the field (all P frames and,
        # for a dataset, all its stacks): per component ~ phase std / (2 pi r_rms)
        k_std[a] = (
            float(np.mean(phase_std[a]))
            / math.sqrt(p_n * n_stacks)
            / (2 * math.pi * max(r_rms, 1.0))
        )
    periods = 1.0 / np.maximum(
        np.linalg.norm(torch.stack([c.k for c in carriers]).numpy(), axis=1), 1e-12
    )
    mods = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in fmod])
    base = []
    for a, car in enumerate(carriers):
        why = car.problems(min_confidence)
        if not (0.02 < float(mods[a]) < 1.2):
            why.append(f"implausible modulation depth {float(mods[a]):.3f} (expected 0-1)")
        base.append(why)
    passed = [a for a in range(a_n) if not base[a]]
    for a in range(a_n):
        why = base[a]
        m = float(mods[a])
        others = [b for b in passed if b != a]
        if not why and others:
            # the angles of one instrument share their period and (roughly) modulation:
            # compared with the other angles that passed their own checks
            p_ref = float(np.median(periods[others]))
            m_ref = float(np.median(mods[others]))
            if abs(periods[a] / p_ref - 1) > _PERIOD_SPREAD:
                why.append(
                    f"its period {periods[a]:.3f} px differs by "
                    f"{100 * abs(periods[a] / p_ref - 1):.1f} % from the other angles' "
                    f"({p_ref:.3f} px): likely a wrong carrier"
                )
            if m < _MODULATION_RATIO * m_ref:
                why.append(
                    f"its modulation {m:.2f} is below {_MODULATION_RATIO:g} x the other "
                    f"angles' ({m_ref:.2f}): likely a wrong carrier"
                )
        if why:
            ok[a] = False
            messages.append(f"angle {a}: " + "; ".join(why))
    return PatternEstimate(
        wave_vectors=torch.stack([c.k for c in carriers]).numpy(),
        phases=phases,
        modulation=mods,
        frame_modulation=fmod,
        confidence=np.asarray([c.rho for c in carriers], np.float64),
        coherence=np.asarray([c.coherence for c in carriers], np.float64),
        phase_std=phase_std,
        modulation_std=mod_std,
        k_std=k_std,
        ok=ok,
        psf_sigma=float(sigma),
        psf_sigma_estimated=sigma_estimated,
        shape=fr.shape,
        binning=binning,
        messages=messages,
    )


def _check_common(psf_sigma, binning, min_confidence, taper):
    if psf_sigma is not None and not (
        isinstance(psf_sigma, int | float) and math.isfinite(psf_sigma) and psf_sigma > 0
    ):
        raise InputError(f"psf_sigma must be a positive number of raw pixels, got {psf_sigma!r}")
    if binning is not None and (isinstance(binning, bool) or int(binning) < 1):
        raise InputError(f"binning must be None or an integer >= 1, got {binning!r}")
    if not (min_confidence > 0):
        raise InputError(f"min_confidence must be > 0, got {min_confidence!r}")
    if not (0 < taper <= 0.5):
        raise InputError(f"taper must be in (0, 0.5], got {taper!r}")


# --------------------------------------------------------------------------- public API


def estimate_patterns(
    raw: Any, n_angles: int = 3, n_phases: int = 3, **options: Any
) -> PatternEstimate:
    """Estimate wave vectors, per-frame phases and modulation from one raw stack.

    ``raw``: ``(A*P, H, W)`` angle-major frames or ``(A, P, H, W)``. Options (as
    :func:`estimate_patterns_dataset`, which this is for one stack): ``psf_sigma``, the
    Gaussian PSF's std in raw pixels, estimated from the bands when ``None``; ``binning``,
    the pixel model (:mod:`~napari_sim_uq.tasks.sim.classical.otf`; the generator's
    ``hr_factor`` for synthetic data); ``period_range``, the searched fringe periods in raw
    pixels (default 2.1-8); ``min_confidence``; ``taper``. Failed angles are flagged, not
    hidden (module docstring).
    """
    return estimate_patterns_dataset([raw], n_angles, n_phases, **options).stacks[0]


def estimate_phases(
    raw: Any,
    wave_vectors: Any,
    psf_sigma: float,
    n_angles: int = 3,
    n_phases: int = 3,
    *,
    binning: int | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    taper: float = 0.15,
    n_stacks: int = 1,
) -> PatternEstimate:
    """Per-frame phases and modulation of one raw stack from an instrument whose wave
    vectors (``(A, 2)`` cycles per raw pixel) and PSF width (raw pixels) are known, e.g.
    from :func:`estimate_patterns_dataset` on its training data: step 3 of the module
    docstring only (no carrier search, the wave vectors are not refined). ``confidence``
    is the band correlation at the given wave vectors; an angle below ``min_confidence``
    (a field too small or too sparse to fit its phases well) is flagged. ``n_stacks``: the
    number of stacks the wave vectors were estimated from (for ``k_std``)."""
    _check_common(psf_sigma, binning, min_confidence, taper)
    if psf_sigma is None:
        raise InputError("psf_sigma is required with known wave vectors")
    x = _require_structure(as_angle_phase_stack(raw, n_angles, n_phases))
    k = np.asarray(wave_vectors, np.float64)
    if k.shape != (int(n_angles), 2) or not np.isfinite(k).all():
        raise InputError(
            f"wave_vectors must be {int(n_angles)} finite (k_x, k_y) pairs in cycles per raw "
            f"pixel, got shape {k.shape}"
        )
    fr = _Frames(x, taper)
    carriers = []
    for a in range(int(n_angles)):
        ka = torch.as_tensor(k[a])
        rho = _sigma_score([(fr, a, ka)], float(psf_sigma), binning)
        carriers.append(_Carrier(ka, rho, math.inf, 0.0, False))
    return _finish(
        fr, carriers, float(psf_sigma), False, binning, min_confidence, max(1, int(n_stacks))
    )


def _verify_angles(frames, searched, psf_sigma, binning, min_confidence):
    """Verify every angle's candidates; then, with an estimated PSF width, verify the angles
    that failed again with the width of those that passed (one PSF for all angles: a
    single angle's width search can go astray on a weak carrier and reject it); then look
    for the carriers still missing where the angles that passed predict them
    (:func:`_recover_from_other_angles`). Returns ``(carriers, psf_sigma, estimated)``."""
    carriers = [
        _verify(frames, a, cands, thr, psf_sigma, binning)
        for a, (cands, thr) in enumerate(searched)
    ]
    estimated = psf_sigma is None
    if estimated:
        psf_sigma = _pooled_sigma(frames, carriers, min_confidence, binning)
        good = [not c.problems(min_confidence) for c in carriers]
        if any(good) and not all(good):
            for a, (cands, thr) in enumerate(searched):
                if not good[a]:
                    again = _verify(frames, a, cands, thr, psf_sigma, binning)
                    if not again.problems(min_confidence):
                        carriers[a] = again
    carriers = _recover_from_other_angles(
        frames, carriers, [thr for _, thr in searched], psf_sigma, binning, min_confidence
    )
    return carriers, psf_sigma, estimated


def _period_outliers(carriers, good: list[int]) -> list[int]:
    """Passed angles whose period differs by more than :data:`_PERIOD_SPREAD` from the
    median of the other passed angles, when those agree among themselves (a wrong peak
    next to the carrier; :func:`_finish` would flag it)."""
    periods = {b: 1.0 / max(float(torch.linalg.norm(carriers[b].k)), 1e-12) for b in good}
    out = []
    for a in good:
        others = [periods[b] for b in good if b != a]
        if len(others) < 2:
            continue
        ref = float(np.median(others))
        if max(abs(p / ref - 1) for p in others) > _PERIOD_SPREAD:
            continue  # the others disagree too: no reference
        if abs(periods[a] / ref - 1) > _PERIOD_SPREAD:
            out.append(a)
    return out


def _recover_from_other_angles(frames, carriers, thresholds, sigma, binning, min_confidence):
    """A failed angle's carrier near where the passed ones put it.

    The ``A`` orientations of an instrument are ``pi / A`` apart and share the period, so
    every passed carrier ``k_b`` predicts ``+-R(+-pi (a - b) / A) k_b`` for angle ``a`` (both
    senses of rotation, both signs). Each prediction as it is, refined from it
    (:func:`_refine_by_phase`), and refined from the coherence map's highest bin within 2
    bins of it, is verified like a searched candidate (band correlation, coherence
    threshold); the best one that passes replaces the failed carrier. Angles that passed
    but whose period disagrees with the others' (a neighbouring peak) are searched again
    the same way. Real instruments' angles are not exactly ``pi / A`` apart: the 2-bin
    window and the refinement allow about a degree on 256-pixel fields."""
    # twice: an angle recovered in the first pass can show that a passed one is the
    # outlier (two of three agree only then)
    for _ in range(2):
        n = len(carriers)
        good = [b for b, c in enumerate(carriers) if not c.problems(min_confidence)]
        outliers = _period_outliers(carriers, good)
        good = [b for b in good if b not in outliers]
        if not good or len(good) == n:
            return carriers
        carriers = _recover_pass(frames, carriers, thresholds, sigma, binning, min_confidence, good)
    return carriers


def _recover_pass(frames, carriers, thresholds, sigma, binning, min_confidence, good):
    """One pass of :func:`_recover_from_other_angles` for the angles not in ``good``."""
    n = len(carriers)
    fr0 = frames[0]
    bin_ = 1.0 / min(fr0.shape)
    for a in range(n):
        if a in good:
            continue
        cc = None
        for fr in frames:
            m, kx, ky = _coarse_map(*_correlation_planes(fr, a))
            cc = m if cc is None else cc + m
        best = None
        for b in good:
            kb = carriers[b].k
            for rot in (1.0, -1.0):
                t = rot * math.pi * (a - b) / n
                kr = torch.stack(
                    (
                        math.cos(t) * kb[0] - math.sin(t) * kb[1],
                        math.sin(t) * kb[0] + math.cos(t) * kb[1],
                    )
                )
                for k0 in (kr, -kr):
                    near = torch.sqrt((kx - k0[0]) ** 2 + (ky - k0[1]) ** 2) <= 2 * bin_
                    local = torch.where(near, cc, torch.zeros_like(cc))
                    j = int(torch.argmax(local))
                    coh = float(local.flatten()[j])
                    if coh <= 0:
                        continue
                    k_bin = torch.stack((kx.flatten()[j], ky.flatten()[j]))
                    # the prediction itself (exact for an instrument whose angles are
                    # pi / A apart), and refined from it and from the coherence bin
                    tries = (
                        k0,
                        _refine_by_phase(frames, a, k0, sigma, binning),
                        _refine_by_phase(frames, a, k_bin, sigma, binning),
                    )
                    for k in tries:
                        rho = _sigma_score([(fr, a, k) for fr in frames], sigma, binning)
                        car = _Carrier(k, rho, coh, thresholds[a], False)
                        if not car.problems(min_confidence) and (best is None or rho > best.rho):
                            best = car
        if best is not None:
            carriers[a] = best
    return carriers


def _pooled_sigma(frames, carriers, min_confidence, binning) -> float:
    """PSF width from every stack and every angle whose carrier passed (all if none)."""
    use = [a for a, c in enumerate(carriers) if not c.problems(min_confidence)]
    use = use or list(range(len(carriers)))
    return _estimate_sigma([(fr, a, carriers[a].k) for fr in frames for a in use], binning)


def estimate_patterns_dataset(
    stacks: Iterable[Any],
    n_angles: int = 3,
    n_phases: int = 3,
    *,
    psf_sigma: float | None = None,
    binning: int | None = None,
    period_range: tuple[float, float] | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    taper: float = 0.15,
) -> DatasetPatternEstimate:
    """Wave vectors (and PSF width) shared by ``stacks`` of one instrument, with each
    stack's phases and modulation (module docstring). Stacks must have the same frame
    shape."""
    _check_common(psf_sigma, binning, min_confidence, taper)
    k_range = _k_range(period_range)
    xs_ = [_require_structure(as_angle_phase_stack(s, n_angles, n_phases)) for s in stacks]
    frames = [_Frames(x, taper) for x in xs_]
    if not frames:
        raise InputError("no stacks given to estimate the patterns from")
    shapes = {fr.shape for fr in frames}
    if len(shapes) > 1:
        raise InputError(
            f"a dataset-level estimate needs frames of one shape; got {sorted(shapes)}"
        )
    # large frames: carrier search, verification and PSF width on the central crop of
    # SEARCH_SIZE pixels (the cost grows with the area; 256 x 256 already gives 0.03 %),
    # then the wave vectors refined and the phases estimated on the whole frames
    h, w = frames[0].shape
    crop = None
    if max(h, w) > SEARCH_SIZE:
        ch, cw = min(h, SEARCH_SIZE), min(w, SEARCH_SIZE)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    search = frames if crop is None else [_Frames(x[..., crop[0], crop[1]], taper) for x in xs_]
    fr0 = search[0]
    searched = [
        _candidates(
            [_correlation_planes(fr, a) for fr in search], k_range, fr0.xs, fr0.ys, fr0.shape
        )
        for a in range(int(n_angles))
    ]
    carriers, psf_sigma, estimated = _verify_angles(
        search, searched, psf_sigma, binning, min_confidence
    )
    if crop is not None:
        for a, car in enumerate(carriers):
            if not car.problems(min_confidence):
                car.k = _refine_by_phase(frames, a, car.k, psf_sigma, binning)
    per_stack = [
        _finish(fr, carriers, psf_sigma, estimated, binning, min_confidence, len(frames))
        for fr in frames
    ]
    ok = np.array([not c.problems(min_confidence) for c in carriers])
    messages = [
        f"angle {a}: " + "; ".join(c.problems(min_confidence))
        for a, c in enumerate(carriers)
        if not ok[a]
    ]
    return DatasetPatternEstimate(
        wave_vectors=torch.stack([c.k for c in carriers]).numpy(),
        confidence=np.asarray([c.rho for c in carriers]),
        ok=ok,
        psf_sigma=float(psf_sigma),
        stacks=per_stack,
        messages=messages,
    )


def pattern_errors(
    est: PatternEstimate,
    true_k_hr: Any,
    true_phases_hr: Any,
    true_modulation: float,
    hr_factor: int,
) -> dict[str, np.ndarray]:
    """Errors of ``est`` against a generator's truth (its ``wave_vectors`` in cycles per HR
    pixel, ``phases`` at HR pixel [0, 0], ``modulation``): per angle the relative wave
    vector error ``|k - k_true| / |k_true|``, the largest per-frame phase error (radians,
    wrapped to (-pi, pi]) and the modulation error. ``k`` and ``-k`` with negated phases
    describe the same pattern; the sign that matches the truth is used. Phases are
    compared at the estimate's phase origin (the frame's centre)."""
    f = int(hr_factor)
    k_true_hr = np.asarray(true_k_hr, np.float64)
    k_true = k_true_hr * f
    ox, oy = est.phase_origin  # raw px; in HR coordinates f * o + (f - 1) / 2
    hx, hy = f * ox + (f - 1) / 2, f * oy + (f - 1) / 2
    ph_true = (
        np.asarray(true_phases_hr, np.float64)
        + 2 * np.pi * (k_true_hr[:, 0] * hx + k_true_hr[:, 1] * hy)[:, None]
    )
    k_est = est.wave_vectors.copy()
    ph_est = est.phases.copy()
    sign = np.where(np.sum(k_est * k_true, axis=1) < 0, -1.0, 1.0)
    k_est = k_est * sign[:, None]
    ph_est = ph_est * sign[:, None]
    dk = np.linalg.norm(k_est - k_true, axis=1) / np.linalg.norm(k_true, axis=1)
    dph = np.angle(np.exp(1j * (ph_est - ph_true)))
    return {
        "k_rel": dk,
        "phase_max": np.abs(dph).max(axis=1),
        "modulation": np.abs(est.modulation - float(true_modulation)),
    }
