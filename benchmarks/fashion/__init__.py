"""Measured comparisons on the Fashion-MNIST teacher (examples/fashion trains it): students, FID, alignment."""
