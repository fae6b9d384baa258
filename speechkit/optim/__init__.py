"""Optimizers and learning-rate schedulers (registered)."""
