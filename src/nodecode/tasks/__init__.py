"""Training: one engine (engine.py) and the per-task pieces (compression, classification, segmentation, joint)."""
