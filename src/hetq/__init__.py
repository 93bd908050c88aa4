"""hetq: heterogeneously quantized neural networks for ultra-low-latency inference on FPGAs."""

__version__ = "0.1.0"
