"""Training: the fast QAT loop, tasks, metrics, checkpoints, post-training quantization.

The names are imported on first use, so that the `hetq` command's help and argument errors
do not wait for PyTorch.
"""

from __future__ import annotations

from hetq import _lazy_names

_API = {
    "load": "hetq.train.checkpoint",
    "save": "hetq.train.checkpoint",
    "save_module": "hetq.train.checkpoint",
    "TrainResult": "hetq.train.loop",
    "evaluate": "hetq.train.loop",
    "fit": "hetq.train.loop",
    "Anomaly": "hetq.train.tasks",
    "Classify": "hetq.train.tasks",
    "get_task": "hetq.train.tasks",
}

__all__ = sorted(_API)

__getattr__, __dir__ = _lazy_names("hetq.train", globals(), _API)
