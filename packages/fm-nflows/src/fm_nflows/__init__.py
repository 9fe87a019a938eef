"""Normalizing flows from affine coupling, permutation, ActNorm and invertible linear layers."""
