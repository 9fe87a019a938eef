"""fm-pixel: pixel-space flow matching on MNIST and Fashion-MNIST."""
