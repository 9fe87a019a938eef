"""Data for flow matching: 2D/ND toy distributions, MNIST and Fashion-MNIST from IDX files."""

# MNIST / Fashion-MNIST from IDX files (fm_data.images)
from .images import (
    CLASS_NAMES,
    IMAGE_DATASETS,
    DataError,
    ImageData,
    find_dataset_dir,
    load_images,
    parse_classes,
    read_idx,
    to_model,
    to_uint8,
)

# toy distributions (fm_data.toy)
from .toy import (
    TOY_DATASETS,
    Checkerboard,
    EightGaussians,
    Moons,
    OlympicRings,
    Spirals,
    ToyDistribution,
    get_toy,
)

__version__ = "0.2.1"

__all__ = [
    # toy
    "TOY_DATASETS",
    "ToyDistribution",
    "Checkerboard",
    "OlympicRings",
    "Moons",
    "EightGaussians",
    "Spirals",
    "get_toy",
    # images
    "IMAGE_DATASETS",
    "CLASS_NAMES",
    "DataError",
    "ImageData",
    "find_dataset_dir",
    "parse_classes",
    "load_images",
    "read_idx",
    "to_model",
    "to_uint8",
]
