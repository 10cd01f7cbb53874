"""The embedded pipeline on a CUDA machine: every stage's GPU path (autocast, GradScaler, torch.compile, TF32,
CUDA sampling and I3D) and a preemption + resume of the tokenizer trainer, in a few minutes.

Usage: python scripts/gpu_smoke.py WORKDIR [--out DIR]

Runs the commands of dvc.yaml (the same ones Snakemake runs) for the embedded dataset, in order, in WORKDIR,
with params.yaml plus GPU settings: tokenizer fp16 autocast + GradScaler + compile, AR generators bf16,
sampling in bf16. ``train-tokenizer`` is first interrupted with SIGUSR1 (as SLURM warns before a
preemption) once it has logged a step: it must checkpoint and exit with code 75, and the rerun must resume
from that checkpoint and finish. Then every result file must hold finite numbers. Prints one line per command
with its wall time; with ``--out``, copies the result JSONs and training curves there. Exit code 1 on the
first failure. ``larp`` must be on PATH (an installed package or a shim running ``python -m larp.cli``).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# compile only the tokenizer: on an H200 its first two steps took 143 s (compile, then one recompile for the
# changing step number); the AR trainers run the same loop code, so compiling them too would only add minutes
GPU_OVERRIDES = {
    "train_tokenizer": {"amp": "fp16", "compile": True},
    "train_ar": {"amp": "bf16", "compile": False},
    "train_ar_fp": {"amp": "bf16", "compile": False},
    "sample": {"dtype": "bf16"},
}


def dvc_commands(raw_params: dict) -> list[tuple[str, str]]:
    """(stage name, command) of every dvc.yaml stage in file order, templated from ``raw_params`` as DVC does
    (``${dataset}``, and ``foreach: ${a.b}`` over that list of the params file)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        if "foreach" in stage:
            items = raw_params
            for key in stage["foreach"].strip("${}").split("."):
                items = items[key]
            for item in items:
                out.append((f"{name}@{item}", stage["do"]["cmd"].replace("${item}", str(item))))
        else:
            out.append((name, stage["cmd"]))
    return [(n, " ".join(c.replace("${dataset}", raw_params["dataset"]).split())) for n, c in out]


def run(name: str, cmd: str, params: Path, cwd: Path) -> float:
    t0 = time.perf_counter()
    rc = subprocess.call(f"{cmd} --params {params}", shell=True, cwd=cwd)
    dt = time.perf_counter() - t0
    print(f"[{name}] rc {rc}, {dt:.1f} s: {cmd}", flush=True)
    if rc:
        sys.exit(f"FAILED: {name} exited with {rc}")
    return dt


def preempt_and_resume(cmd: str, params: Path, cwd: Path) -> None:
    """SIGUSR1 once a step is logged: exit 75 with a checkpoint; the rerun resumes from it and finishes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(f"exec {cmd} --params {params}", shell=True, cwd=cwd)
    while proc.poll() is None:
        logs = glob.glob(str(cwd / "checkpoints/*/runs/tokenizer-*/metrics.csv"))
        if logs and len(Path(logs[0]).read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.2)
    rc = proc.wait()
    ckpts = sorted(glob.glob(str(cwd / "checkpoints/*/runs/tokenizer-*/checkpoints/step-*.pt")))
    print(f"[train_tokenizer preempted] rc {rc} after {time.perf_counter() - t0:.1f} s, checkpoints "
          f"{[Path(c).name for c in ckpts]}", flush=True)
    if rc != 75 or not ckpts:
        sys.exit(f"FAILED: SIGUSR1 should checkpoint and exit 75, got rc {rc} and {len(ckpts)} checkpoints")
    run("train_tokenizer (resumed)", cmd, params, cwd)
    rows = (cwd / "results/embedded/tokenizer_metrics.csv").read_text().splitlines()
    print(f"  tokenizer metrics: {rows[0]}\n  first {rows[1]}\n  last  {rows[-1]}", flush=True)


def check_results(cwd: Path) -> list[Path]:
    files = sorted((cwd / "results").glob("*.json"))
    if len(files) < 3:
        sys.exit(f"FAILED: expected fvd, rfvd and fp result files, found {[f.name for f in files]}")
    for f in files:
        r = json.loads(f.read_text())
        nums = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        bad = [k for k, v in nums.items() if not math.isfinite(v)]
        print(f"{f.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in nums.items()), flush=True)
        if bad:
            sys.exit(f"FAILED: {f.name} has non-finite {bad}")
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA too (to test this script)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("FAILED: no CUDA device")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"torch {torch.__version__}, {device}, python {sys.version.split()[0]}",
          flush=True)
    # a launcher that blocks SIGUSR1 would hide preemption warnings (the trainer unblocks it; show the mask)
    status = Path("/proc/self/status").read_text().splitlines()
    print(" ".join(line for line in status if line.startswith(("SigBlk", "SigIgn"))), flush=True)
    cwd = args.workdir.resolve()
    cwd.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in GPU_OVERRIDES.items():
        raw[group] = {**(raw.get(group) or {}), **values}
    raw["dataset"], raw["datasets"] = "embedded", ["embedded"]
    params = cwd / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    t0 = time.perf_counter()
    for name, cmd in dvc_commands(raw):
        if name == "train_tokenizer":
            preempt_and_resume(cmd, params, cwd)
        else:
            run(name, cmd, params, cwd)
    print(f"whole chain: {time.perf_counter() - t0:.1f} s", flush=True)
    files = check_results(cwd)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for f in [*files, *sorted((cwd / "results/embedded").glob("*.csv"))]:
            shutil.copy(f, args.out / f.name)
    print("GPU SMOKE OK")


if __name__ == "__main__":
    main()
