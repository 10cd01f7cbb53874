"""Learning-rate schedule: per-step cosine with a linear warm-up and a floor (LARP_SPEC 3.3, 4.2)."""

from __future__ import annotations

import math


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
