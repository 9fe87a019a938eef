"""Data for flow matching: 2D/ND toy distributions, MNIST and Fashion-MNIST from IDX files."""
