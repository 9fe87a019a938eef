"""fm-toy2d: 2D flow matching and normalizing flows, with pictures and animations."""

__version__ = "0.3.0"
