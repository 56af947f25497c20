"""2D image reconstruction with uncertainty: MC-dropout and heteroscedastic autoencoders,
anomaly scores (one task of the framework, see docs/architecture.md)."""
