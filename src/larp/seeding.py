"""Per-item random streams: each item of a run draws from a seed of its own, never from a shared stream.

What an item gets then depends on (run seed, item) only, not on the batch, shard, process or DataLoader
worker it happens to be handled in, nor on a resume. One derivation, :func:`derive_seed` of (run seed, item
index, stream name), serves every consumer:

- training data: the epoch's order (:func:`epoch_order_seed`) and each item's seed (:func:`item_seed`), under
  which :func:`seeded_globals` runs ``__getitem__`` (random clip start, flip; larp.train.data_order);
- sampling: one ``torch.Generator`` per sample (:func:`sample_generators`; larp.sample).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(seed: int, index: int, stream: str = "") -> int:
    """63-bit seed of item ``index`` of the stream ``stream`` in the run seeded ``seed``; hashed, so nearby seeds,
    indices and streams are unrelated."""
    key = f"larp-sample:{seed}:{index}" if not stream else f"larp-sample:{stream}:{seed}:{index}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of training item ``index`` in epoch ``epoch``."""
    return derive_seed(seed, index, f"train-epoch-{epoch}")


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s item order."""
    return derive_seed(seed, epoch, "train-order")


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


sample_seed = derive_seed  # sample ``index``; ``stream`` names another stream of it (e.g. its FP condition)


def sample_generators(seed: int, indices: Sequence[int], stream: str = "",
                      device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample index (on ``device``), seeded by :func:`derive_seed`."""
    return [torch.Generator(device).manual_seed(sample_seed(seed, int(i), stream)) for i in indices]
