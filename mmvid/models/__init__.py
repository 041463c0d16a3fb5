"""Encoders, fusions (+ pre-fusion calibration) and the classifier returning a ModelOutput."""
