"""Serving a distilled TiUE model: the Ray Serve HTTP app and batch generation with Ray Data."""
