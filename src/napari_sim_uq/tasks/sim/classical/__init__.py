"""Classical SIM: illumination-parameter estimation from raw frames and the generalised
Wiener reconstruction (no learning). Pure PyTorch/NumPy, no Qt/napari imports."""
