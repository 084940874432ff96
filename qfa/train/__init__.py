"""Supernet training: config, checkpoints, the QFA step and the run loop."""
