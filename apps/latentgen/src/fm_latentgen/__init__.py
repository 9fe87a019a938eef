"""fm-latentgen: latent flow matching on MNIST and Fashion-MNIST."""
