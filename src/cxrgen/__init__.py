"""cxrgen: adapt text-to-image latent diffusion models to chest X-rays, reproducibly."""

__version__ = "0.1.0"
