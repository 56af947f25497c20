"""Dock widget "Posterior reconstruction": the latent posterior of a trained VAE given a
corrupted 2D image (DeepUQ; ``tasks/vae2d``).

The chosen image layer's missing pixels are its NaN pixels plus, optionally, the region
painted on a Labels layer (label > 0 = missing) or drawn on a Shapes layer (inside a shape =
missing); the noise std is estimated from the image unless given. The job
(:func:`napari_sim_uq.api.posterior_2d_job`) and the layer builder
(:func:`napari_sim_uq.api.layer_data_2d` with ``POSTERIOR_OUTPUTS``) are the ones
``napari_sim_uq.posterior_2d(..., viewer=viewer)`` uses, so the widget and the console give
the same layers: ``"<layer> MAP"``, ``"<layer> posterior mean"``, ``"<layer> posterior std"``,
``"<layer> samples"`` (a stack) and, for an image that fits in one VAE patch,
``"<layer> modes"``. After a run the widget lists the posterior modes (their weights for a
single-tile image, the number per tile otherwise), the noise std used and the chi^2 per
observed pixel at the MAP (about 1 when the model and the noise level fit the data).

The missing-region choice, the checkpoint field and ``run`` are shared with the "Masked
reconstruction" widget (``_widgets.py``); running, Stop, errors and the layer adds are those
of the "Reconstruct 2D" widget
(:class:`~napari_sim_uq._napari._reconstruct2d_widget.Image2DJobWidget`), whose form this
widget replaces with the posterior's options.
"""

from __future__ import annotations

from collections import Counter

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
from napari_sim_uq.api import (
    image2d_source,
    posterior_2d,
    posterior_2d_job,
    resolve_vae_checkpoint,
)
from napari_sim_uq.core.devices import DEVICE_CHOICES
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.vae2d import reconstruct as vae_reconstruct
from napari_sim_uq.tasks.vae2d.reconstruct import POSTERIOR_OUTPUTS

__all__ = ["NO_MASK", "NO_RESULT", "PosteriorWidget"]

#: the mask combo's first entry: only the image's NaN pixels are missing
NO_MASK = "none (NaN pixels only)"
NO_RESULT = "modes: –"

#: the console function's and the posterior job's defaults are the widget's
_DEFAULTS = signature_defaults(vae_reconstruct.posterior_2d, posterior_2d)


def describe_modes(meta: dict) -> str:
    """The modes of a posterior's ``meta``: their weights (single tile), or how many
    tiles have how many modes."""
    weights = meta.get("mode_weights")
    if weights is not None:
        shown = ", ".join(f"{w:.3g}" for w in weights)
        return f"{len(weights)} posterior mode{'s' if len(weights) != 1 else ''}, weights {shown}"
    counts = Counter(int(n) for n in meta.get("modes_per_tile") or ())
    n_modes = sorted(counts)
    tiles = " / ".join(str(counts[n]) for n in n_modes)
    modes = " / ".join(str(n) for n in n_modes)
    plural = "s" if n_modes != [1] else ""
    return f"tiles with {modes} posterior mode{plural}: {tiles}"


class PosteriorWidget(PreparedJobMixin, Image2DJobWidget):
    """A 2D image layer, the missing region, the noise level and a VAE checkpoint -> MAP,
    posterior mean, posterior std, samples (and modes) layers."""

    outputs = POSTERIOR_OUTPUTS
    verb = "computing the posterior"  # on the progress bar
    what = "posterior reconstruction"

    def __init__(self, napari_viewer, parent=None):
        # the form differs from Image2DJobWidget's: only JobWidget's set-up is shared
        JobWidget.__init__(self, napari_viewer, parent, adds_layers=True)
        self.last_layers: list = []
        self.last_prediction = None
        self._source = None

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(
            "the corrupted 2D image (grey or RGB; RGB is converted to grey); its NaN pixels "
            "are missing"
        )
        self.mask_choice = MissingRegionChoice(
            self.viewer,
            (NO_MASK,),
            "the missing region: a Labels layer (painted label > 0 = missing) or a Shapes "
            "layer (inside a shape = missing), of the image's size; NaN pixels are always "
            "missing. A Labels or Shapes layer added while this shows 'none' is chosen.",
        )
        self.mask_combo = self.mask_choice.combo

        f = self.options = Fields()  # keywords of napari_sim_uq.posterior_2d
        self.noise_spin = f.add_float(
            "noise_sigma",
            0.0,
            0.0,
            1e7,
            "std of the image's noise in its own intensity units (e.g. the camera's read "
            "noise); used when 'estimate from the image' is not ticked (then it shows the "
            "estimate of the last run)",
            decimals=4,
            step=1.0,
        )
        self.noise_auto = f.add_bool(
            "estimate_noise",
            True,
            "estimate the noise std from the observed pixels (3 x 3 neighbourhoods)",
            "estimate from the image",
        )
        self.noise_spin.setPrefix("σ = ")
        self.noise_spin.setEnabled(False)
        self.noise_auto.toggled.connect(lambda on: self.noise_spin.setEnabled(not on))
        self.samples_spin = f.add_int(
            "n_samples",
            _DEFAULTS["n_samples"],
            1,
            100_000,
            "posterior samples drawn: the mean and std are computed from them, and they "
            "form the samples stack",
        )
        self.starts_spin = f.add_int(
            "n_starts",
            _DEFAULTS["n_starts"],
            1,
            1000,
            "optimisations from different latent starts (the encoder's guess and draws "
            "from the prior) per tile; more starts find more posterior modes",
        )
        self.seed_spin = f.add_int(
            "seed", _DEFAULTS["seed"], 0, 2_000_000_000, "seed of the starts and the samples"
        )
        checkpoint = checkpoint_field(
            "bundled example VAE",
            "a VAE checkpoint (.pt) from `sim-uq train-vae` / napari_sim_uq.train_vae; "
            "empty: the bundled example VAE (64 x 64 patches, trained on clean images "
            "like the 2D sample)",
            "use the bundled example VAE",
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
                0,
                1024,
                "overlap (pixels) of the VAE-patch tiles of an image larger than one patch; "
                "at most half the patch",
            ),
        )
        adv.addRow(
            "Adam steps",
            f.add_int("adam_steps", _DEFAULTS["adam_steps"], 0, 100_000, "Adam steps per start"),
        )
        adv.addRow(
            "L-BFGS steps",
            f.add_int(
                "lbfgs_steps",
                _DEFAULTS["lbfgs_steps"],
                0,
                100_000,
                "L-BFGS steps per start, after Adam (they refine each mode)",
            ),
        )
        adv.addRow(
            "",
            f.add_bool(
                "model_error",
                _DEFAULTS["model_error"],
                "add the VAE's own reconstruction error (measured on validation images) to "
                "the samples and the likelihood; off: the decoder's output alone",
                "model error",
            ),
        )

        build_job_dock(
            self,
            [
                ("image layer", self.layer_combo),
                ("missing region", self.mask_combo),
                ("noise std", self.noise_auto),
                ("", self.noise_spin),
                ("samples", self.samples_spin),
                ("starts", self.starts_spin),
                ("seed", self.seed_spin),
                ("checkpoint", checkpoint_row),
                ("device", self.device_combo),
            ],
            advanced=self.advanced,
            result_text=NO_RESULT,
            result_tip=(
                "the posterior modes found (weights: their share of the posterior mass), the "
                "noise std used, and the chi^2 per observed pixel at the MAP (about 1 when the "
                "model and the noise level fit the data; much larger: the image is unlike the "
                "training images or the noise is underestimated)"
            ),
        )

        watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layer choice

    def _refresh_layers(self, event=None) -> None:
        super()._refresh_layers(event)
        self.mask_choice.refresh(event)

    def selected_mask_layer(self):
        """The Labels / Shapes layer marking the missing region, or None."""
        return self.mask_choice.layer()

    def _browse(self) -> None:
        browse_checkpoint(self, self.checkpoint_edit, "VAE checkpoint")

    # ------------------------------------------------------------------ running

    def job_options(self) -> dict:
        """The console function's keywords for the current settings (without the mask)."""
        v = self.options.values()
        if v.pop("estimate_noise"):
            v["noise_sigma"] = None
        return v

    def observed(self, source):
        """The observed pixels (bool, 1 = observed) of ``source`` under the chosen mask
        layer, or None without one; InputError for a mask that does not fit or leaves
        nothing observed."""
        return self.mask_choice.observed(source)

    def _prepare(self):
        """The job factory for the current settings (InputError when they do not fit)."""
        image = self.selected_layer()
        if image is None:
            raise InputError(f"choose a 2D {self.layer_label} first")
        source = image2d_source(image, allow_nan=True)
        mask = self.observed(source)
        checkpoint = resolve_vae_checkpoint(self.checkpoint_edit.text().strip() or None)
        options = self.job_options()
        self._source = source
        return lambda: posterior_2d_job(source, checkpoint, mask=mask, **options)

    def _clear_result(self) -> None:
        self.result_label.setText(NO_RESULT)

    # ------------------------------------------------------------------ GUI-thread slots
    # (run: PreparedJobMixin's; stop, _on_event, _on_returned, _on_error, _on_aborted,
    # _on_finished, _fail and _set_running: Image2DJobWidget's)

    def _describe(self, pred, source, layers) -> str:
        meta = pred.meta
        how = "given"
        if meta["noise_sigma_estimated"]:
            how = "estimated from the image"
            if self.noise_auto.isChecked():  # shown, and the start value when unticked
                self.noise_spin.set_exact(float(meta["noise_sigma"]))
        self.result_label.setText(
            f"{describe_modes(meta)}\n"
            f"noise std {meta['noise_sigma']:.4g} ({how})\n"
            f"χ² per observed pixel at the MAP: {meta['chi2_per_observed_pixel_at_map']:.3g}"
        )
        for w in meta.get("warnings", []):
            show_warning(w)
            self.result_label.setText(self.result_label.text() + "\n⚠ " + w)
        seconds = meta.get("timings", {}).get("total_s", float("nan"))
        return f"done: {len(layers)} layers for '{source.name}' ({seconds:.1f} s)"
