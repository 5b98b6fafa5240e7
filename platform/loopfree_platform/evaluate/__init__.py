"""Evaluation: job schema, Ray Data generation and feature stages, driver, report tables."""
