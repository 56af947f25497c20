r"""Exact propagation of per-pixel variances through the SIM forward model.

Forward model (:mod:`.forward`): ``y_i = down_f(B(h * S_i)) + b`` with ``S_i = e . l_i``.

Assumptions (all functions here)
--------------------------------
1. ``e``, ``l_i`` and ``h`` are mutually independent random fields.
2. Within ``e`` and within ``l_i`` the pixels are independent (diagonal covariance) with
   the given per-pixel means and variances. The PSF pixels are independent too, unless a
   structured PSF covariance is given: ``psf_sum_to_one=True`` (independent Gaussians
   conditioned on ``sum(h) = 1``) or ``psf_lowrank`` (diagonal plus low rank, e.g. the
   delta-method covariance of a softmax PSF).
3. The background ``b`` is deterministic; camera noise is not included (add it outside).
4. Only the per-frame variance ``Var(y_i)`` is computed; covariances between frames (they
   share ``e`` and ``h``) and between camera pixels are not returned.

Under these assumptions every result is exact (no Gaussian or first-order approximation
is needed: the model is bilinear in ``(h, S)`` and ``S`` is bilinear in ``(e, l)``), and
exact up to the image borders too, because the zero padding of the forward model is
reproduced index by index.

Formulas (``*`` linear convolution, ``.`` pixelwise, ``n = f^2``)
-----------------------------------------------------------------
Product: ``Var(S) = mu_e^2 Var_l + mu_l^2 Var_e + Var_e Var_l``.

Uncertain kernel (``f = 1``): ``Var(h * S) = Var_S * mu_h^2 + mu_S^2 * Var_h + Var_S * Var_h``.

Binned (the correlation-correct rule; dividing the HR variance by ``n`` is wrong)::

    Var(y) = down_f[ (B mu_S)^2 * Var_h  +  (1/n) (B Var_S) * Var_h  +  Var_S * (B mu_h)^2 ]

Here ``B x`` of an *image* is the f x f box average of that image on the HR grid, while
``B mu_h`` is the *kernel* ``mu_h`` convolved with the ``f x f`` box ``1/n`` ("full"), a
kernel of size ``(kh + f - 1, kw + f - 1)``: camera pixel ``I`` sees source pixel ``v``
through the average of the PSF over the ``f x f`` block, ``(B mu_h)(x_I - v)``.
Derivation: ``y_I = sum_{u,v} h_u S_v M_uv`` with ``M_uv = 1/n`` when ``v + u - c`` lies
in block ``I``; then ``Var(y_I) = sum_v Var_S(v) (M^T mu_h)_v^2 + sum_u Var_h(u) (M mu_S)_u^2
+ sum_{u,v} M_uv^2 Var_h(u) Var_S(v)``, and ``M^T mu_h = B mu_h``, ``M mu_S = B mu_S``,
``sum_u M_uv^2 Var_h(u) = (1/n) (box of Var_h)``.

Computation: the box filter is moved onto the small kernels wherever the formula is
linear, ``Var(y) = down_f[ Var_S * ((B mu_h)^2 + (1/n) B Var_h) + (B mu_S)^2 * Var_h ]``,
and each term is a *full* linear convolution sampled at HR index
``f I + f - 1 + (k - 1)//2`` (the index that reproduces ``bin_down`` of the 'same'
convolution exactly, for odd and even ``f`` and ``k``; :func:`.forward.binned_offset`).
With ``conv="fft"`` both convolutions share one inverse FFT evaluated only at the camera
pixels (:func:`.fftconv.fft_convolve_sampled`).

Structured PSF covariance ``Cov(h) = diag(d) + sum_{r,q} C_rq u_r u_q^T``
(``d = Var_h``): the ``(B mu_S)^2 * d`` term gains ``sum_rq C_rq (a * u_r)(a * u_q)`` with
``a = B mu_S``, and the kernel of ``Var_S`` gains ``sum_rq C_rq (B u_r)(B u_q)``.
Sum-to-one (``psf_sum_to_one=True``) is ``u = d``, ``C = -1/sum(d)`` (Gaussian conditioning
on ``sum(h) = 1``; exact for a Gaussian PSF prior whose mean sums to 1): the two PSF terms
become ``a^2 * d - (a * d)^2 / sum(d)`` and ``(1/n)(B Var_S) * d - Var_S * (B d)^2 / sum(d)``.
A softmax PSF (delta method) is ``u = (w, p)``, ``C = [[0, -1], [-1, sum(w)]]``,
``d = w = p^2 Var(z)`` (:func:`softmax_psf_covariance`).

See ``docs/method.md`` for the full derivation and the Monte Carlo checks.
"""

from __future__ import annotations

import numbers

import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.physics.binning import bin_down, box_filter_full, check_hr_factor
from napari_sim_uq.tasks.sim.physics.forward import (
    as_emitter4d,
    as_patterns4d,
    as_psf4d,
    binned_offset,
    check_conv,
    prepare_inputs,
    sampled_conv_sum,
    sim_forward,
)

__all__ = [
    "binned_conv_variance",
    "softmax_psf_covariance",
    "sum_to_one_lowrank",
    "conv_variance",
    "forward_mean_and_variance",
    "naive_binned_variance",
    "product_variance",
    "propagate_variance",
]


def _same_shape(var: torch.Tensor | None, mean: torch.Tensor, name: str) -> None:
    if var is None:
        return
    if not isinstance(var, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor or None, got {type(var).__name__}")
    if var.shape[-2:] != mean.shape[-2:]:
        raise InputError(
            f"{name} has spatial size {tuple(var.shape[-2:])} but its mean has "
            f"{tuple(mean.shape[-2:])}; they must match"
        )


def product_variance(
    mean_a: torch.Tensor,
    var_a: torch.Tensor | None,
    mean_b: torch.Tensor,
    var_b: torch.Tensor | None,
) -> torch.Tensor | None:
    """``Var(a . b) = mu_a^2 Var_b + mu_b^2 Var_a + Var_a Var_b`` for independent ``a, b``.

    Exact (no distributional assumption beyond independence). ``None`` variances count as
    zero; returns ``None`` when both are ``None``. Shapes broadcast.
    """
    if var_a is None and var_b is None:
        return None
    if var_a is None:
        return mean_a.square() * var_b
    if var_b is None:
        return mean_b.square() * var_a
    # mu_a^2 Var_b + mu_b^2 Var_a + Var_a Var_b = Var_b (mu_a^2 + Var_a) + mu_b^2 Var_a
    out = var_b * (mean_a.square() + var_a)
    if out.shape == torch.broadcast_shapes(out.shape, mean_b.shape, var_a.shape):
        return out.addcmul_(mean_b.square(), var_a)  # in place on a temporary
    return out + mean_b.square() * var_a


def _sum_kernel(d: torch.Tensor) -> torch.Tensor:
    s = d.sum(dim=(-2, -1), keepdim=True)
    return s.clamp_min(torch.finfo(d.dtype).tiny)


LowRank = tuple[torch.Tensor, torch.Tensor]


def _quad(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sum_{r,q} C_rq t_r t_q`` for ``C (..., R, R)`` and ``t (..., R, H, W)``."""
    cc = c[..., :, :, None, None]
    return (cc * t.unsqueeze(-3) * t.unsqueeze(-4)).sum(dim=(-4, -3))


def _check_lowrank(lowrank: object, mean_h: torch.Tensor) -> LowRank:
    if not (isinstance(lowrank, tuple | list) and len(lowrank) == 2):
        raise InputError("psf_lowrank must be a pair (U, C) of tensors")
    u, c = lowrank
    if not isinstance(u, torch.Tensor) or not isinstance(c, torch.Tensor):
        raise InputError("psf_lowrank must be a pair (U, C) of tensors")
    kh, kw = mean_h.shape[-2:]
    if u.ndim < 3 or u.shape[-2:] != (kh, kw):
        raise InputError(
            f"psf_lowrank U must have shape (..., R, {kh}, {kw}) like the PSF, got {tuple(u.shape)}"
        )
    r = u.shape[-3]
    if c.ndim < 2 or c.shape[-2:] != (r, r):
        raise InputError(f"psf_lowrank C must have shape (..., {r}, {r}), got {tuple(c.shape)}")
    try:
        torch.broadcast_shapes(u.shape[:-3], c.shape[:-2], mean_h.shape[:-2])
    except RuntimeError as exc:
        raise InputError(
            f"psf_lowrank leading dimensions U {tuple(u.shape[:-3])}, C {tuple(c.shape[:-2])} do "
            f"not broadcast with the PSF's {tuple(mean_h.shape[:-2])}"
        ) from exc
    return u, c


def sum_to_one_lowrank(var_h: torch.Tensor) -> LowRank:
    """Low-rank part of the covariance of independent Gaussian PSF pixels conditioned on
    ``sum(h) = 1``: ``D - d d^T / sum(d)`` = ``diag(d) + U C U^T`` with ``U = d`` (R = 1),
    ``C = -1 / sum(d)``."""
    return var_h.unsqueeze(-3), -1.0 / _sum_kernel(var_h)


def softmax_psf_covariance(
    psf: torch.Tensor, var_logits: torch.Tensor
) -> tuple[torch.Tensor, LowRank]:
    """Delta-method covariance of a softmax PSF ``h = softmax(z)`` over the ``kh x kw`` pixels.

    ``Cov(h) = J diag(v) J^T`` with ``J = diag(p) - p p^T`` (``p = psf``, ``v = Var(z)``)
    equals ``diag(w) - w p^T - p w^T + c p p^T`` with ``w = p^2 v`` and ``c = sum(w)``.
    Returns ``(w, (U, C))`` with ``U = (w, p)`` stacked ``(..., 2, kh, kw)`` and
    ``C = [[0, -1], [-1, c]]`` ``(..., 2, 2)``: pass ``var_psf=w, psf_lowrank=(U, C)``.
    (``w`` is *not* the diagonal of the covariance, which is ``w - 2 w p + c p^2``.)
    """
    w = psf.square() * var_logits
    c = w.sum(dim=(-2, -1))
    u = torch.stack((w, psf.expand_as(w)), dim=-3)
    zero = torch.zeros_like(c)
    cmat = torch.stack((torch.stack((zero, -1 - zero), -1), torch.stack((-1 - zero, c), -1)), -2)
    return w, (u, cmat)


def binned_conv_variance(
    mean_s: torch.Tensor,
    var_s: torch.Tensor | None,
    mean_h: torch.Tensor,
    var_h: torch.Tensor | None,
    hr_factor: int = 1,
    *,
    psf_sum_to_one: bool = False,
    psf_lowrank: LowRank | None = None,
    conv: str = "fft",
    clamp: bool = True,
) -> torch.Tensor:
    """Exact ``Var(bin_down(h * S, f))`` for independent ``S`` and ``h``.

    Parameters
    ----------
    mean_s, var_s : ``(..., fH, fW)`` mean and variance of the HR signal ``S``, whose pixels
        are independent (``var_s`` may be ``None``: deterministic ``S``).
    mean_h, var_h : ``(..., kh, kw)`` PSF mean and per-pixel variance (``var_h`` may be
        ``None``); leading dimensions broadcast against those of ``S``.
    hr_factor : binning factor ``f >= 1`` (``fH``, ``fW`` divisible by ``f``).
    psf_sum_to_one : PSF covariance conditioned on ``sum(h) = 1``,
        ``D - d d^T / sum(d)`` with ``d = var_h`` (module docstring).
    psf_lowrank : ``(U, C)``, ``U (..., R, kh, kw)``, ``C (..., R, R)``: a general PSF
        covariance ``diag(var_h) + sum_{r,q} C_rq u_r u_q^T`` (e.g. a softmax PSF, see
        :func:`softmax_psf_covariance`). Exclusive with ``psf_sum_to_one``.
    conv : convolution backend, ``"fft"``, ``"direct"`` or ``"direct_strided"``.
    clamp : clip tiny negative round-off values (FFT) to 0.

    Returns ``(..., fH/f, fW/f)``. With ``f = 1`` this is the uncertain-kernel rule
    ``Var_S * mu_h^2 + mu_S^2 * Var_h + Var_S * Var_h`` ('same' aligned).
    """
    f = check_hr_factor(hr_factor)
    conv = check_conv(conv)
    _same_shape(var_s, mean_s, "var_s")
    _same_shape(var_h, mean_h, "var_h")
    fh, fw = mean_s.shape[-2:]
    if fh % f or fw % f:
        raise InputError(
            f"HR image size {fh} x {fw} is not divisible by hr_factor={f}; the HR grid must be "
            f"exactly {f} times the camera grid"
        )
    if psf_sum_to_one and psf_lowrank is not None:
        raise InputError("give either psf_sum_to_one=True or psf_lowrank, not both")
    lowrank = None
    if psf_lowrank is not None:
        lowrank = _check_lowrank(psf_lowrank, mean_h)
    elif psf_sum_to_one and var_h is not None:
        lowrank = sum_to_one_lowrank(var_h)
    n = f * f
    kh, kw = mean_h.shape[-2:]
    offset = binned_offset(f, kh, kw)
    out_shape = (fh // f, fw // f)

    # Kernel form of the binning rule (box filtering moved onto the small kernels where the
    # formula is linear): Var_S * [(B mu_h)^2 + (1/n) B Var_h] + (B mu_S)^2 * Var_h,
    # plus the low-rank covariance terms (module docstring).
    pairs = []
    if var_s is not None:
        kern = box_filter_full(mean_h, f).square()
        if var_h is not None:
            kern = kern + box_filter_full(var_h, f) / n
        if lowrank is not None:
            kern = kern + _quad(lowrank[1], box_filter_full(lowrank[0], f))
        pairs.append((var_s, kern))
    a = None
    if var_h is not None or lowrank is not None:
        # B mu_S on the extended grid (fH+f-1, fW+f-1), kept as the block *sum* n B mu_S;
        # the 1/n^2 goes onto the small kernel: (B mu_S)^2 * Var_h = (n B mu_S)^2 * (Var_h/n^2)
        a = box_filter_full(mean_s, f, normalize=False)
        if var_h is not None:
            pairs.append((a.square(), var_h / (n * n)))
    if not pairs and lowrank is None:
        lead = torch.broadcast_shapes(mean_s.shape[:-2], mean_h.shape[:-2])
        return mean_s.new_zeros(*lead, *out_shape)
    out = sampled_conv_sum(pairs, f, offset, out_shape, conv) if pairs else 0.0
    if lowrank is not None:
        u, c = lowrank
        t = sampled_conv_sum([(a.unsqueeze(-3), u / n)], f, offset, out_shape, conv)
        out = out + _quad(c, t)
    return out.clamp_min(0) if clamp else out


def conv_variance(
    mean_s: torch.Tensor,
    var_s: torch.Tensor | None,
    mean_h: torch.Tensor,
    var_h: torch.Tensor | None,
    *,
    psf_sum_to_one: bool = False,
    psf_lowrank: LowRank | None = None,
    conv: str = "fft",
    clamp: bool = True,
) -> torch.Tensor:
    """``Var(h * S) = Var_S * mu_h^2 + mu_S^2 * Var_h + Var_S * Var_h`` ('same' size).

    Options as in :func:`binned_conv_variance` (this is its ``hr_factor = 1`` case).
    """
    return binned_conv_variance(
        mean_s,
        var_s,
        mean_h,
        var_h,
        1,
        psf_sum_to_one=psf_sum_to_one,
        psf_lowrank=psf_lowrank,
        conv=conv,
        clamp=clamp,
    )


def naive_binned_variance(
    mean_s: torch.Tensor,
    var_s: torch.Tensor | None,
    mean_h: torch.Tensor,
    var_h: torch.Tensor | None,
    hr_factor: int = 1,
    *,
    psf_sum_to_one: bool = False,
    psf_lowrank: LowRank | None = None,
    conv: str = "fft",
) -> torch.Tensor:
    """The WRONG rule, kept for comparison: ``bin_down(Var(h * S), f) / f^2``.

    It treats the ``f^2`` HR pixels of a block as uncorrelated, but after a convolution they
    are strongly positively correlated, so it underestimates the variance by up to ``f^2``.
    """
    f = check_hr_factor(hr_factor)
    v = conv_variance(
        mean_s,
        var_s,
        mean_h,
        var_h,
        psf_sum_to_one=psf_sum_to_one,
        psf_lowrank=psf_lowrank,
        conv=conv,
    )
    return bin_down(v, f) / (f * f)


def _weight(w: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(w, torch.Tensor):
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise InputError("psf_var_weight must be finite and >= 0")
        return w
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (w >= 0) or w == float("inf"):
        raise InputError(f"psf_var_weight must be a finite number >= 0, got {w!r}")
    return float(w)


def _lowrank4d(lowrank: object, psf: torch.Tensor) -> LowRank:
    """Bring a user ``(U, C)`` (leading dims like the user's PSF) to the 4-D PSF layout."""
    if not (isinstance(lowrank, tuple | list) and len(lowrank) == 2):
        raise InputError("psf_lowrank must be a pair (U, C) of tensors")
    u, c = lowrank
    if not isinstance(u, torch.Tensor) or not isinstance(c, torch.Tensor):
        raise InputError("psf_lowrank must be a pair (U, C) of tensors")
    lead = psf.ndim - 2  # 0: (kh, kw), 1: (B, kh, kw), 2: (B, F, kh, kw)
    if u.ndim != lead + 3 or c.ndim != lead + 2:
        raise InputError(
            f"psf_lowrank for a PSF of shape {tuple(psf.shape)} needs U of shape "
            f"{tuple(psf.shape[:-2])} + (R, kh, kw) and C of shape {tuple(psf.shape[:-2])} + "
            f"(R, R); got U {tuple(u.shape)}, C {tuple(c.shape)}"
        )
    if lead == 0:
        return u[None, None], c[None, None]
    if lead == 1:
        return u[:, None], c[:, None]
    return u, c


def propagate_variance(
    emitter: torch.Tensor,
    patterns: torch.Tensor,
    psf: torch.Tensor,
    hr_factor: int = 1,
    *,
    var_emitter: torch.Tensor | None = None,
    var_patterns: torch.Tensor | None = None,
    var_psf: torch.Tensor | None = None,
    psf_var_weight: float | torch.Tensor = 1.0,
    psf_sum_to_one: bool = False,
    psf_lowrank: LowRank | None = None,
    naive: bool = False,
    conv: str = "fft",
) -> torch.Tensor:
    """Variance of the SIM raw frames ``y_i = down_f(B(h * (e . l_i))) + b``.

    Parameters
    ----------
    emitter, patterns, psf : the *means* of ``e``, ``l`` and ``h``, shapes as in
        :func:`napari_sim_uq.tasks.sim.physics.forward.sim_forward`.
    hr_factor : ``f >= 1``.
    var_emitter, var_patterns, var_psf : per-pixel variances with the same conventions
        as the corresponding means (and the same spatial size); ``None`` means zero.
        ``var_psf`` of shape ``(kh, kw)``, ``(B, kh, kw)`` or ``(B, F, kh, kw)``.
    psf_var_weight : factor (>= 0) applied to the whole PSF covariance, e.g. to anneal it.
    psf_sum_to_one : PSF pixels are independent Gaussians conditioned on ``sum(h) = 1``:
        covariance ``D - d d^T / sum(d)`` with ``d = var_psf``.
    psf_lowrank : ``(U, C)``: PSF covariance ``diag(var_psf) + sum_rq C_rq u_r u_q^T``, with
        ``U`` of shape ``psf.shape[:-2] + (R, kh, kw)`` and ``C`` ``psf.shape[:-2] + (R, R)``.
        For a softmax PSF use :func:`softmax_psf_covariance`. Exclusive with
        ``psf_sum_to_one``.
    naive : use the wrong divide-by-``f^2`` binning rule (for tests/comparison only).
    conv : ``"fft"`` (default), ``"direct"`` or ``"direct_strided"`` convolutions.

    Returns ``(B, F, H, W)`` (``(F, H, W)`` for an unbatched emitter), ``H = fH / f``.
    The assumptions (independence of ``e``, ``l``, ``h`` and of their pixels) are listed in
    the module docstring. Float32 in, float32 out; device-agnostic; differentiable.
    """
    p = prepare_inputs(emitter, patterns, psf, hr_factor)
    ve = None if var_emitter is None else as_emitter4d(var_emitter, "var_emitter")
    vl = None if var_patterns is None else as_patterns4d(var_patterns, "var_patterns")
    vh = None if var_psf is None else as_psf4d(var_psf, "var_psf")
    _same_shape(ve, p.emitter, "var_emitter")
    _same_shape(vl, p.patterns, "var_patterns")
    _same_shape(vh, p.psf, "var_psf")
    weight = _weight(psf_var_weight)
    if vh is not None:
        vh = vh * weight
    lowrank = None
    if psf_lowrank is not None:
        u, c = _lowrank4d(psf_lowrank, psf)
        lowrank = (u, c * weight)
    mean_s = p.emitter * p.patterns
    var_s = product_variance(p.emitter, ve, p.patterns, vl)
    rule = naive_binned_variance if naive else binned_conv_variance
    out = rule(
        mean_s,
        var_s,
        p.psf,
        vh,
        p.f,
        psf_sum_to_one=psf_sum_to_one,
        psf_lowrank=lowrank,
        conv=conv,
    )
    return out[0] if p.unbatched else out


def forward_mean_and_variance(
    emitter: torch.Tensor,
    patterns: torch.Tensor,
    psf: torch.Tensor,
    hr_factor: int = 1,
    background: float | torch.Tensor = 0.0,
    *,
    var_emitter: torch.Tensor | None = None,
    var_patterns: torch.Tensor | None = None,
    var_psf: torch.Tensor | None = None,
    psf_var_weight: float | torch.Tensor = 1.0,
    psf_sum_to_one: bool = False,
    psf_lowrank: LowRank | None = None,
    conv: str = "fft",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[y], Var(y))`` of the SIM raw frames.

    ``E[y] = down_f(B(mu_h * (mu_e . mu_l))) + b`` exactly (the model is bilinear and the
    factors are independent), and ``Var(y)`` from :func:`propagate_variance` (same options).
    """
    mean = sim_forward(emitter, patterns, psf, hr_factor, background, conv=conv)
    var = propagate_variance(
        emitter,
        patterns,
        psf,
        hr_factor,
        var_emitter=var_emitter,
        var_patterns=var_patterns,
        var_psf=var_psf,
        psf_var_weight=psf_var_weight,
        psf_sum_to_one=psf_sum_to_one,
        psf_lowrank=psf_lowrank,
        conv=conv,
    )
    return mean, var
