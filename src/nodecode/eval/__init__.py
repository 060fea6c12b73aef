"""Evaluation: image-quality and task metrics, and classical-codec baselines."""
