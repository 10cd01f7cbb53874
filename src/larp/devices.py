"""The device a stage runs on when the caller names none."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
