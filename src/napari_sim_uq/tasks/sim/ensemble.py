"""Deep ensembles of SIM models (issue 15: epistemic uncertainty off the training data).

A deep ensemble is ``M`` networks of one architecture trained on the same data from
different random initialisations and batch orders (``sim-uq train --ensemble M`` trains
them with seeds ``seed, seed + 1, ...``; ``sim-uq ensemble`` combines checkpoints trained
separately). Where the data are like the training data the members agree; where they are
not, they disagree, and their spread is the epistemic part of the uncertainty:

- predictive mean ``mu = mean_m mu_m``;
- aleatoric variance ``mean_m sigma_m^2`` (each member's own variance heads);
- epistemic variance ``mean_m (mu_m - mu)^2``.

This is exactly what :func:`~napari_sim_uq.tasks.sim.predict.predict_sim` computes from MC
dropout samples: :class:`SimUQEnsemble` returns the members' outputs as ``M`` samples per
input (``M x T`` with MC dropout on top), so tiling, the forward model, calibration and the
layers are shared with the single model.

An ensemble is stored as one ordinary SIM checkpoint: the first member's configuration,
``config["ensemble"] = {"members": M, "sources": [...]}`` and the members' weights under
``members.<m>.``. The members must share the model configuration and the data
normalisation (otherwise their outputs are not in the same units); the members' own
calibration is not carried over: run ``sim-uq calibrate`` on the ensemble.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimOutput, SimUQNet

__all__ = ["SimUQEnsemble", "combine_sim_checkpoints", "ensemble_size", "train_sim_ensemble_job"]


def ensemble_size(model: nn.Module) -> int:
    """Number of members of ``model`` (1 for a single network)."""
    return int(getattr(model, "n_members", 1))


class SimUQEnsemble(nn.Module):
    """``M`` :class:`SimUQNet` of one configuration with the single network's interface.

    ``forward(x)`` with ``x`` of batch ``B`` returns a :class:`SimOutput` of batch ``M * B``
    (member-major: member ``m``'s outputs are rows ``m*B ... m*B + B - 1``). ``pooled``, if
    given, is ``(M * B, C)`` in the same order, as :meth:`bottleneck` returns it. Other
    attributes (``cfg``, ``hr_factor``, ``receptive_radius``, ``check_input``, ...) are the
    first member's, which all members share."""

    def __init__(self, cfg: SimNetConfig, n_members: int):
        super().__init__()
        if isinstance(n_members, bool) or int(n_members) < 2:
            raise InputError(f"an ensemble needs at least 2 members, got {n_members!r}")
        self.members = nn.ModuleList(SimUQNet(cfg) for _ in range(int(n_members)))

    @property
    def n_members(self) -> int:
        return len(self.members)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            members = self._modules.get("members")
            if not members:
                raise
            return getattr(members[0], name)

    def bottleneck(self, x: torch.Tensor, *, check_input: bool = True) -> torch.Tensor:
        if check_input:
            self.members[0].check_input(x)
        return torch.cat([m.bottleneck(x, check_input=False) for m in self.members], dim=0)

    def forward(
        self, x: torch.Tensor, *, check_input: bool = True, pooled: torch.Tensor | None = None
    ) -> SimOutput:
        if check_input:
            self.members[0].check_input(x)
        b = x.shape[0]
        if pooled is not None and pooled.shape[0] != b * self.n_members:
            raise InputError(
                f"pooled must have {b * self.n_members} rows (members x batch), "
                f"got {pooled.shape[0]}"
            )
        outs = [
            m(x, check_input=False, pooled=None if pooled is None else pooled[i * b : (i + 1) * b])
            for i, m in enumerate(self.members)
        ]
        return SimOutput(
            *(
                None if parts[0] is None else torch.cat(parts, dim=0)
                for parts in zip(*outs, strict=True)
            )
        )


def _comparable(config: dict) -> dict:
    """The parts of a checkpoint's configuration that members must share."""
    return {
        "model": config.get("model"),
        "instrument": config.get("instrument"),
    }


def combine_sim_checkpoints(
    checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = True
) -> Path:
    """Write the ensemble of the SIM checkpoints ``checkpoints`` (at least 2) to ``out``.

    The members must have the same model configuration, light-pattern instrument and data
    normalisation (clear :class:`InputError` otherwise); an ensemble is not a member. The
    result is uncalibrated (sigma scale 1, no sigma map): calibrate it on held-out data."""
    from napari_sim_uq.core.io.checkpoint import save_checkpoint
    from napari_sim_uq.tasks import load_task_checkpoint

    paths = [Path(p) for p in checkpoints]
    if len(paths) < 2:
        raise InputError(f"an ensemble needs at least 2 checkpoints, got {len(paths)}")
    out = Path(out)
    if any(p.resolve() == out.resolve() for p in paths if p.exists()):
        raise InputError(f"'{out}' is one of the members: write the ensemble to another file")
    cks = [load_task_checkpoint(p, "sim", map_location="cpu") for p in paths]
    first = cks[0]
    for p, ck in zip(paths, cks, strict=True):
        if ck.config.get("ensemble"):
            raise InputError(f"'{p}' is already an ensemble; combine its members instead")
    for p, ck in zip(paths[1:], cks[1:], strict=True):
        if _comparable(ck.config) != _comparable(first.config):
            raise InputError(
                f"'{p}' has another model configuration or instrument than '{paths[0]}': "
                "ensemble members must share the architecture and optics"
            )
        if ck.normalization != first.normalization:
            raise InputError(
                f"'{p}' normalises the data differently from '{paths[0]}': ensemble members "
                "must be trained on the same data with the same normalisation"
            )
    state = {f"members.{i}.{k}": v for i, ck in enumerate(cks) for k, v in ck.model_state.items()}
    config = dict(first.config)
    config["ensemble"] = {"members": len(cks), "sources": [str(p) for p in paths]}
    # the learnt camera noise (the loss state) describes the data, not a member: the first
    # member's is kept for the raw-domain variance and self-check
    extra = {k: v for k, v in (first.extra or {}).items() if k == "loss_state"}
    return save_checkpoint(
        out,
        model_state=state,
        config=config,
        normalization=first.normalization,
        sigma_scale=None,
        extra=extra,
        overwrite=overwrite,
    )


def train_sim_ensemble_job(cfg: Any, n_members: int):
    """Job: train a deep ensemble of ``n_members`` networks with the training configuration
    ``cfg`` (:class:`~napari_sim_uq.tasks.sim.train.TrainConfig`), member ``i`` with seed
    ``cfg.seed + i`` into ``cfg.ckpt_dir/member_<i>``, one after another (progress events
    say which member), then combine their best checkpoints into ``cfg.ckpt_dir/ensemble.pt``
    (:func:`combine_sim_checkpoints`; on rank 0 only under DDP). Returns ``{"members": [the
    members' training summaries], "ensemble": path or None}``."""
    import dataclasses

    from napari_sim_uq.core.events import Event, relay
    from napari_sim_uq.tasks.sim.train import train_sim_job

    if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 2:
        raise InputError(
            f"an ensemble needs at least 2 members (ensemble=1 trains one network), got "
            f"{n_members!r}"
        )
    root = Path(cfg.ckpt_dir)
    results = []
    for i in range(n_members):
        member = dataclasses.replace(
            cfg, seed=int(cfg.seed) + i, ckpt_dir=str(root / f"member_{i}")
        )
        yield Event(
            "train",
            0,
            None,
            message=f"ensemble member {i + 1}/{n_members} (seed {member.seed}) -> "
            f"{member.ckpt_dir}",
        )
        result = yield from relay(train_sim_job(member), f"member {i + 1}/{n_members}: ")
        results.append(result)
    out = None
    if int(os.environ.get("RANK", "0")) == 0:
        best = [r["best"] or r["latest"] for r in results]
        out = combine_sim_checkpoints(best, root / "ensemble.pt")
    return {"members": results, "ensemble": None if out is None else str(out)}
