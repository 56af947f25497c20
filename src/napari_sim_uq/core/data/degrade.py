"""Seeded, composable degradations of 2D images (PyTorch), for training pairs and layers.

Images are float tensors ``(B, C, H, W)`` (``C = 1`` for this task) with intensities about
in ``[0, 1]``. A :class:`Degradation` is a sequence of steps applied in order; calling it
returns a :class:`DegradeResult` ``(degraded, observed_mask)``, where ``observed_mask`` is
``(B, 1, H, W)`` in the input's dtype (1 = observed, 0 = removed) for specs with a masking
step, the product of the steps' masks, and ``None`` otherwise. Steps after a mask act on
the filled pixels too; the mask still marks them as not observed.

The steps (spec names, parameters in positional order, defaults):

``noise:sigma`` (0.1)
    additive Gaussian noise ``x + sigma * N(0, 1)``.
``poisson:photons:read`` (100, 0)
    Poisson-Gaussian camera noise ``Poisson(photons * max(x, 0)) / photons +
    read * N(0, 1)``: variance ``max(x, 0) / photons + read^2`` (drawn by
    ``torch.poisson``).
``jpeg:quality`` (30)
    JPEG compression by Pillow at ``quality`` (1-100): each image plane is clipped to
    ``[0, 1]``, quantised to 8 bits (``round(255 x)``, ties to even), encoded and decoded
    as an 8-bit grayscale JPEG and divided by 255. So the result is always 8-bit data in
    ``[0, 1]``, even at quality 100. Not random.
``mask:mode:fraction:size:fill`` (boxes, 0.25, 0 = mode default, 0)
    removes pixels (sets them to ``fill``). ``pixels``: each pixel independently with
    probability ``fraction``. ``boxes``: squares of side ``size`` x the shorter image side
    (default 1/8) at uniform random places, added one at a time until at least
    ``fraction`` of the image is covered (so the removed fraction is in
    ``[fraction, fraction + one box)``). ``stripes``: full-length bands of width ``size``
    x the shorter side (default 1/32), all horizontal or all vertical (random per image),
    added until at least ``fraction`` is covered. ``half``: one half of the image (top,
    bottom, left or right, random per image; ``floor(H/2)`` rows or ``floor(W/2)``
    columns), ``fraction`` is ignored.
``blur:sigma`` (1.0)
    Gaussian blur with standard deviation ``sigma`` pixels, kernel truncated at 4 sigma,
    boundary ``reflect`` (``d c b a | a b c d``, as ``scipy.ndimage``'s default), computed
    as a separable convolution. Not random.

Specs are written ``"noise:0.1,jpeg:30,mask:boxes"``; parameters are positional (in the
order above) or named (``"mask:pixels:fraction=0.5"``, ``"poisson:photons=50:read=0.02"``);
``""`` or ``"none"`` is the identity. :meth:`Degradation.to_dict` and
:meth:`Degradation.from_dict` store a degradation in a checkpoint.

Randomness comes only from the ``generator`` argument (a ``torch.Generator`` or an integer
seed; ``None`` uses torch's global generator): random numbers are drawn on the generator's
device (CPU for a seed) in a fixed order and moved to the image's device, so the same seed
gives the same degradation for the same input (up to float rounding on other devices).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from napari_sim_uq.core.errors import InputError

__all__ = [
    "DEGRADATIONS",
    "MASK_MODES",
    "Blur",
    "DegradeResult",
    "Degradation",
    "GaussianNoise",
    "Jpeg",
    "Mask",
    "PoissonGaussianNoise",
    "degrade_array",
    "gaussian_blur",
    "jpeg_roundtrip",
    "make_generator",
    "parse_degradations",
]

MASK_MODES = ("boxes", "stripes", "pixels", "half")


class DegradeResult(NamedTuple):
    """A degraded batch and its mask of observed pixels (``None`` when nothing is removed)."""

    degraded: torch.Tensor
    observed_mask: torch.Tensor | None


# --------------------------------------------------------------------------- random numbers


def make_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """A ``torch.Generator`` from a generator (returned as is), a seed >= 0, or ``None``."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, (int, np.integer)):
        raise InputError(
            f"generator must be a torch.Generator, an integer seed or None, got {generator!r}"
        )
    if generator < 0:
        raise InputError(f"seed must be >= 0, got {generator!r}")
    g = torch.Generator()
    g.manual_seed(int(generator))
    return g


def _device_of(gen: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return gen.device if gen is not None else x.device


def _randn(shape, gen, x: torch.Tensor) -> torch.Tensor:
    r = torch.randn(shape, generator=gen, device=_device_of(gen, x), dtype=x.dtype)
    return r.to(x.device)


def _rand(shape, gen, x: torch.Tensor) -> torch.Tensor:
    r = torch.rand(shape, generator=gen, device=_device_of(gen, x), dtype=x.dtype)
    return r.to(x.device)


def _randint(high: int, gen, x: torch.Tensor) -> int:
    """One integer in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=gen, device=_device_of(gen, x)).item())


# --------------------------------------------------------------------------- kernels


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian blur of the last two axes of ``(B, C, H, W)`` with ``reflect`` boundary
    (``scipy.ndimage.gaussian_filter``'s default; the same kernel radius
    ``int(truncate * sigma + 0.5)``)."""
    if sigma <= 0:
        return x
    B, C, H, W = x.shape
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(device=x.device, dtype=x.dtype)
    y = x.reshape(B * C, 1, H, W)
    y = y.index_select(3, _reflect_index(W, r, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = y.index_select(2, _reflect_index(H, r, x.device))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(B, C, H, W)


def _reflect_index(n: int, r: int, device) -> torch.Tensor:
    """Indices of ``[-r, n + r)`` folded into ``[0, n)`` by half-sample symmetric reflection
    (also for ``r > n``: the pattern repeats with period ``2n``)."""
    i = torch.arange(-r, n + r) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i).to(device)


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Every ``(H, W)`` plane of ``x`` clipped to ``[0, 1]``, quantised to 8 bits, JPEG
    encoded and decoded by Pillow at ``quality``, divided by 255 (module docstring)."""
    from PIL import Image

    planes = torch.round(x.detach().to("cpu", torch.float64).clamp(0, 1) * 255)
    planes = planes.to(torch.uint8).numpy()
    out = np.empty(planes.shape, np.uint8)
    for idx in np.ndindex(planes.shape[:-2]):
        buf = io.BytesIO()
        Image.fromarray(planes[idx]).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as img:
            out[idx] = np.asarray(img.convert("L"))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255


# --------------------------------------------------------------------------- steps


def _number(value: Any, step: str, name: str, kind: type) -> Any:
    """``value`` (a number or a spec string) as ``kind`` (float, int or str)."""
    if kind is str:
        if not isinstance(value, str):
            raise InputError(f"{step}: {name} must be a name, got {value!r}")
        return value.strip().lower()
    try:
        if isinstance(value, bool):
            raise ValueError
        if kind is int:
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        what = "an integer" if kind is int else "a number"
        raise InputError(f"{step}: {name} must be {what}, got {value!r}") from None
    if not math.isfinite(out):
        raise InputError(f"{step}: {name} must be finite, got {value!r}")
    return out


@dataclass(frozen=True)
class _Step:
    """One degradation step; subclasses are frozen dataclasses whose fields are the
    parameters, in positional spec order."""

    name: ClassVar[str] = ""
    random: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for f in fields(self):
            kind = type(f.default)
            object.__setattr__(
                self, f.name, _number(getattr(self, f.name), self.name, f.name, kind)
            )
        self._check()

    def _check(self) -> None:
        pass

    def _bad(self, param: str, rule: str) -> InputError:
        return InputError(f"{self.name}: {param} must be {rule}, got {getattr(self, param)!r}")

    def __call__(
        self, x: torch.Tensor, gen: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def spec(self) -> str:
        return ":".join([self.name] + [f"{k}={v}" for k, v in asdict(self).items()])

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class GaussianNoise(_Step):
    """Additive Gaussian noise of standard deviation ``sigma``."""

    name: ClassVar[str] = "noise"
    sigma: float = 0.1

    def _check(self) -> None:
        if self.sigma < 0:
            raise self._bad("sigma", ">= 0")

    def __call__(self, x, gen):
        return x + self.sigma * _randn(x.shape, gen, x), None

    def describe(self) -> str:
        return f"Gaussian noise (sigma {self.sigma:g})"


@dataclass(frozen=True)
class PoissonGaussianNoise(_Step):
    """``Poisson(photons * max(x, 0)) / photons + read * N(0, 1)``."""

    name: ClassVar[str] = "poisson"
    photons: float = 100.0
    read: float = 0.0

    def _check(self) -> None:
        if self.photons <= 0:
            raise self._bad("photons", "> 0 (photons at intensity 1)")
        if self.read < 0:
            raise self._bad("read", ">= 0 (read-noise sigma in intensity units)")

    def __call__(self, x, gen):
        dev = _device_of(gen, x)
        rate = x.detach().to(dev).clamp(min=0) * self.photons
        y = (torch.poisson(rate, generator=gen) / self.photons).to(x.device)
        if self.read:
            y = y + self.read * _randn(x.shape, gen, x)
        return y, None

    def describe(self) -> str:
        return f"Poisson-Gaussian noise ({self.photons:g} photons at 1, read sigma {self.read:g})"


@dataclass(frozen=True)
class Jpeg(_Step):
    """JPEG compression at ``quality`` (Pillow, 8-bit grayscale)."""

    name: ClassVar[str] = "jpeg"
    random: ClassVar[bool] = False
    quality: int = 30

    def _check(self) -> None:
        if not 1 <= self.quality <= 100:
            raise self._bad("quality", "an integer from 1 to 100")

    def __call__(self, x, gen):
        return jpeg_roundtrip(x, self.quality), None

    def describe(self) -> str:
        return f"JPEG (quality {self.quality}, 8-bit)"


@dataclass(frozen=True)
class Mask(_Step):
    """Removed pixels (set to ``fill``): boxes, stripes, pixel dropout or half the image."""

    name: ClassVar[str] = "mask"
    mode: str = "boxes"
    fraction: float = 0.25
    size: float = 0.0
    fill: float = 0.0

    def _check(self) -> None:
        if self.mode not in MASK_MODES:
            raise self._bad("mode", f"one of {', '.join(MASK_MODES)}")
        if not 0 < self.fraction < 1:
            raise self._bad("fraction", "between 0 and 1 (exclusive)")
        if self.size == 0:
            default = {"boxes": 1 / 8, "stripes": 1 / 32}.get(self.mode, 0.0)
            object.__setattr__(self, "size", default)
        if self.mode in ("boxes", "stripes") and not 0 < self.size <= 1:
            raise self._bad("size", "in (0, 1] (a fraction of the shorter image side)")

    def _one(self, H: int, W: int, gen, x: torch.Tensor) -> torch.Tensor:
        """The removed pixels of one image, bool ``(H, W)`` on the CPU."""
        removed = torch.zeros(H, W, dtype=torch.bool)
        target = self.fraction * H * W
        if self.mode == "half":
            side = _randint(4, gen, x)
            if side == 0:
                removed[: H // 2] = True
            elif side == 1:
                removed[H - H // 2 :] = True
            elif side == 2:
                removed[:, : W // 2] = True
            else:
                removed[:, W - W // 2 :] = True
        elif self.mode == "boxes":
            s = max(1, round(self.size * min(H, W)))
            sy, sx = min(s, H), min(s, W)
            while removed.sum() < target:
                y0, x0 = _randint(H - sy + 1, gen, x), _randint(W - sx + 1, gen, x)
                removed[y0 : y0 + sy, x0 : x0 + sx] = True
        else:  # stripes
            w = max(1, round(self.size * min(H, W)))
            vertical = _randint(2, gen, x) == 1
            n = W if vertical else H
            w = min(w, n)
            while removed.sum() < target:
                p = _randint(n - w + 1, gen, x)
                if vertical:
                    removed[:, p : p + w] = True
                else:
                    removed[p : p + w] = True
        return removed

    def __call__(self, x, gen):
        B, _, H, W = x.shape
        if self.mode == "pixels":
            observed = (_rand((B, 1, H, W), gen, x) >= self.fraction).to(x.dtype)
        else:
            removed = torch.stack([self._one(H, W, gen, x) for _ in range(B)])
            observed = (~removed).to(device=x.device, dtype=x.dtype)[:, None]
        y = x * observed + self.fill * (1 - observed)
        return y, observed

    def describe(self) -> str:
        if self.mode == "half":
            what = "half of the image"
        elif self.mode == "pixels":
            what = f"{self.fraction:.0%} of the pixels"
        else:
            what = f"{self.mode} of {self.size:g} x the side, >= {self.fraction:.0%}"
        return f"mask ({what}; fill {self.fill:g})"


@dataclass(frozen=True)
class Blur(_Step):
    """Gaussian blur of standard deviation ``sigma`` pixels (reflect boundary)."""

    name: ClassVar[str] = "blur"
    random: ClassVar[bool] = False
    sigma: float = 1.0

    def _check(self) -> None:
        if self.sigma <= 0:
            raise self._bad("sigma", "> 0 (pixels)")
        if self.sigma > 100:
            raise self._bad("sigma", "<= 100 pixels")

    def __call__(self, x, gen):
        return gaussian_blur(x, self.sigma), None

    def describe(self) -> str:
        return f"Gaussian blur (sigma {self.sigma:g} px)"


#: spec name -> step class
DEGRADATIONS: dict[str, type[_Step]] = {
    c.name: c for c in (GaussianNoise, PoissonGaussianNoise, Jpeg, Mask, Blur)
}
_ALIASES = {"gaussian": "noise", "shot": "poisson", "compress": "jpeg", "blurring": "blur"}


def _valid_list() -> str:
    return "; ".join(
        f"{n} ({', '.join(f.name for f in fields(c))})" for n, c in DEGRADATIONS.items()
    )


def _step_class(name: Any, where: str) -> type[_Step]:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DEGRADATIONS:
        raise InputError(
            f"unknown degradation {name!r}{where}; valid degradations (parameters): {_valid_list()}"
        )
    return DEGRADATIONS[key]


# --------------------------------------------------------------------------- composition


class Degradation:
    """Steps applied in order (module docstring); build with :func:`parse_degradations`."""

    def __init__(self, steps: Iterable[_Step] = ()) -> None:
        self.steps = tuple(steps)
        for s in self.steps:
            if not isinstance(s, _Step):
                raise InputError(
                    f"a degradation step must be one of {list(DEGRADATIONS)}, got {s!r}"
                )

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | int | None = None
    ) -> DegradeResult:
        """Degrade a batch ``(B, C, H, W)`` of float images."""
        if not isinstance(x, torch.Tensor):
            raise InputError(
                f"degradations take a torch tensor (B, C, H, W), got {type(x).__name__}; "
                "use degrade_array for NumPy images"
            )
        if x.ndim != 4 or not x.is_floating_point():
            raise InputError(
                f"degradations take a float tensor of shape (B, C, H, W), got "
                f"{tuple(x.shape)} {x.dtype} (a single image: x[None, None])"
            )
        gen = make_generator(generator)
        mask = None
        y = x
        for step in self.steps:
            y, m = step(y, gen)
            if m is not None:
                mask = m if mask is None else mask * m
        return DegradeResult(y, mask)

    @property
    def has_mask(self) -> bool:
        """Whether the result comes with a mask of observed pixels."""
        return any(isinstance(s, Mask) for s in self.steps)

    @property
    def is_random(self) -> bool:
        return any(s.random for s in self.steps)

    def describe(self) -> str:
        """A sentence for humans (logs, layer metadata)."""
        return ", then ".join(s.describe() for s in self.steps) or "none"

    def spec(self) -> str:
        """The canonical spec string (:func:`parse_degradations` reads it back)."""
        return ",".join(s.spec() for s in self.steps) or "none"

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: Mapping) -> Degradation:
        if (
            not isinstance(d, Mapping)
            or set(d) != {"steps"}
            or not isinstance(d["steps"], (list, tuple))
        ):
            raise InputError(f"a stored degradation must be a dict {{'steps': [...]}}, got {d!r}")
        steps = []
        for i, entry in enumerate(d["steps"]):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise InputError(
                    f"degradation step {i} must be a dict with a 'name', got {entry!r}"
                )
            params = dict(entry)
            step_cls = _step_class(params.pop("name"), f" (stored step {i})")
            steps.append(_build(step_cls, [], params, f"stored step {i}"))
        return cls(steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Degradation) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    def __repr__(self) -> str:
        return f"Degradation({self.spec()!r})"


def _build(step_cls: type[_Step], positional: list, named: dict, where: str) -> _Step:
    names = [f.name for f in fields(step_cls)]
    if len(positional) > len(names):
        raise InputError(
            f"{step_cls.name} takes at most {len(names)} parameter(s) ({', '.join(names)}), "
            f"got {len(positional)} in {where}"
        )
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise InputError(
            f"{step_cls.name}: unknown parameter(s) {', '.join(map(repr, unknown))} in {where}; "
            f"valid: {', '.join(names)}"
        )
    kwargs = dict(zip(names[: len(positional)], positional, strict=True))
    twice = sorted(set(kwargs) & set(named))
    if twice:
        raise InputError(f"{step_cls.name}: parameter(s) {', '.join(twice)} given twice in {where}")
    return step_cls(**kwargs, **named)


def parse_degradations(spec: str | Degradation | Mapping | None) -> Degradation:
    """A :class:`Degradation` from a spec string such as ``"noise:0.1,jpeg:30,mask:boxes"``
    (module docstring), a stored dict (:meth:`Degradation.to_dict`) or a Degradation.
    ``None``, ``""`` and ``"none"`` give the identity."""
    if spec is None:
        return Degradation()
    if isinstance(spec, Degradation):
        return spec
    if isinstance(spec, Mapping):
        return Degradation.from_dict(spec)
    if not isinstance(spec, str):
        raise InputError(
            f"degradations must be given as a string like 'noise:0.1,jpeg:30', got {spec!r}"
        )
    text = spec.strip()
    if text.lower() in ("", "none"):
        return Degradation()
    steps = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise InputError(f"empty entry in degradations {spec!r} (two commas in a row?)")
        name, *args = (a.strip() for a in item.split(":"))
        step_cls = _step_class(name, f" in {spec!r}")
        positional, named = [], {}
        for a in args:
            if "=" in a:
                k, v = (s.strip() for s in a.split("=", 1))
                named[k.lower()] = v
            elif named:
                raise InputError(
                    f"{step_cls.name}: positional parameter {a!r} after a named one in {item!r}"
                )
            elif not a:
                raise InputError(f"{step_cls.name}: empty parameter in {item!r}")
            else:
                positional.append(a)
        steps.append(_build(step_cls, positional, named, repr(item)))
    return Degradation(steps)


def degrade_array(
    image: np.ndarray,
    degradation: str | Degradation | Mapping | None,
    seed: int | torch.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Degrade a NumPy image ``(H, W)`` or stack ``(N, H, W)`` (a napari layer's data):
    returns the float32 result of the same shape and the bool mask of observed pixels
    (``None`` without a masking step)."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.dtype.kind not in "uif" or a.size == 0:
        raise InputError(
            f"degrade: expected a 2D image or a stack of 2D images of real numbers, got shape "
            f"{a.shape} and type {a.dtype}"
        )
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    x = x.reshape(-1, 1, *a.shape[-2:])
    out, mask = parse_degradations(degradation)(x, seed)
    y = out.numpy().reshape(a.shape)
    m = None if mask is None else mask.numpy().reshape(a.shape) > 0.5
    return y, m
