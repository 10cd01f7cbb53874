"""Data order as a pure function of (seed, epoch), resumable at any optimizer step.

Epoch e shuffles the dataset with ``torch.randperm`` seeded by (seed, e) and cuts it into global batches of
``global_batch`` items (an incomplete last batch is dropped). Global batch b is split evenly over the ranks,
and each rank's share into micro-batches. Which items form a global batch therefore does not depend on the
number of processes, which is what makes 2 processes equal 1 with the same global batch. Resuming at step s
starts at global batch s mod steps_per_epoch of epoch s // steps_per_epoch: nothing but the step is needed.

Per-item randomness (random clip start, flip, ...) must survive a resume and must not depend on which
DataLoader worker loads the item. So every item is loaded under its own seed, derived from
(seed, epoch, index), with the process-global torch / numpy / random generators seeded to it and restored
afterwards (:mod:`larp.seeding`): a dataset may simply call ``torch.rand`` or ``random.random`` in
``__getitem__``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from larp.seeding import epoch_order_seed, item_seed, seeded_globals


class SeededItems(Dataset):
    """Dataset wrapper: ``self[(index, seed)]`` is ``dataset[index]`` under ``seeded_globals(seed)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded_globals(seed):
            return self.dataset[index]


class ResumableBatches:
    """Batch sampler over ``SeededItems``: this rank's micro-batches of (index, seed) pairs for one epoch.

    For each remaining global batch of the epoch (from ``start_step`` on) it yields this rank's
    ``global_batch / (world_size x micro_batch)`` micro-batches of ``micro_batch`` keys.
    """

    def __init__(
        self,
        num_items: int,
        *,
        seed: int,
        epoch: int,
        start_step: int,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world_size: int,
    ) -> None:
        per_rank, rest = divmod(global_batch, world_size)
        if rest or per_rank % micro_batch:
            raise ValueError(
                f"global_batch {global_batch} must be a multiple of micro_batch {micro_batch} x "
                f"world size {world_size}"
            )
        self.num_items, self.seed, self.epoch, self.start_step = num_items, seed, epoch, start_step
        self.global_batch, self.micro_batch, self.rank = global_batch, micro_batch, rank
        self.per_rank = per_rank  # items of each global batch that this rank loads
        self.steps_per_epoch = num_items // global_batch

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * (self.per_rank // self.micro_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(epoch_order_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=g).tolist()
        for b in range(self.start_step, self.steps_per_epoch):
            first = b * self.global_batch + self.rank * self.per_rank
            mine = order[first : first + self.per_rank]
            for i in range(0, self.per_rank, self.micro_batch):
                yield [(idx, item_seed(self.seed, self.epoch, idx)) for idx in mine[i : i + self.micro_batch]]


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the main process (SLURM signals the whole job step);
    a worker killed by them would crash the run before it can checkpoint."""
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def micro_batches(
    dataset: Dataset,
    *,
    seed: int,
    global_batch: int,
    micro_batch: int,
    num_workers: int,
    rank: int,
    world_size: int,
    start_step: int,
    pin_memory: bool = False,
) -> Iterator[Any]:
    """This rank's collated micro-batches from optimizer step ``start_step`` on, epoch after epoch."""
    items = SeededItems(dataset)
    steps_per_epoch = len(items) // global_batch
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        sampler = ResumableBatches(
            len(items),
            seed=seed,
            epoch=epoch,
            start_step=offset,
            global_batch=global_batch,
            micro_batch=micro_batch,
            rank=rank,
            world_size=world_size,
        )
        # An explicit generator keeps DataLoader from drawing its worker base seed from the global RNG.
        loader = DataLoader(
            items,
            batch_sampler=sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            worker_init_fn=_ignore_stop_signals,
            generator=torch.Generator().manual_seed(seed + epoch),
        )
        yield from loader
        epoch, offset = epoch + 1, 0
