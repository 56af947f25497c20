"""Dock widget "Anomaly map": per-pixel anomaly scores of a 2D image (DESIGN.md 5).

The score of pixel ``i`` is ``(x_i - mu_i)^2 / sigma_i^2`` (``x`` the input in the model's
normalised units, ``mu`` and ``sigma`` the reconstruction and its total std, MC dropout plus
the variance head); the image score is its mean, shown in the widget and stored in the
layer's ``metadata["sim_uq"]["image_score"]``. Images like the training data score about 1
for a calibrated model; anomalies stand out as bright regions. The intended model is a 2D
autoencoder trained to reconstruct normal images (Train 2D with degrade ``none``).

Same job and layer builder as :func:`napari_sim_uq.api.anomaly_map`; the widget is the
"Reconstruct 2D" widget (:class:`~napari_sim_uq._napari._reconstruct2d_widget.
Image2DJobWidget`) asking for the ``"<layer> anomaly score"`` output.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QVBoxLayout

from napari_sim_uq._napari._reconstruct2d_widget import Image2DJobWidget
from napari_sim_uq.tasks.ae2d.predict import ANOMALY_OUTPUTS

__all__ = ["AnomalyMapWidget"]

NO_SCORE = "image score: –"


class AnomalyMapWidget(Image2DJobWidget):
    """A 2D image layer -> its per-pixel anomaly-score layer and the image score."""

    outputs = ANOMALY_OUTPUTS
    scores = True
    verb = "scoring"
    what = "anomaly scoring"

    def _add_result_widgets(self, box: QVBoxLayout) -> None:
        self.score_label = QLabel(NO_SCORE)
        self.score_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.score_label.setToolTip(
            "mean over the pixels of (x - mu)^2 / sigma^2: about 1 for images like the "
            "training data (calibrated model), larger for anomalous images"
        )
        self.score_label.setStyleSheet("font-weight: bold;")
        box.addWidget(self.score_label)
        self.image_score: float | None = None

    def run(self) -> None:
        if not self.busy:
            self.image_score = None
            self.score_label.setText(NO_SCORE)
        super().run()

    def _describe(self, pred, source, layers) -> str:
        self.image_score = float(pred.meta["image_score"])
        self.score_label.setText(
            f"image score: {self.image_score:.4g}   (MSE {pred.meta['mse_score']:.3g}, "
            "normalised units)"
        )
        return f"done: '{source.name}' scored in {pred.meta['seconds']:.1f} s"
