"""napari front end: reader, writer, sample data and widgets (the only napari/Qt code)."""
