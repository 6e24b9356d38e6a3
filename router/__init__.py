"""abrouter: an A/B-testing and canary router for ML model predictions."""

__version__ = "0.1.0"
