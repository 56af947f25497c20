"""The tasks: one folder per model family (see docs/architecture.md)."""
