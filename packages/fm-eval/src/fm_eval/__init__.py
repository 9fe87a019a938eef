"""Metrics for flow matching: 2D distances, checkerboard and ring quality, classifier-feature FID."""
