"""`larp train-tokenizer` (larp.train.tokenizer): learning, exact resume, prior switch, D cadence, lr quirk,
metrics log, run identity.

Everything runs on a tiny synthetic frames dataset built once per module (3 classes x (3 train + 1 test)
videos of 16-20 frames at 32x32) and a tokenizer of width 32 / depth 1 / 16 tokens / 64 codes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from micro import make_frames, micro_params

from larp.config import Params
from larp.data.clips import ClipDataset
from larp.train import Preempted, StepContext
from larp.train.tokenizer import METRICS, TokenizerTask, load_tokenizer, psnr, run_key, train_tokenizer


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokdata")
    frames = make_frames(root)
    return frames


def tiny(**overrides: dict) -> Params:
    """The tiny preset shrunk further; ``overrides`` are params groups applied on top."""
    base = {
        "loss": {"d_update_every": 3},
        "train_tokenizer": {"max_steps": 6, "global_batch": 4, "micro_batch": 2, "checkpoint_every": 100,
                            "log_every": 1, "sample_every": None},
    }
    return micro_params(base, overrides)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """(header as a dict, raw tensor bytes) of a safetensors file.

    Byte-for-byte on everything but the order of the header's JSON keys: safetensors 0.8 writes the
    ``__metadata__`` map in a random (Rust HashMap) order, so two saves of identical weights can differ there.
    """
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def ctx_for(task: TokenizerTask, step: int) -> StepContext:
    return StepContext(step=step, epoch=0, micro=0, accum=1, modules=task.modules, device=torch.device("cpu"))


# ---- learning ----


STEPS = 100


def test_tiny_tokenizer_overfits_a_fixed_batch(frames_dir: Path) -> None:
    """G loss (L1 + VQ + prior, no GAN) driven by Adam on 2 fixed clips: PSNR rises by >= 4 dB in 100 steps.

    Measured +5.9 to +6.0 dB (14.9 -> 20.9 dB) for seeds 0-3; means of the first / last 3 steps smooth the
    stochastic SVQ. (With 4 clips the gain was +3.4 to +4.6 dB, too close to a useful bound.)"""
    params = tiny(loss={"gan_weight": 0.0})
    torch.manual_seed(0)
    task = TokenizerTask(params, total_steps=STEPS, preview=None)
    assert "discriminator" not in task.modules  # gan_weight 0: no critic to train
    opt = task.configure_optimizers()["g"]
    for g in opt.param_groups:
        g["lr"] = 2e-3
    ds = ClipDataset(frames_dir, split="train", mode="eval", frames=16)
    video = torch.stack([ds[i][0] for i in range(2)])
    task.model.train()
    psnrs, l1s = [], []
    for step in range(STEPS):
        out = task.autoencoder_loss((video, torch.zeros(2)), ctx_for(task, step))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        psnrs.append(float(out.metrics["psnr"]))
        l1s.append(float(out.metrics["l1"].detach()))
    assert set(out.metrics) <= set(METRICS)
    assert {"prior", "prior_top1", "ss_ratio"} <= set(out.metrics)  # prior on (alpha > 0)
    start, end = sum(psnrs[:3]) / 3, sum(psnrs[-3:]) / 3
    assert end >= start + 4.0, f"PSNR {start:.2f} -> {end:.2f} dB"
    assert sum(l1s[-3:]) < 0.7 * sum(l1s[:3])
    # the eval-mode (argmax SVQ) reconstruction of the trained model agrees with the training metric
    task.model.eval()
    with torch.no_grad():
        recon = task.model.decode(task.model.encode(video))
    assert float(psnr(video, recon)) >= start + 3.0


# ---- the run through the shared loop ----


def test_kill_and_resume_is_bit_exact(frames_dir: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny(train_tokenizer={"checkpoint_every": 2})
    full = train_tokenizer(frames_dir, tmp_path / "a" / "tok.safetensors", params, progress=False)

    original = TokenizerTask.phases

    def preempt_at_3(self: TokenizerTask, step: int, epoch: int):
        if step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM preemption in the middle of step 3 (0-based)
        return original(self, step, epoch)

    monkeypatch.setattr(TokenizerTask, "phases", preempt_at_3)
    out_b = tmp_path / "b" / "tok.safetensors"
    with pytest.raises(Preempted) as info:
        train_tokenizer(frames_dir, out_b, params, progress=False)
    assert info.value.step == 4 and info.value.code == 75
    assert not out_b.exists()
    monkeypatch.setattr(TokenizerTask, "phases", original)
    resumed = train_tokenizer(frames_dir, out_b, params, progress=False)

    assert full.name == resumed.name  # same run key -> same run directory name
    assert safetensors_parts(tmp_path / "a" / "tok.safetensors") == safetensors_parts(out_b)
    a, b = read_metrics(full / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert [r["step"] for r in a] == [str(s) for s in range(1, 7)]
    for ra, rb in zip(a, b, strict=True):
        ra.pop("sec_per_step"), rb.pop("sec_per_step")
        assert ra == rb
    # the weights load back into a tokenizer in eval mode, built without the training-time prior whose
    # trained weights the file holds (and which load_tokenizer skips)
    tok = load_tokenizer(out_b, params)
    assert not tok.training and tok.prior is None
    assert any(k.startswith("tokenizer.prior_model.") for k in safetensors_parts(out_b)[0])


def test_discriminator_phase_only_every_d_update_every_steps(frames_dir: Path, tmp_path: Path) -> None:
    params = tiny(loss={"d_update_every": 3})
    task = TokenizerTask(params, total_steps=10, preview=None)
    plans = [[p.optimizer for p in task.phases(s, 0)] for s in range(10)]
    assert plans == [["d", "g"] if s % 3 == 0 else ["g"] for s in range(10)]
    # and in a real run: the D columns of the log are filled exactly on those steps (CSV step = 0-based + 1)
    run = train_tokenizer(frames_dir, tmp_path / "tok.safetensors", params, progress=False)
    rows = read_metrics(run / "metrics.csv")
    with_d = [int(r["step"]) for r in rows if r["loss_d"] != ""]
    assert with_d == [1, 4]
    assert all(r["d_bce"] != "" and r["d_logits_real"] != "" for r in rows if int(r["step"]) in with_d)
    assert all(r["loss_g"] != "" and r["l1"] != "" for r in rows)
    # no discriminator at all when the GAN weight is 0
    plain = TokenizerTask(tiny(loss={"gan_weight": 0.0}), total_steps=10, preview=None)
    assert [[p.optimizer for p in plain.phases(s, 0)] for s in range(4)] == [["g"]] * 4
    assert set(plain.configure_optimizers()) == {"g"}


def test_metrics_csv_has_the_documented_columns(frames_dir: Path, tmp_path: Path) -> None:
    run = train_tokenizer(frames_dir, tmp_path / "tok.safetensors", tiny(train_tokenizer={"max_steps": 2}),
                          progress=False)
    with open(run / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["step", "epoch", "lr_g", "lr_d", "loss_g", "loss_d", *METRICS, "sec_per_step"]
    assert list(METRICS) == ["l1", "perceptual", "gan", "vq", "prior", "psnr", "code_usage",
                             "code_perplexity", "prior_top1", "prior_top5", "ss_ratio", "d_bce", "d_lecam",
                             "d_logits_real", "d_logits_fake"]
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 2
    for r in rows:
        assert 0 < float(r["code_usage"]) <= 1 and float(r["code_perplexity"]) >= 1
        assert float(r["psnr"]) > 0 and float(r["sec_per_step"]) > 0
        assert float(r["prior_top1"]) <= float(r["prior_top5"]) <= 1


# ---- the prior switch and the lr_mult quirk ----


def test_disabled_prior_is_not_built_nor_optimized() -> None:
    with_prior = TokenizerTask(tiny(), total_steps=10, preview=None)
    groups = with_prior.configure_optimizers()["g"].param_groups
    prior_ids = {id(p) for p in with_prior.model.prior.parameters()}
    assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == prior_ids
    assert not prior_ids & {id(p) for p in groups[0]["params"]}

    task = TokenizerTask(tiny(prior={"enabled": False}), total_steps=10, preview=None)
    assert task.model.prior is None
    assert not [n for n, _ in task.model.named_parameters() if "prior" in n]
    groups = task.configure_optimizers()["g"].param_groups
    assert len(groups) == 1
    optimized = {id(p) for g in groups for p in g["params"]}
    assert optimized == {id(p) for p in task.model.parameters()}
    # no prior compute either: the step's metrics carry no prior accuracy
    video = torch.rand(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    task.model.train()
    out = task.autoencoder_loss((video, torch.zeros(2)), ctx_for(task, 0))
    assert "prior_top1" not in out.metrics and float(out.metrics["prior"]) == 0.0


def test_alpha_zero_runs_the_prior_but_it_adds_nothing_to_the_loss() -> None:
    """prior.alpha weights the loss and nothing else: at 0 the prior is built and runs (its metrics are
    logged), the loss is that of the same step without the prior term, and no gradient reaches the prior."""
    torch.manual_seed(0)
    task = TokenizerTask(tiny(prior={"alpha": 0.0}), total_steps=10, preview=None)
    assert task.model.prior is not None
    task.configure_optimizers()
    task.model.train()
    video = torch.rand(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    out = task.generator_loss((video, torch.zeros(2)), ctx_for(task, 0))
    m = {k: float(torch.as_tensor(v).detach()) for k, v in out.metrics.items()}
    assert {"prior_top1", "prior_top5", "ss_ratio"} <= set(m) and m["prior"] > 0
    g = task.loss.params
    without_prior = g.l1_weight * m["l1"] + g.vq_weight * m["vq"] + g.gan_weight * m["gan"]
    assert g.perceptual_weight == 0 and g.mse_weight == 0
    assert out.loss.item() == pytest.approx(without_prior, rel=1e-6)
    out.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in task.model.prior.parameters())
    assert task.model.encoder_latent_query_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("honor", [False, True])
def test_prior_lr_mult_applies_only_when_honored(frames_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, honor: bool) -> None:
    seen: list[dict[str, torch.optim.Optimizer]] = []
    original = TokenizerTask.configure_optimizers

    def record(self: TokenizerTask) -> dict[str, torch.optim.Optimizer]:
        seen.append(original(self))
        return seen[-1]

    monkeypatch.setattr(TokenizerTask, "configure_optimizers", record)
    params = tiny(train_tokenizer={"max_steps": 2}, prior={"honor_lr_mult": honor, "lr_mult": 50.0})
    train_tokenizer(frames_dir, tmp_path / "tok.safetensors", params, progress=False)
    main, prior = seen[0]["g"].param_groups
    assert main["lr"] > 0
    assert prior["lr"] / main["lr"] == pytest.approx(50.0 if honor else 1.0)


# ---- run identity ----


def test_run_key_tracks_parameters_and_data(frames_dir: Path, tmp_path: Path) -> None:
    params = tiny()
    key = run_key(params, frames_dir)
    assert key == run_key(tiny(), frames_dir)
    assert key != run_key(tiny(prior={"alpha": 0.1}), frames_dir)
    assert key != run_key(tiny(tokenizer={"svq_temperature": 0.05}), frames_dir)
    assert key != run_key(tiny(train_tokenizer={"lr": 5e-4}), frames_dir)
    assert key == run_key(tiny(fvd={"num_clips": 3}), frames_dir)  # evaluation settings are not the run's

    root = tmp_path / "runs"
    first = train_tokenizer(frames_dir, tmp_path / "a.safetensors", tiny(train_tokenizer={"max_steps": 2}),
                            run_root=root, progress=False)
    second = train_tokenizer(frames_dir, tmp_path / "b.safetensors",
                             tiny(prior={"alpha": 0.1}, train_tokenizer={"max_steps": 2}), run_root=root,
                             progress=False)
    assert first != second and first.parent == second.parent == root
    # the changed alpha trained from scratch: a fresh 2-row log, not a continuation of the first run
    assert [r["step"] for r in read_metrics(second / "metrics.csv")] == ["1", "2"]


# ---- the data mix (data.tokenizer_datasets) ----


def test_tokenizer_trains_on_the_concatenated_data_mix(frames_dir: Path, tmp_path: Path) -> None:
    import shutil

    import pandas as pd

    from larp import stages
    from larp.config import ParamsError
    from larp.data.extract import extract_dataset
    from larp.train.tokenizer import training_clips

    root = tmp_path / "frames"
    # "k600" stored as JPEG (its default), "ucf101" raw: the mix reads both formats
    extract_dataset(frames_dir.parent / "raw", root / "k600", size=32, shard_videos=4, workers=1,
                    frame_format="jpeg")
    shutil.copytree(frames_dir, root / "ucf101")
    # the k600 part loses one training video, so the two parts differ and the sum is checkable
    table = pd.read_csv(root / "k600" / "videos.csv", dtype=str, keep_default_na=False)
    table.drop(index=table.index[table["split1"] == "train"][0]).to_csv(root / "k600" / "videos.csv", index=False)
    params = tiny(data={"tokenizer_datasets": ["k600", "ucf101"]}, train_tokenizer={"max_steps": 2})

    dirs = stages.tokenizer_frames("ucf101", params, frames_root=root)
    assert dirs == [root / "k600", root / "ucf101"]
    single = len(training_clips(frames_dir, params))
    assert len(training_clips(dirs, params)) == 2 * single - 1
    assert run_key(params, dirs) != run_key(params, dirs[1])  # the data mix is part of the run's identity

    out, metrics = tmp_path / "tok.safetensors", tmp_path / "metrics.csv"
    stages.train_tokenizer("ucf101", None, out, metrics, params, frames_root=root)
    assert out.is_file() and [r["step"] for r in read_metrics(metrics)] == ["1", "2"]

    # clear errors: a wrong number of directories, a missing dataset, frames of another size
    with pytest.raises(ParamsError, match=r"trains on data.tokenizer_datasets = \['k600', 'ucf101'\]; pass one"):
        stages.tokenizer_frames("ucf101", params, frames=[root / "ucf101"])
    shutil.rmtree(root / "k600")
    with pytest.raises(FileNotFoundError, match=r"no frames of 'k600'.*larp extract --dataset k600"):
        stages.tokenizer_frames("ucf101", params, frames_root=root)
    with pytest.raises(ValueError, match=r"frames of 'ucf101' are 32x32, the tokenizer of 'ucf101' needs "
                                         r"data.size = 64"):
        stages.tokenizer_frames("ucf101", tiny(data={"tokenizer_datasets": ["ucf101"], "size": 64},
                                               tokenizer={"size": 64}, discriminator={"size": 64}),
                                frames=[root / "ucf101"])
