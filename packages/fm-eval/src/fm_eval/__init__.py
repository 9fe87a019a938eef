"""Metrics for flow matching: 2D distances, checkerboard and ring quality, classifier-feature FID."""

# 2D / toy metrics (fm_eval.metrics2d)
from .metrics2d import checkerboard_quality, energy_distance, nll_gap, rings_quality, wasserstein2

# image metrics: shipped classifiers, FID, label accuracy, coverage (fm_eval.classifier, fm_eval.fid)
from .classifier import CoverageResult, SmallCNN, classify, coverage, label_accuracy, load_classifier
from .fid import FeatureStats, FIDResult, feature_stats, fid, frechet_distance, image_features, reference_stats

__all__ = [
    # metrics2d
    "energy_distance",
    "wasserstein2",
    "checkerboard_quality",
    "rings_quality",
    "nll_gap",
    # image metrics
    "SmallCNN",
    "load_classifier",
    "classify",
    "label_accuracy",
    "coverage",
    "CoverageResult",
    "fid",
    "FIDResult",
    "FeatureStats",
    "feature_stats",
    "frechet_distance",
    "image_features",
    "reference_stats",
]
