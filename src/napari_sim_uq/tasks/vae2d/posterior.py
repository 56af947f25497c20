r"""The latent posterior of a generative model given a corrupted image (DeepUQ; Böhm,
Lanusse & Seljak 2019), for any differentiable decoder ``G``.

Model
-----
A clean image is ``G(z) + e`` with ``z ~ N(0, I_K)`` and a per-pixel model error
``e ~ N(0, sigma_model^2)``; the observation is the clean image plus noise of std
``sigma_noise``, on the observed pixels ``M`` only (``M = 1`` observed). Then

``U(z) = -log p(z | x) + const = sum_M (x - G(z))^2 / (2 s^2) + |z|^2 / 2``,
``s^2 = sigma_noise^2 + sigma_model^2`` (per pixel or one number).

:func:`find_modes` (a generator of progress tuples, returning :class:`PosteriorFit` per
image) minimises ``U`` from several starts per image, all images and starts in one batch:
Adam, then L-BFGS (strong Wolfe line search) on the summed energies (the starts are
independent, so the sum's minimisers are the per-start minimisers), then one Newton step
with the exact Hessian. The Hessian ``H_k = grad^2 U(z_k)`` comes from ``torch.func``
(forward-over-reverse, vmapped over modes). Modes within ``merge_tol`` posterior standard
deviations of a lower-energy mode (Mahalanobis distance under its ``H``) are duplicates.
Each positive-definite mode gives a Laplace Gaussian ``N(z_k, H_k^{-1})`` with evidence
``p(x, z_k) |H_k^{-1}|^{1/2}``, i.e. log weight ``-U(z_k) - log|H_k| / 2`` (the constants
are the same for every mode of one image), normalised over the image's modes. A point where
``H`` is not positive definite (a saddle or an unconverged start) is reported and left out.

:func:`sample_mixture` draws latents from the mixture. For a linear decoder
``G(z) = W z + b`` the posterior is Gaussian and this is exact: the mode is
``(W^T M W / s^2 + I)^{-1} W^T M (x - b) / s^2`` and the covariance the inverse of that
matrix (a test checks both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

__all__ = ["PosteriorFit", "energy", "find_modes", "sample_mixture"]

Decoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PosteriorFit:
    """The Laplace-mixture posterior of one image.

    ``z (M, K)``: distinct positive-definite modes, by decreasing weight; ``cov``,
    ``hessian (M, K, K)``; ``energy (M,)`` (``U`` at the mode); ``weight (M,)`` (sum 1);
    ``chi2 (M,)``: ``sum_M (x - G(z))^2 / s^2`` per observed pixel; ``map_index``: the
    mode of lowest energy (the MAP). ``n_starts``, ``n_rejected`` (starts that ended where
    ``H`` is not positive definite) and ``n_merged`` (duplicates).
    """

    z: torch.Tensor
    cov: torch.Tensor
    hessian: torch.Tensor
    energy: torch.Tensor
    weight: torch.Tensor
    chi2: torch.Tensor
    map_index: int
    n_starts: int
    n_rejected: int
    n_merged: int
    chol: torch.Tensor = field(repr=False, default=None)  # Cholesky factors of cov

    @property
    def z_map(self) -> torch.Tensor:
        return self.z[self.map_index]

    def summary(self) -> dict:
        return {
            "n_modes": int(self.z.shape[0]),
            "weights": [float(w) for w in self.weight],
            "energies": [float(e) for e in self.energy],
            "chi2_per_observed_pixel": [float(c) for c in self.chi2],
            "map_mode": int(self.map_index),
            "n_starts": int(self.n_starts),
            "n_rejected_not_positive_definite": int(self.n_rejected),
            "n_merged_duplicates": int(self.n_merged),
        }


def energy(decode: Decoder, z: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``U(z)`` for latents ``z (N, K)`` and images ``x (N, H, W)`` with per-pixel weights
    ``w = M / s^2`` (``(N, H, W)``); returns ``(N,)``."""
    r = x - decode(z)
    return 0.5 * (w * r * r).flatten(1).sum(1) + 0.5 * (z * z).sum(1)


def _hessians(decode: Decoder, z: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact Hessians ``(N, K, K)`` of ``U`` at ``z (N, K)`` (torch.func, vmapped)."""
    from torch.func import jacfwd, jacrev, vmap

    def u_one(zi, xi, wi):
        r = xi - decode(zi[None])[0]
        return 0.5 * (wi * r * r).sum() + 0.5 * (zi * zi).sum()

    return vmap(jacfwd(jacrev(u_one)))(z, x, w)


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def find_modes(
    decode: Decoder,
    x: torch.Tensor,
    weight: torch.Tensor,
    starts: torch.Tensor,
    *,
    adam_steps: int = 60,
    adam_lr: float = 0.1,
    lbfgs_steps: int = 60,
    newton_steps: int = 1,
    merge_tol: float = 1.0,
    hessian_batch: int = 32,
    progress_every: int = 10,
) -> Generator[tuple[str, int, int], None, tuple[list[PosteriorFit], dict]]:
    """Modes and Laplace mixtures of the posteriors of ``B`` images (module docstring).

    ``x (B, H, W)``: images; ``weight (B, H, W)``: ``M / s^2`` (0 on unobserved pixels);
    ``starts (B, S, K)``: initial latents. Yields ``(stage, step, total)`` progress tuples
    (stages ``"optimise"``, ``"hessian"``); returns ``(fits, timings)`` with one
    :class:`PosteriorFit` per image and the seconds spent per stage.
    """
    B, S, K = starts.shape
    if x.shape[0] != B or weight.shape != x.shape:
        raise ValueError(f"x {tuple(x.shape)}, weight {tuple(weight.shape)}, starts {S}")
    dtype = starts.dtype
    idx = torch.arange(B, device=x.device).repeat_interleave(S)
    xs, ws = x[idx], weight[idx]  # (B*S, H, W)
    timings = {"optimisation_s": 0.0, "hessians_s": 0.0}
    t0 = time.perf_counter()

    z = starts.reshape(B * S, K).detach().clone().requires_grad_(True)
    total = adam_steps + lbfgs_steps + newton_steps
    opt = torch.optim.Adam([z], lr=adam_lr)
    for i in range(adam_steps):
        opt.zero_grad(set_to_none=True)
        energy(decode, z, xs, ws).sum().backward()
        opt.step()
        if (i + 1) % progress_every == 0:
            yield ("optimise", i + 1, total)
    if lbfgs_steps:
        lbfgs = torch.optim.LBFGS(
            [z],
            lr=1.0,
            max_iter=progress_every,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )

        def closure():
            lbfgs.zero_grad(set_to_none=True)
            loss = energy(decode, z, xs, ws).sum()
            loss.backward()
            return loss

        done = 0
        while done < lbfgs_steps:
            lbfgs.param_groups[0]["max_iter"] = min(progress_every, lbfgs_steps - done)
            lbfgs.step(closure)
            done += progress_every
            yield ("optimise", adam_steps + min(done, lbfgs_steps), total)
            if lbfgs.state[lbfgs._params[0]].get("n_iter", 0) < done:
                break  # converged (L-BFGS stopped before its budget)
    z = z.detach()
    timings["optimisation_s"] += time.perf_counter() - t0

    def hess(zz, xx, wwt):
        t = time.perf_counter()
        out = torch.cat(
            [_hessians(decode, zz[c], xx[c], wwt[c]) for c in _chunks(zz.shape[0], hessian_batch)]
        )
        timings["hessians_s"] += time.perf_counter() - t
        return out

    H = hess(z, xs, ws)
    yield ("hessian", 1, 2)
    # Newton polish: z - H^-1 grad U, accepted per start where H is positive definite and the
    # energy does not increase
    for _ in range(newton_steps):
        t = time.perf_counter()
        zg = z.clone().requires_grad_(True)
        u0 = energy(decode, zg, xs, ws)
        (g,) = torch.autograd.grad(u0.sum(), zg)
        L, info = torch.linalg.cholesky_ex(H)
        ok = info == 0
        step = torch.zeros_like(z)
        if ok.any():
            step[ok] = torch.cholesky_solve(g[ok][..., None], L[ok])[..., 0]
        with torch.no_grad():
            z_new = z - step
            better = energy(decode, z_new, xs, ws) <= u0.detach() + 1e-9 * u0.detach().abs()
            z = torch.where((ok & better)[:, None], z_new, z)
        timings["optimisation_s"] += time.perf_counter() - t
    with torch.no_grad():
        u = energy(decode, z, xs, ws)
        r = xs - decode(z)
        chi2_num = (ws * r * r).flatten(1).sum(1)

    # distinct modes per image: merge, then exact Hessians at the survivors
    fits: list[PosteriorFit] = []
    keep_all: list[int] = []
    per_image = []
    for b in range(B):
        sl = slice(b * S, (b + 1) * S)
        zb, ub, Hb = z[sl], u[sl], H[sl]
        order = torch.argsort(ub)
        kept: list[int] = []
        n_merged = 0
        for j in order.tolist():
            dup = False
            for k in kept:
                d = zb[j] - zb[k]
                m2 = float(d @ Hb[k] @ d)
                if (math.isfinite(m2) and m2 < merge_tol**2) or float(d.norm()) < 1e-6:
                    dup = True
                    break
            if dup:
                n_merged += 1
            else:
                kept.append(j)
        per_image.append((kept, n_merged))
        keep_all += [b * S + j for j in kept]
    keep_t = torch.tensor(keep_all, device=z.device, dtype=torch.long)
    Hk = hess(z[keep_t], xs[keep_t], ws[keep_t]) if newton_steps else H[keep_t]
    yield ("hessian", 2, 2)

    n_obs = (weight > 0).flatten(1).sum(1).clamp_min(1)
    # chi^2 per observed pixel with s^2 = 1 / weight
    pos = 0
    for b in range(B):
        kept, n_merged = per_image[b]
        sel = slice(pos, pos + len(kept))
        pos += len(kept)
        Hb = Hk[sel].to(torch.float64)
        Hb = 0.5 * (Hb + Hb.transpose(-1, -2))
        Lb, info = torch.linalg.cholesky_ex(Hb)
        pd = info == 0
        gi = keep_t[sel]
        n_rej = int((~pd).sum())
        if pd.any():
            Hb, Lb, gi = Hb[pd], Lb[pd], gi[pd]
        else:
            # no positive-definite point: keep the lowest-energy one (``kept`` is sorted by
            # energy) with its Hessian shifted to be positive definite; every point counts
            # as rejected
            evals = torch.linalg.eigvalsh(Hb[:1])
            ridge = float((-evals.min()).clamp_min(0)) + 1e-3
            Hb = Hb[:1] + ridge * torch.eye(K, dtype=Hb.dtype, device=Hb.device)
            Lb, gi = torch.linalg.cholesky(Hb), gi[:1]
        logdet_h = 2.0 * torch.log(torch.diagonal(Lb, dim1=-2, dim2=-1)).sum(-1)
        ub = u[gi].to(torch.float64)
        logw = -ub - 0.5 * logdet_h
        wts = torch.softmax(logw, 0)
        order = torch.argsort(wts, descending=True)
        Hb, Lb, gi, wts, ub = Hb[order], Lb[order], gi[order], wts[order], ub[order]
        eye = torch.eye(K, dtype=Hb.dtype, device=Hb.device).expand_as(Hb)
        cov = torch.cholesky_solve(eye, Lb)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        chol = torch.linalg.cholesky(cov)
        fits.append(
            PosteriorFit(
                z=z[gi],
                cov=cov.to(dtype),
                hessian=Hb.to(dtype),
                energy=ub.to(dtype),
                weight=wts.to(dtype),
                chi2=(chi2_num[gi] / n_obs[b]).to(dtype),
                map_index=int(torch.argmin(ub)),
                n_starts=S,
                n_rejected=n_rej,
                n_merged=n_merged,
                chol=chol.to(dtype),
            )
        )
    return fits, timings


def sample_mixture(
    fit: PosteriorFit, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latents from the Laplace mixture: ``(z (n, K), component (n,))``."""
    dev = fit.z.device
    comp = torch.multinomial(fit.weight.float().cpu(), n, replacement=True, generator=generator)
    eps = torch.randn(n, fit.z.shape[1], generator=generator, dtype=fit.z.dtype)
    comp, eps = comp.to(dev), eps.to(dev)
    z = fit.z[comp] + (fit.chol[comp] @ eps[..., None])[..., 0]
    return z, comp
