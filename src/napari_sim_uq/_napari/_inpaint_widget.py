"""Dock widget "Masked reconstruction": inpainting of a 2D image with a trained masked
autoencoder, with a per-pixel std (``tasks/mae2d``).

The missing pixels of the chosen image layer are its NaN pixels plus the region painted on a
Labels layer (label > 0 = missing) or drawn on a Shapes layer (inside a shape = missing), or,
with "random tokens", a random share of the model's tokens (a test on a complete image: it
is its own truth, so the hidden pixels' PSNR, against biharmonic inpainting, and the
calibration of their std go to the layer metadata). The job
(:func:`napari_sim_uq.api.inpaint_2d_job`) and the layer builder
(:func:`napari_sim_uq.api.layer_data_2d` with ``INPAINT_OUTPUTS``) are the ones
``napari_sim_uq.inpaint_2d(..., viewer=viewer)`` uses, so the widget and the console give
the same layers: ``"<layer> inpainted"``, ``"<layer> MAE std"`` and ``"<layer> masked
input"``. After a run the widget shows the mean std of the missing pixels, the hidden
pixels' PSNR (random tokens) and the leave-out check (observed pixels that some passes hid,
predicted against their known values).

The missing-region choice, the checkpoint field and ``run`` are shared with the "Posterior
reconstruction" widget (``_widgets.py``); running, Stop, errors and the layer adds are those
of the "Reconstruct 2D" widget
(:class:`~napari_sim_uq._napari._reconstruct2d_widget.Image2DJobWidget`).
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QComboBox

from napari_sim_uq._napari._reconstruct2d_widget import Image2DJobWidget
from napari_sim_uq._napari._widgets import (
    Collapsible,
    Fields,
    JobWidget,
    MissingRegionChoice,
    PreparedJobMixin,
    browse_checkpoint,
    build_job_dock,
    checkpoint_field,
    signature_defaults,
    watch_layers,
)
from napari_sim_uq.api import image2d_source, inpaint_2d, inpaint_2d_job, resolve_mae_checkpoint
from napari_sim_uq.core.devices import DEVICE_CHOICES
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.mae2d import inpaint as mae_inpaint
from napari_sim_uq.tasks.mae2d.inpaint import INPAINT_OUTPUTS
from napari_sim_uq.tasks.mae2d.train import TrainMAEConfig

__all__ = ["NAN_PIXELS", "NO_RESULT", "RANDOM_TOKENS", "InpaintWidget", "describe_inpaint"]

#: the missing-region combo's fixed entries: only the image's NaN pixels are missing / a
#: random share of the tokens is hidden (the image is its own truth)
NAN_PIXELS = "NaN pixels"
RANDOM_TOKENS = "random tokens"
NO_RESULT = "mean std of the missing pixels: –"

#: the console function's and the task's defaults are the widget's
_DEFAULTS = signature_defaults(mae_inpaint.inpaint_2d, inpaint_2d)


def describe_inpaint(meta: dict) -> str:
    """The numbers of a masked reconstruction's ``meta``, one per line: the mean std of
    the missing pixels, the hidden pixels' PSNR (and the biharmonic baseline's) when the
    truth is known, and the leave-out check."""
    n = int(meta["n_missing"])
    where = f"the {n} missing pixel{'s' if n != 1 else ''}"
    if n == 0:
        lines = ["no pixel was hidden: raise the token ratio"]
    elif "std_mean_missing" in meta:
        lines = [f"mean std of {where}: {meta['std_mean_missing']:.4g}"]
    else:
        lines = [f"{where} inpainted; one pass gives no std (use 2 or more passes)"]
    metrics = meta.get("metrics") or {}
    if "psnr_missing" in metrics:
        line = f"hidden pixels: PSNR {metrics['psnr_missing']:.3g} dB"
        if "psnr_missing_biharmonic" in metrics:
            line += f" (biharmonic {metrics['psnr_missing_biharmonic']:.3g} dB)"
        lines.append(line)
    check = meta.get("leave_out_check")
    if check:
        lines.append(
            f"leave-out check on {check['n_pixels']} observed pixels: RMSE "
            f"{check['rmse']:.4g}, RMS spread {check['rms_std']:.4g} (std x{check['ratio']:.2f})"
        )
    return "\n".join(lines)


class InpaintWidget(PreparedJobMixin, Image2DJobWidget):
    """A 2D image layer, the missing region and a masked-autoencoder checkpoint ->
    inpainted, MAE std and masked input layers."""

    outputs = INPAINT_OUTPUTS
    verb = "masked reconstruction"  # on the progress bar and the status line
    what = "masked reconstruction"

    def __init__(self, napari_viewer, parent=None):
        # the form differs from Image2DJobWidget's: only JobWidget's set-up is shared
        JobWidget.__init__(self, napari_viewer, parent, adds_layers=True)
        self.last_layers: list = []
        self.last_prediction = None
        self._source = None

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(
            "the 2D image (grey or RGB; RGB is converted to grey); its NaN pixels are missing"
        )
        self.mask_choice = MissingRegionChoice(
            self.viewer,
            (NAN_PIXELS, RANDOM_TOKENS),
            "the missing region: the image's NaN pixels alone; 'random tokens' (hide a "
            "random share of the model's tokens of a complete image, which is then its own "
            "truth: the hidden pixels are scored); or a Labels layer (painted label > 0 = "
            "missing) or a Shapes layer (inside a shape = missing) of the image's size, "
            "with the NaN pixels. A Labels or Shapes layer added while this shows "
            f"'{NAN_PIXELS}' is chosen.",
        )
        self.mask_combo = self.mask_choice.combo

        f = self.options = Fields()  # keywords of napari_sim_uq.inpaint_2d
        self.ratio_spin = f.add_config_field(
            TrainMAEConfig,
            "mask_ratio",
            lo=0.05,
            tip="with 'random tokens': the fraction of the image's tokens hidden at random "
            "(the default is the training default)",
            decimals=2,
            step=0.05,
        )
        self.samples_spin = f.add_int(
            "num_samples",
            _DEFAULTS["num_samples"],
            1,
            100_000,
            "stochastic passes: each hides, besides the missing tokens, a random share "
            "(drop visible) of the visible ones and runs the decoder with dropout; a missing "
            "pixel's std is over the passes. 1: one deterministic pass, no std",
        )
        self.drop_spin = f.add_float(
            "drop_visible",
            _DEFAULTS["drop_visible"],
            0.0,
            0.95,
            "the chance that a pass also hides a visible token (observed pixels hidden so "
            "give the leave-out check)",
            decimals=2,
            step=0.05,
        )
        self.seed_spin = f.add_int(
            "seed",
            _DEFAULTS["seed"],
            0,
            2_000_000_000,
            "seed of the random tokens, the passes' hidden tokens and dropout",
        )
        checkpoint = checkpoint_field(
            "bundled example model",
            "a masked-autoencoder checkpoint (.pt) from `sim-uq train-mae` / "
            "napari_sim_uq.train_mae; empty: the bundled example model (trained on "
            "clean images like the 2D sample)",
            "use the bundled example masked autoencoder",
            self._browse,
        )
        self.checkpoint_edit, self.browse_btn, self.example_btn, checkpoint_row = checkpoint
        self.device_combo = f.add_choice(
            "device", DEVICE_CHOICES[0], DEVICE_CHOICES, "auto: a GPU if there is one, else CPU"
        )

        self.advanced = Collapsible("Advanced")
        adv = self.advanced.form
        adv.addRow(
            "tile overlap",
            f.add_int(
                "overlap",
                _DEFAULTS["overlap"],
                -1,
                1024,
                "overlap (pixels) of the model-image tiles of a larger image: a multiple of "
                "the token size below half the model's image size; auto: the largest",
                none_label="auto",
            ),
        )
        adv.addRow(
            "",
            f.add_bool(
                "augment",
                _DEFAULTS["augment"],
                "average the reconstruction over the 8 rotations / reflections of every tile "
                "(8 passes instead of 1 for the mean; +0.2 to +0.35 dB on held-out images)",
                "average over rotations / reflections",
            ),
        )
        adv.addRow(
            "",
            f.add_bool(
                "calibrated",
                _DEFAULTS["calibrated"],
                "apply the checkpoint's std calibration (`sim-uq calibrate-mae`: a factor "
                "and a map per predicted-intensity class; none if never calibrated)",
                "calibrated std",
            ),
        )

        build_job_dock(
            self,
            [
                ("image layer", self.layer_combo),
                ("missing region", self.mask_combo),
                ("token ratio", self.ratio_spin),
                ("passes", self.samples_spin),
                ("drop visible", self.drop_spin),
                ("seed", self.seed_spin),
                ("checkpoint", checkpoint_row),
                ("device", self.device_combo),
            ],
            advanced=self.advanced,
            result_text=NO_RESULT,
            result_tip=(
                "the mean std of the missing pixels (image units); with 'random tokens' the "
                "PSNR of the hidden pixels (normalised units) next to biharmonic inpainting of "
                "the same pixels; the leave-out check: observed pixels that some passes hid, "
                "predicted against their known values: their RMS error over the passes' RMS "
                "spread is this image's error ratio, which multiplies its std"
            ),
        )

        self.mask_combo.currentTextChanged.connect(self._update_ratio)
        watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layer choice

    def _refresh_layers(self, event=None) -> None:
        super()._refresh_layers(event)
        self.mask_choice.refresh(event)
        self._update_ratio()

    def _update_ratio(self, _text=None) -> None:
        self.ratio_spin.setEnabled(self.random_tokens)

    @property
    def random_tokens(self) -> bool:
        """True when a random share of the tokens is hidden (the image is its own truth)."""
        return self.mask_choice.text == RANDOM_TOKENS

    def selected_mask_layer(self):
        """The Labels / Shapes layer marking the missing region, or None."""
        return self.mask_choice.layer()

    def _browse(self) -> None:
        browse_checkpoint(self, self.checkpoint_edit, "masked-autoencoder checkpoint")

    # ------------------------------------------------------------------ running

    def job_options(self) -> dict:
        """The console function's keywords for the current settings (without the mask);
        the biharmonic baseline is computed when the truth is known (random tokens)."""
        v = self.options.values()
        ratio = v.pop("mask_ratio")
        random = self.random_tokens
        return {**v, "mask_ratio": ratio if random else None, "baseline": random}

    def observed(self, source):
        """The observed pixels (bool, 1 = observed) of ``source`` under the chosen mask
        layer, or None without one; InputError for a mask that does not fit, leaves nothing
        observed or (without random tokens) nothing missing."""
        mask = self.mask_choice.observed(source)
        if self.random_tokens:
            return mask
        finite = np.isfinite(source.data)
        if finite.all() and (mask is None or mask.all()):
            if mask is None:
                raise InputError(
                    f"'{source.name}' has no NaN pixels, so nothing is missing: choose a "
                    f"Labels or Shapes layer marking the missing region, or '{RANDOM_TOKENS}'"
                )
            raise InputError(
                f"nothing is missing: '{self.mask_choice.text}' marks no pixel of "
                f"'{source.name}'; paint (label > 0) or draw the missing region on it"
            )
        return mask

    def _prepare(self):
        """The job factory for the current settings (InputError when they do not fit)."""
        image = self.selected_layer()
        if image is None:
            raise InputError(f"choose a 2D {self.layer_label} first")
        source = image2d_source(image, allow_nan=True)
        mask = self.observed(source)
        checkpoint = resolve_mae_checkpoint(self.checkpoint_edit.text().strip() or None)
        options = self.job_options()
        self._source = source
        return lambda: inpaint_2d_job(source, checkpoint, mask=mask, **options)

    def _clear_result(self) -> None:
        self.result_label.setText(NO_RESULT)

    # ------------------------------------------------------------------ GUI-thread slots
    # (run: PreparedJobMixin's; stop, _on_event, _on_returned, _on_error, _on_aborted,
    # _on_finished, _fail and _set_running: Image2DJobWidget's)

    def _describe(self, pred, source, layers) -> str:
        meta = pred.meta
        self.result_label.setText(describe_inpaint(meta))
        for w in meta.get("warnings", []):
            show_warning(w)
            self.result_label.setText(self.result_label.text() + "\n⚠ " + w)
        return f"done: {len(layers)} layers for '{source.name}' ({meta['seconds']:.1f} s)"
