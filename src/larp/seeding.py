"""Per-item random streams: each item of a run draws from a seed of its own, never from a shared stream.

What an item gets then depends on (run seed, item) only, not on the batch, shard, process or DataLoader
worker it happens to be handled in, nor on a resume. Two consumers, two derivations (each is part of what
the published runs produced, so neither is changed to match the other):

- training data: :func:`item_seed` of (seed, epoch, item index), under which :func:`seeded_globals` runs
  ``__getitem__`` (random clip start, flip; larp.train.data_order);
- sampling: :func:`sample_seed` of (seed, sample index, stream name), one ``torch.Generator`` per sample
  (:func:`sample_generators`; larp.sample).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch."""
    return int(
        np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)
    )


@contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and python ``random`` to ``seed`` inside the block; restore them after."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reseed CUDA too
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def sample_seed(seed: int, index: int, stream: str = "") -> int:
    """63-bit seed of sample ``index`` in the run seeded ``seed``; hashed, so nearby seeds are unrelated.
    ``stream`` names another random stream of the same sample (e.g. its frame-prediction condition)."""
    key = f"larp-sample:{seed}:{index}" if not stream else f"larp-sample:{stream}:{seed}:{index}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_generators(seed: int, indices: Sequence[int], stream: str = "",
                      device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample index (on ``device``), seeded by :func:`sample_seed`."""
    return [torch.Generator(device).manual_seed(sample_seed(seed, int(i), stream)) for i in indices]
