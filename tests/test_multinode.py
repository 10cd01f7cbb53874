"""Training across nodes (larp.launch): two local "nodes" are two `larp` launchers, each one torchrun agent with
one gloo worker, meeting at a c10d rendezvous on 127.0.0.1, as srun starts them on a SLURM allocation.

The runs switch the randomness off (dropout, SVQ sampling at a near-zero temperature, scheduled sampling, label
noise) because every rank draws from its own stream (seed + rank): with it, two ranks and one process make
different draws and only the averaged gradients could be compared. Data order and augmentation do not depend
on the world size (larp.train.data_order), so the two-node run equals the single-process one up to float sums.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from micro import MICRO, make_frames
from safetensors.torch import load_file, save_file

from larp.cli import main
from larp.launch import LaunchError, srun_command, torchrun_args
from larp.train.checkpoint import list_checkpoints

SRC = Path(__file__).resolve().parents[1] / "src"
STEPS_AR = 40  # enough for a signal to land in the middle of the run
DETERMINISTIC = {
    "tokenizer": {"svq_temperature": 1e-6},
    "prior": {"dropout": 0.0, "ss_max_ratio": 0.0},
    "loss": {"label_noise": 0.0, "d_update_every": 2},
    "generator": {"token_dropout": 0.0, "class_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0},
    "train_tokenizer": {"max_steps": 4, "global_batch": 4, "micro_batch": 2, "amp": "none", "log_every": 1},
    "tokenize": {"clip_stride": 4, "batch_size": 8, "shard_clips": 16},
    "train_ar": {"max_steps": STEPS_AR, "global_batch": 8, "micro_batch": 4, "amp": "none", "log_every": 1,
                 "checkpoint_every": 2, "sample_every": None},
}


# ---- what each process of a job runs (no processes started) ----


@pytest.fixture
def scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `scontrol show hostnames` on PATH that knows the node list gpu[07-08]."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 2\n'
                      'case "$3" in "gpu[07-08]") printf "gpu07\\ngpu08\\n" ;; *) echo "$3" ;; esac\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return script


def test_a_multi_node_slurm_job_starts_one_launcher_per_node(scontrol: Path) -> None:
    argv = ["train-ar", "--dataset", "ucf101"]
    cmd = srun_command(argv, {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"})
    assert cmd == ["env", "LARP_NNODES=2", "LARP_RDZV_ID=slurm-123456", "LARP_RDZV_ENDPOINT=gpu07:23456", "srun",
                   "--nodes=2", "--ntasks-per-node=1", "--overlap", "--kill-on-bad-exit=1", sys.executable, "-m",
                   "larp.cli", *argv]
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "7", "LARP_RDZV_ENDPOINT": "10.0.0.7:4000"}
    assert "LARP_RDZV_ENDPOINT=10.0.0.7:4000" in srun_command(argv, env)
    assert srun_command(argv, {"SLURM_JOB_NODELIST": "gpu07", "SLURM_JOB_ID": "7"}) is None  # one node
    assert srun_command(argv, {}) is None  # no SLURM
    # the launcher srun started on each node: torchrun's agent joins the rendezvous on the first node
    node = {"SLURM_JOB_NODELIST": "gpu[07-08]", "LARP_NNODES": "2", "LARP_RDZV_ID": "slurm-7",
            "LARP_RDZV_ENDPOINT": "gpu07:20007"}
    assert srun_command(argv, node) is None
    assert torchrun_args(node, gpus=8) == ["--nproc-per-node=8", "--nnodes=2", "--rdzv-backend=c10d",
                                           "--rdzv-endpoint=gpu07:20007", "--rdzv-id=slurm-7"]


def test_torchrun_options_of_one_node() -> None:
    assert torchrun_args({}, gpus=0) is None and torchrun_args({}, gpus=1) is None  # one process does the work
    assert torchrun_args({}, gpus=8) == ["--nproc-per-node=8", "--standalone"]
    assert torchrun_args({"LARP_NPROC_PER_NODE": "2"}, gpus=0) == ["--nproc-per-node=2", "--standalone"]


@pytest.mark.parametrize("env, message", [
    ({"LARP_NNODES": "2"}, "needs LARP_RDZV_ENDPOINT"),
    ({"LARP_NNODES": "two"}, "LARP_NNODES must be an integer"),
    ({"LARP_NPROC_PER_NODE": "0"}, "LARP_NPROC_PER_NODE must be >= 1"),
])
def test_bad_launch_variables_are_one_clear_line(env: dict, message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        torchrun_args(env, gpus=0)


def test_an_unexpandable_node_list_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    with pytest.raises(LaunchError, match=r"SLURM_JOB_NODELIST='gpu\[07-08\]'.*scontrol show hostnames"):
        srun_command(["train-ar"], {"SLURM_JOB_NODELIST": "gpu[07-08]"})


def test_the_cli_reports_a_bad_launch_variable_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LARP_NNODES", "2")
    monkeypatch.delenv("LARP_RDZV_ENDPOINT", raising=False)
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    save_file({"x": torch.zeros(1)}, str(tmp_path / "t.safetensors"))  # a well-formed weights file: the launch fails first
    rc = main(["train-ar", "--params", str(params), "--dataset", "embedded", "--tokens", str(tmp_path),
               "--tokenizer", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "ar.safetensors"),
               "--metrics", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("larp train-ar: LARP_NNODES=2 needs LARP_RDZV_ENDPOINT") and "Traceback" not in err


@pytest.mark.parametrize("stage, values, message", [
    ("train_ar", {"nodes": 0}, "resources.train_ar.nodes: must be >= 1"),
    ("sample", {"nodes": 2}, "resources.sample.nodes: must be 1: only train_tokenizer, tokenize"),
    ("tokenize", {"nodes": 2, "gpus": 0}, "resources.tokenize.nodes: several nodes need gpus >= 1"),
])
def test_nodes_are_checked(stage: str, values: dict, message: str) -> None:
    from larp.config import ParamsError, apply_overrides, preset

    assert apply_overrides(preset("paper"), {"resources": {"train_ar": {"nodes": 4}}}).resources.train_ar.nodes == 4
    with pytest.raises(ParamsError, match=re.escape(message)):
        apply_overrides(preset("paper"), {"resources": {stage: values}})


# ---- two local nodes ----


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Frames, a params.yaml, a trained tokenizer and its tokens (single process, CLI)."""
    root = tmp_path_factory.mktemp("multinode")
    frames = make_frames(root)
    groups: dict = {}
    for layer in (MICRO, DETERMINISTIC):
        for group, values in layer.items():
            groups[group] = {**groups.get(group, {}), **values}
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": "embedded", "presets": {"embedded": "tiny"}, **groups}))
    d = {"root": root, "frames": frames, "params": params}
    assert main(tokenizer_args(d, root / "one")) == 0
    assert main(["tokenize", "--params", str(params), "--dataset", "embedded", "--frames", str(frames),
                 "--tokenizer", str(root / "one/tok.safetensors"), "--out", str(root / "tokens")]) == 0
    return d


def tokenizer_args(d: dict, out: Path) -> list[str]:
    return ["train-tokenizer", "--params", str(d["params"]), "--dataset", "embedded", "--frames", str(d["frames"]),
            "--out", str(out / "tok.safetensors"), "--metrics", str(out / "metrics.csv")]


def ar_args(d: dict, out: Path) -> list[str]:
    root = d["root"]
    return ["train-ar", "--params", str(d["params"]), "--dataset", "embedded", "--tokens", str(root / "tokens"),
            "--tokenizer", str(root / "one/tok.safetensors"), "--out", str(out / "ar.safetensors"),
            "--metrics", str(out / "metrics.csv")]


def start_nodes(argv: list[str], nodes: int = 2) -> list[subprocess.Popen]:
    """``nodes`` launchers of `larp <argv>`, one torchrun agent each, as srun starts one per node."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LARP_"))}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
               LARP_NNODES=str(nodes), LARP_RDZV_ENDPOINT=f"127.0.0.1:{port}", LARP_RDZV_ID=f"test-{port}",
               LARP_NPROC_PER_NODE="1")
    return [subprocess.Popen([sys.executable, "-m", "larp.cli", *argv], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True) for _ in range(nodes)]


def wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            raise
        out.append((p.returncode, text))
    return out


def read_csv(path: Path, timings: bool = False) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if timings or k != "sec_per_step"} for row in csv.DictReader(f)]


def assert_close_runs(one: Path, two: Path, weights: str) -> None:
    a, b = load_file(one / weights), load_file(two / weights)
    assert a.keys() == b.keys()
    for k in a:
        # LeCam's EMAs of D's logits are running statistics of each process's own micro-batches (rank 0's are
        # saved, as with the official DDP training), not averaged gradients: equal only approximately
        loose = ".lecam.ema_" in k  # (and the d_lecam metric)
        torch.testing.assert_close(a[k], b[k], rtol=1e-2 if loose else 1e-4, atol=1e-2 if loose else 1e-5, msg=k)
    rows_one, rows_two = read_csv(one / "metrics.csv"), read_csv(two / "metrics.csv")
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two]
    for r1, r2 in zip(rows_one, rows_two):
        for k in r1:
            tol = 1e-2 if k == "d_lecam" else 1e-4
            assert (r1[k] == r2[k] == "") or float(r1[k]) == pytest.approx(float(r2[k]), rel=tol, abs=tol / 10), k


def test_two_node_tokenizer_equals_one_process(data: dict) -> None:
    out = data["root"] / "two"
    results = wait(start_nodes(tokenizer_args(data, out)))
    assert [rc for rc, _ in results] == [0, 0], results
    assert all("--nnodes=2" in text and "--rdzv-backend=c10d" in text for _, text in results)
    assert_close_runs(data["root"] / "one", out, "tok.safetensors")
    assert len(read_csv(out / "metrics.csv")) == 4


@pytest.mark.slow  # two two-node launches: 95-135 s on the shared 2-core machine
def test_preempted_two_node_ar_job_resumes_and_equals_one_process(data: dict, tmp_path: Path) -> None:
    one, cut = tmp_path / "one", tmp_path / "cut"
    assert main(ar_args(data, one)) == 0
    procs = start_nodes(ar_args(data, cut))
    deadline, checkpoints = time.monotonic() + 200, []
    while not checkpoints and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        checkpoints = [c for d in cut.glob("runs/ar-*/checkpoints") for c in list_checkpoints(d)]
        time.sleep(0.02)
    # SLURM's warning reaching one node's launcher: the other node's ranks stop with it (any_rank), all exit 75
    procs[1].send_signal(signal.SIGUSR1)
    results = wait(procs)
    assert [rc for rc, _ in results] == [75, 75], results
    assert not (cut / "ar.safetensors").exists()
    (ckpt_dir,) = cut.glob("runs/ar-*/checkpoints")
    stopped = max(s for s, _ in list_checkpoints(ckpt_dir))
    assert 2 <= stopped < STEPS_AR
    first_leg = read_csv(ckpt_dir.parent / "metrics.csv", timings=True)
    results = wait(start_nodes(ar_args(data, cut)))  # Snakemake's retry: the same command again
    assert [rc for rc, _ in results] == [0, 0], results
    # resumed, not restarted: the first leg's rows (with their timings) are still there
    assert read_csv(ckpt_dir.parent / "metrics.csv", timings=True)[:stopped] == first_leg[:stopped]
    assert_close_runs(one, cut, "ar.safetensors")
