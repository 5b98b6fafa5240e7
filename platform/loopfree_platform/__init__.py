"""Loopfree's platform layer: the only place that knows about Ray, DeepSpeed, MLflow and S3 (docs/architecture.md)."""
