"""Train/eval modes of a model's modules, set for a while and restored (PyTorch).

:func:`eval_mode` puts every module in eval mode; :func:`mc_dropout_mode` puts the dropout
modules in train mode and every other module in eval mode (MC dropout, DESIGN.md 5). Both
return a guard that restores each module's own mode (``restore()`` or ``with``).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from napari_sim_uq.core.errors import InputError

__all__ = ["ModeGuard", "count_parameters", "eval_mode", "mc_dropout_mode"]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ModeGuard:
    """Saves the train/eval mode of every module of ``model`` and sets new ones: every
    module in eval mode, except the dropout modules with ``mc_dropout`` (train mode).
    Returned by :func:`mc_dropout_mode` and :func:`eval_mode`; restores the saved modes on
    ``__exit__`` or :meth:`restore`."""

    def __init__(self, model: nn.Module, *, mc_dropout: bool):
        self.model = model
        self._saved = [(m, m.training) for m in model.modules()]
        self.n_dropout = 0  # dropout modules with p > 0 in train mode (0: MC samples identical)
        if not mc_dropout:
            model.eval()
            return
        for m in model.modules():
            is_dropout = isinstance(m, _DropoutNd)
            m.training = is_dropout
            if is_dropout and m.p > 0:
                self.n_dropout += 1

    def restore(self) -> None:
        for m, mode in self._saved:
            m.training = mode

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _check_module(model: object, caller: str) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"{caller} needs a torch.nn.Module, got {type(model).__name__}")


def mc_dropout_mode(model: nn.Module) -> ModeGuard:
    """Put every dropout module of ``model`` in train mode and every other module in eval
    mode (DESIGN.md section 5, MC dropout), at call time.

    Use as a context manager to restore the previous per-module modes on exit::

        with mc_dropout_mode(model):
            samples = [model(x) for _ in range(T)]

    or call it and later ``guard.restore()``. ``guard.n_dropout`` counts the dropout modules
    with ``p > 0`` (0 means the samples would all be identical).
    """
    _check_module(model, "mc_dropout_mode")
    return ModeGuard(model, mc_dropout=True)


def eval_mode(model: nn.Module) -> ModeGuard:
    """Put ``model`` in eval mode (``model.eval()``, dropout off) at call time; like
    :func:`mc_dropout_mode`, a context manager (or call it and later ``guard.restore()``)
    that restores the previous per-module modes. ``guard.n_dropout`` is 0.
    """
    _check_module(model, "eval_mode")
    return ModeGuard(model, mc_dropout=False)
