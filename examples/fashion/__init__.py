"""A small real teacher: text-conditioned latent diffusion trained on Fashion-MNIST, with the classifier that
stands in for the CLIP score (models/fashion-teacher, models/fashion-classifier)."""
