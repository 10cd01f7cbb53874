"""Pipeline stage entry points: paths and parameters in, files out. The CLI and the workflow only wire.

Each function is the whole of one `larp <stage>` command; the real work lives in the package modules.
"""

from __future__ import annotations

import time
from pathlib import Path

from larp.config import Params
from larp.files import atomic_write_json
from larp.provenance import provenance


def download(dataset: str, out: Path, params: Params) -> None:
    """`larp download`: UCF-101 from its official URLs (or mirror), or the embedded dataset from a seed."""
    from larp.data.index import build_index, write_index

    t0 = time.time()
    out = Path(out)
    if dataset == "ucf101":
        from larp.data.ucf101 import download_ucf101

        download_ucf101(out, source=params.ucf101.source, workers=params.data.workers)
        return
    from larp.data.embedded import generate_embedded

    generate_embedded(out, params.embedded)
    table = build_index(out)
    write_index(table, out / "index.csv")
    atomic_write_json(out / "download.json", provenance(
        params.embedded, dataset=dataset, videos=len(table), seconds=round(time.time() - t0, 2)))


def extract(dataset: str, raw: Path, out: Path, params: Params) -> None:
    """`larp extract`: every video decoded once, resized + centre-cropped, stored in shards."""
    from larp.data.extract import extract_dataset

    extract_dataset(Path(raw), Path(out), size=params.data.size, shard_videos=params.data.shard_videos,
                    workers=params.data.workers)
