"""The output of `larp tokenize` as training data: token shards on disk and the dataset over them.

``tokens_dir`` holds ``tokens-KKKKK.npy`` (uint16 (clips, num_tokens)), with frame prediction also
``cond-KKKKK.npy`` (the condition clips' tokens), and ``clips.csv`` (one row per clip: video_row, video_id,
label, start, flip, shard, offset); larp.tokenize writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch


def shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / f"tokens-{k:05d}.npy"


def cond_shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / f"cond-{k:05d}.npy"


class TokenDataset(torch.utils.data.Dataset):
    """Items ``(condition, tokens int64 (num_tokens,))`` of a tokenize output, held in memory.

    The condition is the class id (int64), or with ``frame_prediction`` the condition tokens (num_tokens,)
    int64 of the clip (``cond-KKKKK.npy``, written by a frame-prediction tokenize run).
    """

    def __init__(self, tokens_dir: str | Path, *, frame_prediction: bool = False) -> None:
        tokens_dir = Path(tokens_dir)
        table = tokens_dir / "clips.csv"
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found: run `larp tokenize` first (or let it finish)")
        self.clips = pd.read_csv(table)
        ks = sorted(self.clips["shard"].unique())
        self.tokens = torch.from_numpy(np.concatenate([np.load(shard_path(tokens_dir, k)) for k in ks])
                                       .astype(np.int64))
        self.labels = torch.from_numpy(self.clips["label"].to_numpy(np.int64).copy())
        if len(self.tokens) != len(self.clips):
            raise ValueError(f"{tokens_dir}: {len(self.tokens)} token rows for {len(self.clips)} clips")
        self.cond_tokens: torch.Tensor | None = None
        if frame_prediction:
            missing = [cond_shard_path(tokens_dir, k).name for k in ks if not cond_shard_path(tokens_dir, k).is_file()]
            if missing:
                raise FileNotFoundError(f"{tokens_dir}: no condition tokens {missing[:3]}: tokenize with "
                                        "generator.frame_prediction = true for a frame-prediction run")
            cond = np.concatenate([np.load(cond_shard_path(tokens_dir, k)) for k in ks]).astype(np.int64)
            self.cond_tokens = torch.from_numpy(cond)
            if self.cond_tokens.shape != self.tokens.shape:
                raise ValueError(f"{tokens_dir}: condition tokens {tuple(self.cond_tokens.shape)} do not match "
                                 f"the clip tokens {tuple(self.tokens.shape)}")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.labels[i] if self.cond_tokens is None else self.cond_tokens[i]
        return cond, self.tokens[i]
