"""Metrics for flow matching: 2D distances, checkerboard and ring quality, classifier-feature FID,
precision / recall / density / coverage (k-NN manifolds, images and 2D points), image and
reconstruction score reports, the straightness of a flow, and the statistics of steps-to-target studies."""

# image metrics: shipped classifiers, FID, label accuracy, coverage (fm_eval.classifier, fm_eval.fid)
from .classifier import CoverageResult, SmallCNN, classify, coverage, label_accuracy, load_classifier
from .fid import FeatureStats, FIDResult, feature_stats, fid, frechet_distance, image_features, reference_stats

# fidelity and diversity apart: improved precision / recall, density / coverage (fm_eval.manifold)
from .manifold import ManifoldResult, knn_radii, manifold_scores

# 2D / toy metrics (fm_eval.metrics2d)
from .metrics2d import checkerboard_quality, energy_distance, nll_gap, rings_quality, wasserstein2

# score reports for metrics.json: generated samples, autoencoder reconstructions (fm_eval.scores)
from .scores import image_scores, manifold_image_scores, reconstruction_scores

# statistics of steps-to-target studies: censored medians, log-log fits with intervals (fm_eval.stats)
from .stats import (
    Fit,
    Outcome,
    StepsOutcome,
    fit_power_law,
    fit_two_factors,
    format_interval,
    median_steps,
    ols,
    steps_to_target,
)

# straightness of a flow along sampled trajectories, for reflow (fm_eval.straightness)
from .straightness import Straightness, straightness

__version__ = "0.3.0"

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
    # precision / recall, density / coverage
    "ManifoldResult",
    "knn_radii",
    "manifold_scores",
    # score reports
    "image_scores",
    "manifold_image_scores",
    "reconstruction_scores",
    # straightness
    "Straightness",
    "straightness",
    # study statistics
    "steps_to_target",
    "Outcome",
    "StepsOutcome",
    "median_steps",
    "Fit",
    "ols",
    "fit_power_law",
    "fit_two_factors",
    "format_interval",
]
