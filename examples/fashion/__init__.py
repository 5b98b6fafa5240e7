"""A small real teacher: text-conditioned latent diffusion trained on Fashion-MNIST (issue 8)."""
