"""QFA toolkit: one mixed-precision weight-sharing supernet, measured-latency search, int8 TFLite export."""
__version__ = "0.1.0"
