"""The shared training loop: exact resume, DDP equivalence, checkpoint safety, schedule."""

from __future__ import annotations

import csv
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from larp.config import TrainParams, preset
from larp.files import atomic_write_text, sha256_file
from larp.train import (
    PREEMPTED_EXIT_CODE,
    Phase,
    Preempted,
    StepContext,
    StepLoss,
    UnsafeCheckpointError,
    lr_multiplier,
    train,
)
from larp.train.checkpoint import (
    CheckpointError,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint_file,
    load_latest_checkpoint,
)
from larp.train.data_order import ResumableBatches

TESTS = Path(__file__).parent


# ---- a tiny GAN-like task: two optimizers, dropout, random data augmentation, random D labels ----


class NoisyVectors(torch.utils.data.Dataset):
    """48 fixed vectors; each item adds fresh noise from the global torch RNG (a random augmentation)."""

    def __init__(self, n: int = 48, dim: int = 8) -> None:
        self.base = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.base[i] + 0.1 * torch.randn(self.base.shape[1])


class SimulatedCrash(Exception):
    """A process dying mid-run (no signal, no final checkpoint)."""


class ToyGAN:
    metric_names = ("l1", "psnr", "d_real")

    def __init__(
        self,
        device: torch.device,
        dropout: float = 0.2,
        label_noise: bool = True,
        stop_at: int | None = None,
        crash_at: int | None = None,
        sleep: float = 0.0,
        bypass_ddp: bool = False,
    ) -> None:
        self.modules = {
            "g": nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 8)),
            "d": nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1)),
        }
        self.label_noise, self.stop_at, self.crash_at, self.sleep = label_noise, stop_at, crash_at, sleep
        self.bypass_ddp = bypass_ddp  # a buggy task that calls its own module instead of ctx.modules

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        g, d = self.modules["g"], self.modules["d"]
        return {
            "g": torch.optim.Adam(
                [
                    {"params": g[0].parameters(), "lr": 1e-2},
                    {"params": g[3].parameters(), "lr": 1e-2, "lr_mult": 50.0},
                ],
                betas=(0.5, 0.9),
            ),
            "d": torch.optim.Adam(d.parameters(), lr=3e-3, betas=(0.5, 0.9)),
        }

    def phases(self, step: int, epoch: int) -> list[Phase]:
        if step == self.stop_at:
            os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM would, in the middle of a step
        if step == self.crash_at:
            raise SimulatedCrash(f"crash before step {step}")
        if self.sleep:
            time.sleep(self.sleep)
        return (
            [Phase("d", self.d_loss), Phase("g", self.g_loss)] if step % 2 == 0 else [Phase("g", self.g_loss)]
        )

    def d_loss(self, x: torch.Tensor, ctx: StepContext) -> StepLoss:
        g, d = ctx.modules["g"], ctx.modules["d"]
        with torch.no_grad():
            fake = g(x)
        logits = d(torch.cat([x, fake])).squeeze(1)
        target = torch.cat([torch.ones(len(x)), torch.zeros(len(x))])
        if self.label_noise:
            target = target - 0.1 * torch.rand(len(target)) * (2 * target - 1)
        return StepLoss(
            F.binary_cross_entropy_with_logits(logits, target), {"d_real": logits[: len(x)].mean()}
        )

    def g_loss(self, x: torch.Tensor, ctx: StepContext) -> StepLoss:
        recon = (self.modules if self.bypass_ddp else ctx.modules)["g"](x)
        l1 = (recon - x).abs().mean()
        adv = -F.logsigmoid(ctx.modules["d"](recon)).mean()
        psnr = -10 * torch.log10(((recon - x) ** 2).mean().detach())
        return StepLoss(l1 + 0.1 * adv, {"l1": l1, "psnr": psnr})

    def sample(self, step: int, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        noise = torch.randn(2, 8)  # consumes RNG; the loop must hide this from training
        torch.save(self.modules["g"](noise), directory / f"step-{step}.pt")


PARAMS = replace(
    preset("tiny").train_tokenizer,
    epochs=2,
    max_steps=None,
    warmup_epochs=1.0,
    lr=1e-2,
    d_lr=3e-3,
    global_batch=8,
    micro_batch=4,
    amp="fp16",
    compile=False,
    seed=123,
    num_workers=0,
    checkpoint_every=3,
    log_every=1,
    sample_every=4,
)  # 48 items / 8 = 6 steps per epoch -> 12 steps


def run(tmp: Path, params: TrainParams = PARAMS, **task_kw):
    return train(
        lambda device: ToyGAN(device, **task_kw),
        NoisyVectors(),
        params,
        tmp / "run",
        tmp / "w.safetensors",
        device="cpu",
        progress=False,
    )


def read_csv(path: Path, drop: str = "sec_per_step") -> list[dict[str, str]]:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    for r in rows:
        r.pop(drop)
    return rows


def assert_same_state(a: dict, b: dict, exact: bool = True) -> None:
    """Recursive equality of checkpoint dicts (tensors bitwise when ``exact``)."""
    assert type(a) is type(b) or isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y, exact)
    else:
        assert a == b


def final_state(tmp: Path) -> dict:
    """The last checkpoint without its copy of the params (legs of a run may differ in e.g. num_workers)."""
    _, path = list_checkpoints(tmp / "run" / "checkpoints")[0]
    state = load_checkpoint_file(path)
    del state["params"]
    return state


# ---- (5) schedule ----


def test_lr_multiplier_key_points():
    m, W, S = 0.01, 100, 1100
    assert lr_multiplier(0, W, S, m) == pytest.approx(m)
    assert lr_multiplier(50, W, S, m) == pytest.approx(m + (1 - m) * 0.5)
    assert lr_multiplier(W, W, S, m) == pytest.approx(1.0)
    assert lr_multiplier(W + 1, W, S, m) < 1.0
    assert lr_multiplier(600, W, S, m) == pytest.approx(m + (1 - m) * 0.5)  # half-way through the cosine
    assert lr_multiplier(W + 250, W, S, m) == pytest.approx(m + (1 - m) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(S, W, S, m) == pytest.approx(m)
    assert lr_multiplier(S + 10, W, S, m) == pytest.approx(m)
    assert lr_multiplier(0, 0, S, m) == pytest.approx(1.0)  # no warm-up
    values = [lr_multiplier(s, W, S, m) for s in range(S + 1)]
    assert all(a <= b for a, b in zip(values[:W], values[1 : W + 1]))
    assert all(a >= b for a, b in zip(values[W:], values[W + 1 :]))
    with pytest.raises(ValueError):
        lr_multiplier(0, 10, 100, 1.5)


def test_data_order_is_independent_of_world_size_and_resumable():
    def keys(world: int, rank: int, start: int, micro: int = 2) -> list[list[tuple[int, int]]]:
        return list(
            ResumableBatches(
                50,
                seed=7,
                epoch=3,
                start_step=start,
                global_batch=8,
                micro_batch=micro,
                rank=rank,
                world_size=world,
            )
        )

    one = keys(1, 0, 0)
    assert len(one) == 6 * 4 and all(len(b) == 2 for b in one)  # 50 // 8 = 6 steps, 4 micro-batches each
    two = [keys(2, 0, 0), keys(2, 1, 0)]
    for step in range(6):  # global batch = rank 0's two micro-batches, then rank 1's
        assert (
            one[4 * step : 4 * step + 4] == two[0][2 * step : 2 * step + 2] + two[1][2 * step : 2 * step + 2]
        )
    assert keys(1, 0, 4) == one[16:]  # resuming at step 4 skips exactly the consumed batches
    flat = [i for b in one for i, _ in b]
    assert len(set(flat)) == 48 and keys(1, 0, 0, micro=8) != list(
        ResumableBatches(
            50, seed=7, epoch=4, start_step=0, global_batch=8, micro_batch=8, rank=0, world_size=1
        )
    )
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        keys(3, 0, 0)


# ---- (1) kill and resume: bit-exact ----


def test_signal_is_caught_even_when_the_parent_blocked_it(tmp_path):
    # a launcher may start us with SIGUSR1 blocked; the mask is inherited by the process and all its threads
    child = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from test_train_loop import run\n"
        "from larp.train.loop import Preempted\n"
        "try:\n    run(Path(sys.argv[2]), stop_at=2)\n"
        "except Preempted as e:\n    print('preempted at', e.step); sys.exit(e.code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", child, str(Path(__file__).parent), str(tmp_path / "cut")],
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1]),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stdout + proc.stderr
    assert "preempted at 3" in proc.stdout


def test_signal_checkpoints_and_resume_is_bit_exact(tmp_path):
    full = run(tmp_path / "full")
    assert full.steps == 12 and full.resumed_from is None
    with pytest.raises(Preempted) as stop:
        # the signal arrives during step index 4; the loop finishes that step, checkpoints step 5, exits 75
        run(tmp_path / "cut", params=replace(PARAMS, log_every=2), stop_at=4)
    assert stop.value.code == PREEMPTED_EXIT_CODE and stop.value.step == 5
    assert [s for s, _ in list_checkpoints(tmp_path / "cut/run/checkpoints")] == [5, 3]
    with pytest.warns(RuntimeWarning, match=r"changed train params \['log_every'\]"):
        resumed = run(tmp_path / "cut")
    assert resumed.resumed_from == 5 and resumed.steps == 12
    assert_same_state(final_state(tmp_path / "full"), final_state(tmp_path / "cut"))
    a, b = load_file(tmp_path / "full/w.safetensors"), load_file(tmp_path / "cut/w.safetensors")
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"g", "d"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_csv(tmp_path / "full/run/metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert rows[0]["loss_d"] != "" and rows[1]["loss_d"] == ""  # D runs on even step indices only
    cut_rows = read_csv(tmp_path / "cut/run/metrics.csv")
    # the first leg logged every 2 steps (a changed param, warned about); rows after step 5: the resume
    assert cut_rows[2:] == rows[5:] and [r["step"] for r in cut_rows[:2]] == ["2", "4"]
    samples = sorted(p.name for p in (tmp_path / "cut/run/samples").iterdir())
    assert samples == ["step-12.pt", "step-4.pt", "step-8.pt"]
    (tmp_path / "cut/w.safetensors").unlink()  # a rerun of a finished run only rewrites the weights
    assert run(tmp_path / "cut").resumed_from == 12
    assert load_file(tmp_path / "cut/w.safetensors").keys() == a.keys()


def test_crash_resume_truncates_metrics_and_is_bit_exact(tmp_path):
    params = replace(PARAMS, num_workers=2)  # per-item seeds: the worker that loads an item does not matter
    # sampling at other steps must not change training either (the loop hides the RNG draws of sampling)
    run(tmp_path / "full", params=replace(PARAMS, num_workers=0, sample_every=5))
    with pytest.raises(SimulatedCrash):
        run(tmp_path / "cut", params=params, crash_at=8)  # last checkpoint: step 6; rows 7, 8 get dropped
    assert [int(r["step"]) for r in read_csv(tmp_path / "cut/run/metrics.csv")] == list(range(1, 9))
    assert run(tmp_path / "cut", params=params).resumed_from == 6
    assert_same_state(final_state(tmp_path / "full"), final_state(tmp_path / "cut"))
    assert read_csv(tmp_path / "full/run/metrics.csv") == read_csv(tmp_path / "cut/run/metrics.csv")


CHILD = """
import sys; sys.path.insert(0, {tests!r})
from pathlib import Path
import torch; torch.set_num_threads(1)
import test_train_loop as t
from dataclasses import replace
t.run(Path({tmp!r}), params=replace(t.PARAMS, num_workers=2), sleep=0.1)
"""


def test_sigterm_from_outside_exits_75_then_resumes_exactly(tmp_path):
    # A new session, signalled as a whole like SLURM signals a job step: DataLoader workers get SIGTERM too.
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS), tmp=str(tmp_path / "cut"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ckpt = tmp_path / "cut/run/checkpoints" / checkpoint_name(3)
    deadline = time.monotonic() + 40
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=40)
    assert proc.returncode == PREEMPTED_EXIT_CODE, out
    stopped = max(s for s, _ in list_checkpoints(tmp_path / "cut/run/checkpoints"))
    assert 3 <= stopped < 12
    run(tmp_path / "full")
    assert run(tmp_path / "cut", params=replace(PARAMS, num_workers=2)).resumed_from == stopped
    assert_same_state(final_state(tmp_path / "full"), final_state(tmp_path / "cut"))
    assert read_csv(tmp_path / "full/run/metrics.csv") == read_csv(tmp_path / "cut/run/metrics.csv")


# ---- (2) two gloo processes equal one process with the same global batch ----


def _ddp_worker(rank: int, tmp: str, port: int, bypass_ddp: bool) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    params = replace(PARAMS, micro_batch=2, amp="none")
    run(Path(tmp), params=params, dropout=0.0, label_noise=False, bypass_ddp=bypass_ddp)


def run_two_processes(tmp: Path, bypass_ddp: bool = False) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported torch instead of importing it again (seconds on a busy CPU)
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(str(tmp), port, bypass_ddp), nprocs=2, join=True, start_method="fork"
    )


def test_two_process_ddp_equals_one_process(tmp_path):
    run_two_processes(tmp_path / "ddp")
    run(tmp_path / "one", params=replace(PARAMS, micro_batch=2, amp="none"), dropout=0.0, label_noise=False)
    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "ddp")
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for key in ("modules", "optimizers"):
        assert_same_state(one[key], two[key], exact=False)
    torch.manual_seed(PARAMS.seed)  # training moved the parameters, so the comparison is not vacuous
    initial = ToyGAN(torch.device("cpu")).modules["g"].state_dict()
    assert not torch.allclose(initial["0.weight"], one["modules"]["g"]["0.weight"], atol=1e-3)
    rows_one, rows_two = (
        read_csv(tmp_path / "one/run/metrics.csv"),
        read_csv(tmp_path / "ddp/run/metrics.csv"),
    )
    assert len(rows_one) == len(rows_two) == 12
    for r1, r2 in zip(rows_one, rows_two):
        for k in r1:
            assert (r1[k] == r2[k] == "") or float(r1[k]) == pytest.approx(
                float(r2[k]), rel=1e-4, abs=1e-5
            ), k


def test_ddp_detects_a_loss_that_bypasses_ctx_modules(tmp_path):
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="differ across ranks"):
        run_two_processes(tmp_path, bypass_ddp=True)


# ---- (3) corrupt checkpoints, (4) pickled code ----


def test_corrupt_latest_checkpoint_falls_back_with_warning(tmp_path):
    run(tmp_path, params=replace(PARAMS, max_steps=6))
    ckpts = list_checkpoints(tmp_path / "run/checkpoints")
    assert [s for s, _ in ckpts] == [6, 3] and (
        tmp_path / "run/checkpoints/latest"
    ).read_text().strip() == ckpts[0][1].name
    data = bytearray(ckpts[0][1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a readable zip, but the checksum catches it
    ckpts[0][1].write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="does not match"):
        path, state = load_latest_checkpoint(tmp_path / "run/checkpoints")
    assert path == ckpts[1][1] and state["step"] == 3
    ckpts[0][1].write_bytes(bytes(data[: len(data) // 3]))  # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        result = run(tmp_path, params=replace(PARAMS, max_steps=6))
    assert result.resumed_from == 3 and result.steps == 6
    for _, p in list_checkpoints(tmp_path / "run/checkpoints"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"), pytest.warns(RuntimeWarning):
        load_latest_checkpoint(tmp_path / "run/checkpoints")


class Payload:
    """Stands in for code smuggled into a checkpoint by pickle."""


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    directory = tmp_path / "run/checkpoints"
    directory.mkdir(parents=True)
    path = directory / checkpoint_name(1)
    torch.save({"step": 1, "modules": {"g": Payload()}}, path)
    atomic_write_text(path.with_name(path.name + ".sha256"), sha256_file(path) + "\n")  # checksum is valid
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_checkpoint_file(path)
    with pytest.raises(UnsafeCheckpointError):
        load_latest_checkpoint(directory)  # refused, not skipped over
    with pytest.raises(UnsafeCheckpointError):
        run(tmp_path)


# ---- configuration errors and per-group lr multipliers ----


def test_bad_batch_configuration_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="global_batch"):
        run(tmp_path, params=replace(PARAMS, global_batch=12, micro_batch=8))
    with pytest.raises(ValueError, match="fewer than train.global_batch"):
        run(tmp_path, params=replace(PARAMS, global_batch=64, micro_batch=8))


def test_a_group_lr_mult_scales_its_scheduled_lr(tmp_path):
    """The loop applies each group's lr_mult (default 1); whether a multiplier takes effect is the task's
    business (the tokenizer's prior.honor_lr_mult)."""
    run(tmp_path, params=replace(PARAMS, max_steps=2))
    groups = final_state(tmp_path)["optimizers"]["g"]["param_groups"]
    expected = 1e-2 * lr_multiplier(1, 6, 2, PARAMS.min_lr_mult)  # lr of the last step (index 1)
    assert groups[0]["lr"] == pytest.approx(expected)
    assert groups[1]["lr"] == pytest.approx(expected * 50.0)
