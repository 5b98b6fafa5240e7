"""Distillation: job schema, prompt corpus (Ray Data), worker loop (Ray Train + DeepSpeed), driver, tracking."""
