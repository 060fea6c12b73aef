"""Evaluation: image-quality and task metrics, rate-distortion of the codecs against the classical ones."""
