"""A training command preempted at any moment, even while it starts (imports, data loading), exits with the
code SLURM and Snakemake retry on (75), not 143 (issue 18)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EX_TEMPFAIL = 75

# the training stage itself is replaced by "receive the signal, then keep loading data for a while"
EARLY = """
import os, signal, sys, time
import larp.stages
def slow_start(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, {sig!r}))
    time.sleep(60)
    raise AssertionError("the signal was not handled")
larp.stages.{stage} = slow_start
import larp.cli
sys.exit(larp.cli.main({argv!r}))
"""


def argv(command: str, tmp: Path) -> list[str]:
    common = ["--params", str(ROOT / "params.yaml"), "--dataset", "embedded", "--out", str(tmp / "w.safetensors"),
              "--metrics", str(tmp / "m.csv")]
    if command == "train-tokenizer":
        return [command, *common, "--frames", str(tmp / "frames")]
    return [command, *common, "--tokens", str(tmp / "tokens"), "--tokenizer", str(tmp / "w0.safetensors")]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
@pytest.mark.parametrize("command", ["train-tokenizer", "train-ar"])
def test_signal_before_the_loop_exits_75(tmp_path, command, sig):
    if command == "train-ar":  # a valid tokenizer weights file, so that the command gets to the stage
        import torch
        from safetensors.torch import save_file

        save_file({"tokenizer.w": torch.zeros(2)}, str(tmp_path / "w0.safetensors"))
    stage = command.replace("-", "_")
    code = EARLY.format(sig=sig, stage=stage, argv=argv(command, tmp_path))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    assert proc.returncode == EX_TEMPFAIL, (proc.returncode, proc.stderr[-2000:])
    assert time.monotonic() - t0 < 50  # at once, not after the stage's work


def _catches(pid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (sig - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_real_command_catches_sigterm_while_it_starts(tmp_path):
    """The real entry point: SIGTERM as soon as the process catches it, long before any training loop
    (here there is no data at all, so without the early handler the command would end with 2)."""
    proc = subprocess.Popen([sys.executable, "-m", "larp.cli", *argv("train-tokenizer", tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not _catches(proc.pid, signal.SIGTERM):
        time.sleep(0.002)
    caught = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert caught, f"the command never installed a SIGTERM handler; it ended with {proc.returncode}: {out}"
    assert proc.returncode == EX_TEMPFAIL, out


def test_main_in_process_restores_the_previous_handlers(tmp_path, capsys):
    from larp.cli import main

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    assert main(argv("train-tokenizer", tmp_path)) == 2  # no frames
    assert "no frames" in capsys.readouterr().err
    assert {s: signal.getsignal(s) for s in before} == before
