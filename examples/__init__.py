"""Recipes that build the artefacts the project ships (models/), run from the repository root."""
