"""fm-pixel: pixel-space flow matching on MNIST and Fashion-MNIST (CLI, recipes, wiring)."""

__version__ = "0.3.0"
