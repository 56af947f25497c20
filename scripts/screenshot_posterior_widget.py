"""Make docs/images/posterior_widget.png: the "Posterior reconstruction" dock widget after a
run on the 2D sample with a painted missing rectangle (run under a display:
``xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_posterior_widget.py
[checkpoint.pt]``; without a checkpoint, the bundled example VAE).

The grid shows the input with the missing region (the Labels layer over the image), the
MAP and the posterior std; the posterior mean and the samples stack are in the layer list.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import napari
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import OUT, _no_qt_toast, _settle

MISSING = (slice(96, 150), slice(100, 170))  # rows, columns of the painted rectangle


def main(checkpoint: str | None = None) -> int:
    import napari_sim_uq

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"  # the run ends before the picture
    OUT.mkdir(parents=True, exist_ok=True)
    _no_qt_toast()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(napari_sim_uq.image2d_sample(), name="cells 2D", colormap="gray")
    dock = viewer.window.add_plugin_dock_widget
    _dock, widget = dock("napari-sim-uq", "Posterior reconstruction")
    labels = np.zeros((256, 256), np.uint8)
    labels[MISSING] = 1
    viewer.add_labels(labels, name="missing", opacity=0.5)  # chosen as the mask
    if checkpoint:
        widget.checkpoint_edit.setText(checkpoint)
    widget.device_combo.setCurrentText("cpu")  # the widget's defaults otherwise
    widget.run()
    if widget.last_prediction is None:
        print(f"the run failed: {widget.status.text()}", file=sys.stderr)
        return 1
    for layer in viewer.layers:
        layer.visible = not layer.name.endswith(("posterior mean", "samples", "modes"))
    # cells of two layers: image + missing region, MAP (+ hidden mean), std (+ hidden samples)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari 0.9
    grid.stride, grid.shape, grid.enabled = 2, (2, 2), True
    viewer.layers.selection.active = viewer.layers["cells 2D posterior std"]
    _settle()
    viewer.reset_view()
    _settle()
    path = OUT / "posterior_widget.png"
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
