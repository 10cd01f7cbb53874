"""The SLURM profile: `snakemake --profile slurm` finds slurm/config.yaml from the repo root and plans every
job with the resources of its stage in params.yaml (GPU stages ask for GPUs). Dry runs: no cluster needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from dag import copy_project, snakemake_jobs

from larp.config import ResourcesParams, load_params, tokenizer_datasets

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "slurm" / "config.yaml"
WORKFLOW_FILES = ("Snakefile", "workflow", "params.yaml", "slurm", "src")
STAGES = set(ResourcesParams.__dataclass_fields__)  # params.yaml `resources.<stage>`
STAGE_OF_RULE = {"rfvd": "fvd", "tokenize_fp": "tokenize", "sample_fp": "sample", "fvd_fp": "fvd", "fvd_real": "fvd",
                 "fvd_real_fp": "fvd", "report": "fvd"}  # rules that use another stage's resources; the others are named like theirs
SLURM_DEFAULT_MIN_JOB_AGE = 300  # seconds; squeue polling needs MinJobAge >= 3 x the first poll delay


@dataclass
class PlannedJob:
    """One job of a Snakemake dry run, as printed by `snakemake -n`."""

    rule: str
    local: bool
    wildcards: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return int(self.resources.get("gpu", 0))


_JOB_HEADER = re.compile(r"^(local)?(?:rule|checkpoint) (\S+):$")
_JOB_FIELD = re.compile(r"^    (\w+): (.*)$")


def parse_dry_run(text: str) -> list[PlannedJob]:
    """The jobs of a `snakemake -n` printout (rule, local or not, wildcards, outputs, resources)."""
    jobs: list[PlannedJob] = []
    current: PlannedJob | None = None
    for line in text.splitlines():
        if m := _JOB_HEADER.match(line):
            current = PlannedJob(rule=m[2], local=bool(m[1]))
            jobs.append(current)
        elif current is not None and (m := _JOB_FIELD.match(line)):
            key, value = m[1], m[2]
            items = [v.strip() for v in value.split(", ")]
            if key == "output":
                current.output = items
            elif key in ("resources", "wildcards"):
                setattr(current, key, dict(v.split("=", 1) for v in items if "=" in v))
        elif not line.startswith("    "):
            current = None
    return jobs


def copy_workflow(dst: Path) -> Path:
    """The files `snakemake` needs, copied to ``dst`` (a repo root without data, results or state)."""
    return copy_project(dst, WORKFLOW_FILES)


def snakemake_env() -> dict[str, str]:
    """The environment for `snakemake`: this interpreter's bin first, so rules and SLURM jobs find `larp`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], check=False, cwd=repo,
                          env=snakemake_env(), capture_output=True, text=True, timeout=timeout)


def plan(repo: Path, *args: str) -> list[PlannedJob]:
    """Dry run with the SLURM profile, found by name from the repo root (as a user types it)."""
    r = snakemake(repo, "--profile", "slurm", "--dry-run", "--forceall", *args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Using profile slurm" in r.stdout + r.stderr
    jobs = parse_dry_run(r.stdout)
    assert jobs, r.stdout[-3000:]
    return jobs


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("profile") / "repo")


def test_profile_is_the_slurm_executor_without_sacct():
    cfg = yaml.safe_load(PROFILE.read_text())
    assert cfg["executor"] == "slurm"
    # sacct needs slurmdbd; without it the plugin's default (sacct) waits forever
    assert cfg["slurm-status-command"] == "squeue"
    first_poll = cfg.get("slurm-init-seconds-before-status-checks", 40)
    assert 1 <= first_poll and 3 * first_poll <= SLURM_DEFAULT_MIN_JOB_AGE, first_poll
    assert int(cfg.get("retries", cfg.get("restart-times", 0))) >= 1  # failed/timed-out jobs are resubmitted
    for key in ("runtime", "mem_mb"):
        assert key in cfg["default-resources"], key  # jobs without own resources still get limits


# the stages of each dataset's default target: UCF-101 = gFVD + rFVD, K600 = FP-FVD, embedded = everything
DEFAULT_STAGES = {"embedded": STAGES, "ucf101": STAGES - {"train_ar_fp"},
                  "k600": {"download", "extract", "train_tokenizer", "tokenize", "train_ar_fp", "sample", "fvd"}}


@pytest.mark.parametrize("dataset", ["embedded", "ucf101", "k600"])
def test_dry_run_gives_each_stage_its_resources(repo, dataset):
    jobs = plan(repo, "--config", f"dataset={dataset}")  # the default target: the dataset's whole pipeline
    params = load_params(repo / "params.yaml", dataset=dataset)
    remote = [j for j in jobs if not j.local and j.output]  # `all` has no output: Snakemake runs it locally
    assert remote, "no job would be submitted to SLURM"
    for job in remote:
        name = STAGE_OF_RULE.get(job.rule, job.rule)
        assert name in STAGES, f"rule {job.rule}: which resources.<stage> of params.yaml? (STAGE_OF_RULE)"
        ds = job.wildcards.get("dataset")
        assert ds in (dataset, *tokenizer_datasets(params, dataset)), job
        stage = getattr(load_params(repo / "params.yaml", dataset=ds).resources, name)
        got = (job.gpus, int(job.resources["mem_mb"]), int(job.resources["runtime"]))
        assert got == (stage.gpus, stage.mem_mb, stage.runtime), f"{job.rule}: gpu, mem_mb, runtime"
    # the default target is the dataset's whole pipeline: every stage of it runs, the GPU stages with their GPUs
    assert {STAGE_OF_RULE.get(j.rule, j.rule) for j in remote} == DEFAULT_STAGES[dataset]
    assert any(j.gpus > 0 for j in remote)


def test_fvd_target_plans_on_slurm(repo):
    """The README's command: `snakemake --profile slurm results/fvd_ucf101.json`."""
    jobs = plan(repo, "results/fvd_ucf101.json")
    assert {"download", "extract", "train_tokenizer", "tokenize", "train_ar", "sample", "fvd"} <= {
        j.rule for j in jobs}
    # the paper tokenizer trains on K600-train + UCF-101-train: K600 is downloaded and extracted too, and only
    # those two stages run for it
    assert {(j.rule, j.wildcards["dataset"]) for j in jobs if j.wildcards.get("dataset") != "ucf101"} == {
        ("download", "k600"), ("extract", "k600")}


def test_parse_dry_run():
    text = """Building DAG of jobs...
rule train_ar:
    input: data/tokens/embedded
    output: checkpoints/ar_embedded.safetensors, logs/x.json
    wildcards: dataset=embedded
    resources: tmpdir=/tmp, disk_mb=<TBD>, mem_mb=2000, mem=2 GB, runtime=30, gpu=1
Shell command: larp train-ar

localrule all:
    input: results/fvd_embedded.json
    jobid: 0
"""
    jobs = parse_dry_run(text)
    assert [(j.rule, j.local, j.gpus) for j in jobs] == [("train_ar", False, 1), ("all", True, 0)]
    assert jobs[0].output == ["checkpoints/ar_embedded.safetensors", "logs/x.json"]
    assert jobs[0].resources["mem"] == "2 GB" and jobs[0].wildcards == {"dataset": "embedded"}


def test_every_trainer_rule_gets_the_preemption_warning():
    """SLURM sends SIGUSR1 10 min before the time limit to every rule that runs a resumable trainer."""
    # the planned jobs, as Snakemake reads the rules (train_ar_fp is `use rule train_ar as train_ar_fp`)
    jobs = snakemake_jobs(ROOT, ["results/report_embedded.html"])
    trainers = {rule for rule, job in jobs.items() if job["cmd"].startswith("larp train-")}
    assert {"train_tokenizer", "train_ar", "train_ar_fp"} <= trainers
    extra = yaml.safe_load(PROFILE.read_text())["set-resources"]
    assert {r: "--signal=USR1@600" in str(extra.get(r, {}).get("slurm_extra")) for r in trainers} == {
        r: True for r in trainers}


class _Resources(dict):
    """A planned job's resources as the slurm plugin reads them (``.get`` and attributes)."""

    __getattr__ = dict.__getitem__


def test_a_multi_node_stage_asks_slurm_for_its_nodes_and_gpus_per_node(tmp_path):
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_gpu_setting

    repo = copy_workflow(tmp_path / "repo")
    cfg = yaml.safe_load((repo / "params.yaml").read_text())
    cfg["resources"] = {"train_tokenizer": {"nodes": 2}, "train_ar": {"nodes": 3}}
    (repo / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = {j.rule: j for j in plan(repo, "results/fvd_ucf101.json") if j.wildcards.get("dataset") == "ucf101"}
    resources_of = load_params(repo / "params.yaml", dataset="ucf101").resources
    for rule, nodes in (("train_tokenizer", 2), ("train_ar", 3), ("tokenize", 1)):
        job, stage = jobs[rule], getattr(resources_of, rule)
        assert stage.nodes == nodes
        resources = _Resources({k: int(v) if v.isdigit() else v for k, v in job.resources.items()})
        fake = type("Job", (), {"resources": resources, "threads": 4})()
        sbatch = get_submit_command(fake, {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "",
                                           "partition": "", "workdir": "."}) + set_gres_string(fake)
        assert f"--nodes={nodes}" in sbatch.split(), (rule, sbatch)
        if nodes > 1:  # --gres counts per node; --gpus would count for the whole job
            assert f"--gres=gpu:{stage.gpus}" in sbatch.split() and "--gpus" not in sbatch, sbatch
            assert get_gpu_setting(fake) == ""  # the jobstep's srun gets the job's GPUs of its node too
        else:
            assert f"--gpus={stage.gpus}" in sbatch.split() and "--gres" not in sbatch, sbatch
