"""Learning-rate schedule: per-step cosine with a linear warm-up and a floor, and the step counts it runs over
(docs/training.md#learning-rate-schedule)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from larp.config import TrainParams


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_mult: float) -> float:
    """Factor applied to each base lr before optimizer step ``step`` (0-based: 0 steps done so far).

    With m = ``min_mult``, W = ``warmup_steps``, S = ``total_steps``:
    mult = m + (1 - m) * s / W for s <= W (linear warm-up from m to 1), else
    mult = m + (1 - m) * 0.5 * (1 + cos(pi * (s - W) / (S - W))) (cosine from 1 down to the floor m).
    Steps past S stay at m. W = 0 means no warm-up (the cosine starts at 1 on step 0).
    """
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_mult <= 1.0:
        raise ValueError(
            f"lr_multiplier: need warmup_steps >= 0, total_steps >= 1, 0 <= min_mult <= 1; got "
            f"{warmup_steps}, {total_steps}, {min_mult}"
        )
    m = min_mult
    if step <= warmup_steps and warmup_steps > 0:
        return m + (1.0 - m) * step / warmup_steps
    if step >= total_steps:
        return m
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule(NamedTuple):
    """The step counts of one training run, resolved from its epoch size."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    global_batch: int


def resolve_schedule(items_per_epoch: int, train: TrainParams) -> Schedule:
    """Steps per epoch (items // global batch: the incomplete last batch is dropped), total steps (epochs x that,
    or ``max_steps``) and warm-up steps (``warmup_epochs`` x steps per epoch, rounded) of a run whose epoch visits
    ``items_per_epoch`` items: videos for both trainers, as the official ones count an epoch."""
    steps_per_epoch = items_per_epoch // train.global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {items_per_epoch} items, fewer than train.global_batch "
                         f"({train.global_batch})")
    return Schedule(steps_per_epoch=steps_per_epoch,
                    total_steps=train.max_steps or train.epochs * steps_per_epoch,
                    warmup_steps=round(train.warmup_epochs * steps_per_epoch),
                    global_batch=train.global_batch)
