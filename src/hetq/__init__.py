"""hetq: heterogeneously quantized neural networks for ultra-low-latency inference on FPGAs."""

__version__ = "0.1.0"


def load(path):
    """Load a hetq checkpoint (see `hetq.train.checkpoint`) as a ready model in eval mode."""
    from .train.checkpoint import load as _load

    return _load(path)
