"""The shared training loop (tokenizer and AR generator plug in their step functions)."""

from larp.train.checkpoint import CheckpointError, UnsafeCheckpointError, load_weights, save_weights
from larp.train.loop import (
    PREEMPTED_EXIT_CODE,
    Phase,
    Preempted,
    StepContext,
    StepLoss,
    Task,
    TrainResult,
    train,
)
from larp.train.schedule import lr_multiplier

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_weights",
    "save_weights",
    "PREEMPTED_EXIT_CODE",
    "Phase",
    "Preempted",
    "StepContext",
    "StepLoss",
    "Task",
    "TrainResult",
    "train",
    "lr_multiplier",
]
