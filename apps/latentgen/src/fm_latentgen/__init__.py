"""fm-latentgen: latent flow matching on MNIST and Fashion-MNIST (VAE + DiT; CLI, recipes, wiring)."""

__version__ = "0.3.0"
