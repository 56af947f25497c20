"""``python -m napari_sim_uq`` runs the ``sim-uq`` command line."""

from napari_sim_uq.cli import main

raise SystemExit(main())
