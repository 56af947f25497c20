"""Make docs/images/inpaint_widget.png: the "Masked reconstruction" dock widget after a run
on the 2D sample with 75 % of the tokens hidden at random (run under a display:
``xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_inpaint_widget.py
[checkpoint.pt]``; without a checkpoint, the bundled example masked autoencoder).

The grid shows the input, the masked input (hidden tokens transparent), the inpainted image
and the MAE std; the widget's result lines give the mean std of the hidden pixels, their
PSNR next to biharmonic inpainting and the leave-out check.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import napari

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import OUT, _no_qt_toast, _settle


def main(checkpoint: str | None = None) -> int:
    import napari_sim_uq
    from napari_sim_uq._napari._inpaint_widget import RANDOM_TOKENS

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"  # the run ends before the picture
    OUT.mkdir(parents=True, exist_ok=True)
    _no_qt_toast()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(napari_sim_uq.image2d_sample(), name="cells 2D", colormap="gray")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Masked reconstruction")
    widget.mask_combo.setCurrentText(RANDOM_TOKENS)
    if checkpoint:
        widget.checkpoint_edit.setText(checkpoint)
    widget.device_combo.setCurrentText("cpu")  # the widget's defaults otherwise
    widget.run()
    if widget.last_prediction is None:
        print(f"the run failed: {widget.status.text()}", file=sys.stderr)
        return 1
    masked = viewer.layers["cells 2D masked input"]
    masked.visible = True
    for name in ("cells 2D masked input", "cells 2D inpainted"):  # the input's contrast
        viewer.layers[name].contrast_limits = viewer.layers["cells 2D"].contrast_limits
    viewer.layers.move(viewer.layers.index(masked), 1)
    # input, masked input / inpainted, std (layer-list order, row by row)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari 0.9
    grid.stride, grid.shape, grid.enabled = 1, (2, 2), True
    viewer.layers.selection.active = viewer.layers["cells 2D MAE std"]
    _settle()
    viewer.reset_view()
    _settle()
    path = OUT / "inpaint_widget.png"
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
