"""`larp train-ar` (larp.train.generator) on the output of `larp tokenize`: learning, exact resume, bad input.

Once per module: synthetic frames (3 classes x (3 train + 1 test) videos, 16-20 frames, 32x32), a tiny
tokenizer trained for 3 steps, and its tokens (stride 2, both flips: 30 clips of 16 ids from 64 codes).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from micro import make_frames, micro_params

from larp.config import Params
from larp.files import sha256_file
from larp.models.generator import LARPGenerator
from larp.tokenize import TokenDataset, shard_path, tokenize_dataset
from larp.train import Preempted
from larp.train.generator import GeneratorTask, load_generator, run_key, train_generator
from larp.train.tokenizer import train_tokenizer


def tiny(**overrides: dict) -> Params:
    base = {
        "tokenize": {"clip_stride": 2, "batch_size": 8, "shard_clips": 16},
        "train_ar": {"max_steps": 8, "global_batch": 8, "micro_batch": 4, "checkpoint_every": 3,
                     "log_every": 1, "sample_every": None},
    }
    return micro_params(base, overrides)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ar")
    frames = make_frames(root)
    params = tiny()
    torch.set_num_threads(1)
    weights = root / "tok.safetensors"
    train_tokenizer(frames, weights, params, progress=False)
    tokens = root / "tokens"
    tokenize_dataset(frames, weights, tokens, params, device="cpu", progress=False)
    return {"root": root, "tokens": tokens, "tokenizer": weights, "params": params}


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """(header as a dict, raw tensor bytes): byte-exact except the header's key order, which safetensors 0.8
    writes in a random (Rust HashMap) order for ``__metadata__``."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def test_training_lowers_the_loss_and_writes_samples(setup: dict, tmp_path: Path) -> None:
    params = tiny(train_ar={"max_steps": 40, "global_batch": 8, "micro_batch": 8, "checkpoint_every": 100,
                            "sample_every": 20})
    out = tmp_path / "ar.safetensors"
    run = train_generator(setup["tokens"], out, params, tokenizer_weights=setup["tokenizer"], progress=False)
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert list(rows[0]) == ["step", "epoch", "lr_ar", "loss_ar", "top1", "top5", "sec_per_step"]
    loss = [float(r["loss_ar"]) for r in rows]
    first, last = np.mean(loss[:3]), np.mean(loss[-3:])
    # from about ln(64) = 4.16 nats (uniform over the codebook) clearly downwards on 30 memorisable clips
    assert first > 3.5 and last < first - 0.5, (first, last)
    assert float(rows[-1]["top5"]) >= float(rows[-1]["top1"])
    # periodic samples: token ids of one video per class, and their decoded grid (tokenizer given)
    ids = torch.load(run / "samples" / "tokens-0000020.pt", weights_only=True)
    assert ids.shape == (3, 16) and int(ids.max()) < 64
    assert (run / "samples" / "samples-0000040.png").is_file()
    done = json.loads((run / "done.json").read_text())
    assert done["sha256"] == sha256_file(out)
    model = load_generator(out, params)
    assert isinstance(model, LARPGenerator) and not model.training


def test_kill_and_resume_is_bit_exact(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny()  # 8 steps, 2 micro-batches per step (accumulation), checkpoints every 3
    full = train_generator(setup["tokens"], tmp_path / "a" / "ar.safetensors", params, progress=False)

    original = GeneratorTask.phases

    def preempt_at_4(self: GeneratorTask, step: int, epoch: int):
        if step == 4:
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM preemption during step 4 (0-based)
        return original(self, step, epoch)

    monkeypatch.setattr(GeneratorTask, "phases", preempt_at_4)
    out_b = tmp_path / "b" / "ar.safetensors"
    with pytest.raises(Preempted) as info:
        train_generator(setup["tokens"], out_b, params, progress=False)
    assert info.value.step == 5 and not out_b.exists()
    monkeypatch.setattr(GeneratorTask, "phases", original)
    resumed = train_generator(setup["tokens"], out_b, params, progress=False)

    assert full.name == resumed.name == f"ar-{run_key(params, setup['tokens'])}"
    assert safetensors_parts(tmp_path / "a" / "ar.safetensors") == safetensors_parts(out_b)
    a, b = read_metrics(full / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert len(a) == len(b) == 8
    for ra, rb in zip(a, b, strict=True):
        ra.pop("sec_per_step"), rb.pop("sec_per_step")
        assert ra == rb


def test_run_key_follows_generator_params_and_tokens(setup: dict) -> None:
    key = run_key(tiny(), setup["tokens"])
    assert key == run_key(tiny(), setup["tokens"])
    assert key != run_key(tiny(train_ar={"lr": 1e-3}), setup["tokens"])
    assert key != run_key(tiny(generator={"token_dropout": 0.0}), setup["tokens"])


# ---- bad input ----


def test_missing_clips_table_is_a_clear_error(setup: dict, tmp_path: Path) -> None:
    partial = tmp_path / "tokens"
    partial.mkdir()
    shutil.copy(shard_path(setup["tokens"], 0), shard_path(partial, 0))  # a tokenize run that did not finish
    with pytest.raises(FileNotFoundError, match=r"clips\.csv.*larp tokenize"):
        TokenDataset(partial)
    with pytest.raises(FileNotFoundError, match=r"clips\.csv"):
        train_generator(partial, tmp_path / "ar.safetensors", tiny(), progress=False)


def test_token_rows_must_match_the_clips_table(setup: dict, tmp_path: Path) -> None:
    bad = tmp_path / "tokens"
    shutil.copytree(setup["tokens"], bad)
    a = np.load(shard_path(bad, 0))
    np.save(shard_path(bad, 0), a[:-1])
    with pytest.raises(ValueError, match="token rows"):
        TokenDataset(bad)


def test_labels_beyond_num_classes_are_refused(setup: dict, tmp_path: Path) -> None:
    bad = tmp_path / "tokens"
    shutil.copytree(setup["tokens"], bad)
    table = pd.read_csv(bad / "clips.csv")
    table.loc[0, "label"] = 3  # the generator has classes 0..2 (+ the null class)
    table.to_csv(bad / "clips.csv", index=False)
    with pytest.raises(ValueError, match=r"labels up to 3.*num_classes is 3"):
        train_generator(bad, tmp_path / "ar.safetensors", tiny(), progress=False)


def test_token_ids_beyond_vocab_are_refused(setup: dict, tmp_path: Path) -> None:
    bad = tmp_path / "tokens"
    shutil.copytree(setup["tokens"], bad)
    a = np.load(shard_path(bad, 1))
    a[0, 0] = 64  # codebook / vocab is 64: ids 0..63
    np.save(shard_path(bad, 1), a)
    with pytest.raises(ValueError, match=r"token ids up to 64 exceed generator\.vocab_size 64"):
        train_generator(bad, tmp_path / "ar.safetensors", tiny(), progress=False)
    assert not (tmp_path / "ar.safetensors").exists()
