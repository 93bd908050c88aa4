"""Training: the fast QAT loop, tasks, metrics, checkpoints, post-training quantization."""

from .checkpoint import load, save
from .loop import TrainResult, evaluate, fit
from .tasks import Anomaly, Classify, get_task

__all__ = ["Anomaly", "Classify", "TrainResult", "evaluate", "fit", "get_task", "load", "save"]
