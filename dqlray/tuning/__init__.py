"""Hyperparameter sweeps with Ray Tune: sweep files, the trainable adapter, the driver and result tables."""
