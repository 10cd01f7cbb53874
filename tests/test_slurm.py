"""The embedded pipeline on a real SLURM cluster: `snakemake --profile slurm` against a single-node cluster
(Debian's slurm-wlm, fake GPUs) started by scripts/slurm/start_cluster.sh and stopped again at the end.

Needs root (it installs packages with apt when missing and starts system daemons); CI runs as root:
`python -m pytest -m slurm -s` (-s shows the timings).
LARP_SLURM_TARGETS="a b" runs other targets than the default (the embedded pipeline).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_profile import ROOT, copy_workflow, plan, snakemake_env

START = ROOT / "scripts" / "slurm" / "start_cluster.sh"
STOP = ROOT / "scripts" / "slurm" / "stop_cluster.sh"
FAKE_GPUS = 2  # two GPU jobs (sample shards) can run side by side on the 2 CPUs
# s, the plugin's first status check after a submission, then +10 s per check: jobs here take 8-20 s, so
# 5 sees most of them at the 2nd check (20 s); 2 would see them at 14 s or 36 s
FIRST_POLL = 5
MIN_JOB_AGE = 3600  # s, finished jobs stay visible to scontrol for the checks (>= 3 x FIRST_POLL for squeue)
TIMEOUT = float(os.environ.get("LARP_SLURM_TIMEOUT", "900"))
# Orchestration is under test here, not learning or metrics: fewer optimiser steps and FVD clips (the I3D
# takes ~3 s per clip on a CPU) keep the run short.
FAST_PARAMS = {
    "train_tokenizer": {"max_steps": 4},
    "train_ar": {"max_steps": 4},
    "fvd": {"num_clips": 8, "rfvd_max_videos": 8, "bootstrap": 0},
}


def _controller_running() -> bool:
    pid = Path("/run/slurm/slurmctld.pid")
    try:
        os.kill(int(pid.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def cluster():
    """A running single-node cluster; stopped at the end unless it was already running before."""
    if os.geteuid() != 0:
        pytest.skip("needs root: starts the SLURM and munge daemons and installs slurm-wlm/munge with apt")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is missing to install slurm-wlm, slurmd, munge")
    was_running = _controller_running()
    env = dict(os.environ, FAKE_GPUS=str(FAKE_GPUS), MIN_JOB_AGE=str(MIN_JOB_AGE))
    t0 = time.monotonic()
    try:
        r = subprocess.run(["bash", str(START)], check=False, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"start_cluster.sh failed:\n{r.stdout}\n{r.stderr}"
        print(f"\ncluster started in {time.monotonic() - t0:.1f} s:\n{r.stdout}")
        yield
    finally:
        if not was_running:
            subprocess.run(["bash", str(STOP)], check=False, capture_output=True, text=True, timeout=120)


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """SLURM's records (`scontrol show job`) of the jobs submitted from ``workdir``."""
    r = subprocess.run(["scontrol", "--details", "--oneliner", "show", "job"], check=False,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 or "No jobs in the system" in r.stderr + r.stdout, r.stderr
    jobs = []
    for line in r.stdout.splitlines():
        rec = dict(kv.split("=", 1) for kv in re.findall(r"(\S+?=\S*)", line))
        if rec.get("WorkDir") == str(workdir):
            jobs.append(rec)
    return jobs


def gpu_count(value: str | None) -> int:
    """GPUs in a SLURM TRES/GRES string: 'gres:gpu:2', 'gres/gpu:2', 'gpu:tesla:2' -> 2; '(null)' -> 0."""
    n = 0
    for item in (value or "").split(","):
        if "gpu" in item and (m := re.search(r"(\d+)(?:\(.*\))?$", item)):
            n += int(m[1])
    return n


def requested_gpus(job: dict[str, str]) -> int:
    return sum(gpu_count(v) for k, v in job.items() if k.startswith("TresPer"))


def rule_of(job: dict[str, str]) -> str:
    """The rule a job ran: the plugin writes `--comment rule_<name>[_wildcards_<values>]`."""
    m = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", job.get("Comment", ""))
    assert m, f"job {job['JobId']} has no rule comment: {job.get('Comment')!r}"
    return m[1]


def _shrink(params_file: Path) -> None:
    params = yaml.safe_load(params_file.read_text())
    for group, values in FAST_PARAMS.items():
        params[group] = {**(params.get(group) or {}), **values}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def _logs(repo: Path, limit: int = 6000) -> str:
    parts = []
    slurm_logs, rule_logs = repo / ".snakemake" / "slurm_logs", repo / "logs"
    for f in [*sorted(slurm_logs.rglob("*.log")), *sorted(rule_logs.rglob("*.log"))]:
        parts.append(f"--- {f.relative_to(repo)}\n{f.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)[-limit:]


def _run(repo: Path, args: list[str]) -> tuple[int, str]:
    """Run snakemake in its own session so that a timeout can kill it and everything it started."""
    env = snakemake_env() | {"LARP_OFFLINE": "1"}  # the embedded pipeline needs no network
    p = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=repo, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"snakemake did not finish within {TIMEOUT:.0f} s:\n{out[-4000:]}\n{_logs(repo)}")
    return p.returncode, out


@pytest.mark.slurm
@pytest.mark.slow  # ~3 min: CI runs it on its own with `-m slurm`
def test_embedded_pipeline_on_slurm(cluster, tmp_path):
    repo = copy_workflow(tmp_path / "repo")
    _shrink(repo / "params.yaml")
    targets = os.environ.get("LARP_SLURM_TARGETS", "").split()
    planned = [j for j in plan(repo, *targets) if not j.local and j.output]

    t0 = time.monotonic()
    try:
        rc, out = _run(repo, ["--profile", "slurm", "--slurm-init-seconds-before-status-checks",
                              str(FIRST_POLL), *targets])
    finally:
        left = [j["JobId"] for j in slurm_jobs(repo) if j.get("JobState") in ("PENDING", "RUNNING")]
        if left:
            subprocess.run(["scancel", *left], check=False, timeout=60)
    elapsed = time.monotonic() - t0
    print(f"snakemake --profile slurm: {len(planned)} jobs in {elapsed:.1f} s")
    assert rc == 0, f"snakemake --profile slurm failed (rc {rc}):\n{out[-4000:]}\n{_logs(repo)}"

    missing = [o for j in planned for o in j.output if not (repo / o).exists()]
    assert not missing, f"outputs not produced: {missing}"

    jobs = slurm_jobs(repo)
    done = [j for j in jobs if j.get("JobState") == "COMPLETED"]
    # every planned job ran as one completed SLURM job, asking for exactly the GPUs of its rule ...
    want = collections.Counter((j.rule, j.gpus) for j in planned)
    got = collections.Counter((rule_of(j), requested_gpus(j)) for j in done)
    assert got == want, f"SLURM jobs (rule, GPUs requested) {dict(got)} != planned {dict(want)}"
    # ... and SLURM gave each GPU job its GPUs (fake devices), and none to the CPU jobs
    for j in done:
        assert gpu_count(j.get("JOB_GRES")) == requested_gpus(j), (rule_of(j), j.get("JOB_GRES"))
    gpu_rules = sorted({rule_of(j) for j in done if requested_gpus(j)})
    assert gpu_rules, "no job asked for a GPU: the embedded preset gives the training stages one each"
    print(f"GPU rules: {gpu_rules}; CPU rules: {sorted({rule_of(j) for j in done} - set(gpu_rules))}")


def test_gpu_count_and_rule_parsing():
    assert gpu_count("gres:gpu:1") == 1 and gpu_count("gres/gpu:2") == 2 and gpu_count("gpu:tesla:3") == 3
    assert gpu_count("gpu:1(IDX:0)") == 1 and gpu_count("(null)") == 0 and gpu_count(None) == 0
    assert requested_gpus({"TresPerJob": "gres:gpu:1", "TresPerNode": "gres:gpu:1"}) == 2
    assert requested_gpus({"TRES": "cpu=1,mem=2000M"}) == 0
    assert rule_of({"JobId": "1", "Comment": "rule_train_tokenizer_wildcards_embedded"}) == "train_tokenizer"
    assert rule_of({"JobId": "1", "Comment": "rule_fvd"}) == "fvd"
