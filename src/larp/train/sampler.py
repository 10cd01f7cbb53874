"""The old name of :mod:`larp.train.data_order` ("sample" is the sampling library and stage)."""

from larp.train.data_order import (  # noqa: F401
    ResumableBatches,
    SeededItems,
    item_seed,
    micro_batches,
    seeded_globals,
)
