"""The whole chain through the tools users type: `dvc repro`, `dvc exp run -S`, `snakemake` + `dvc commit`.

Slow (minutes): selected on purpose with `-m slow`. The embedded dataset and the tiny preset, shrunk further
by params.yaml overrides (fewer videos, steps and clips) so that one pipeline run takes about a minute.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dag import copy_project

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

ALL_STAGES = {"download@embedded", "extract@embedded", "train_tokenizer", "tokenize", "train_ar", "sample@0", "sample@1",
              "fvd_real", "fvd", "rfvd", "tokenize_fp", "train_ar_fp", "sample_fp@0", "sample_fp@1", "fvd_real_fp",
              "fvd_fp", "report"}
# the real clips' features depend on the frames and the protocol only
AFTER_TOKENIZER = ALL_STAGES - {"download@embedded", "extract@embedded", "fvd_real", "fvd_real_fp"}

FAST = {  # smaller counts, same code
    "embedded": {"num_classes": 4, "train_per_class": 2, "test_per_class": 1, "min_frames": 20, "max_frames": 32},
    "train_tokenizer": {"max_steps": 30, "checkpoint_every": 10},
    # an AR epoch is one clip per training video: 8 videos make one global batch of 8
    "train_ar": {"max_steps": 30, "checkpoint_every": 10, "global_batch": 8, "micro_batch": 8},
    "train_ar_fp": {"max_steps": 30, "checkpoint_every": 10, "global_batch": 8, "micro_batch": 8},
    "fvd": {"num_clips": 8, "fp_num_clips": 4, "bootstrap": 10},
}


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `larp` command
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return env


def run(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_repo(path: Path) -> Path:
    """A git work tree with the project's pipeline files and the fast overrides, committed."""
    copy_project(path, ("Snakefile", "dvc.yaml", "workflow", "src", ".dvc", ".dvcignore", ".gitignore", "slurm"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in FAST.items():
        params[group] = {**(params.get(group) or {}), **values}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "pipeline"], path)
    return path


def metric(repo: Path, name: str) -> float:
    return json.loads((repo / "results" / name).read_text())["value"]


def test_dvc_repro_experiments(tmp_path):
    repo = make_repo(tmp_path / "repo")
    out = run(["dvc", "repro"], repo)
    assert ran_stages(out) == ALL_STAGES
    fvd0, rfvd0 = metric(repo, "fvd_embedded.json"), metric(repo, "rfvd_embedded.json")
    result = json.loads((repo / "results" / "fvd_embedded.json").read_text())
    assert result["comparable_to_papers"] is False and result["n_generated"] == result["n_real"] == 8
    assert (repo / "data" / "samples" / "embedded" / "shard-0" / "grid.png").is_file()
    assert (repo / "results" / "embedded" / "tokenizer_metrics.csv").is_file()
    assert (repo / "results" / "report_embedded.html").read_text().count('<tr class="class-row"') == 4

    # nothing changed: nothing runs
    assert ran_stages(run(["dvc", "repro"], repo)) == set()
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline results"], repo)

    # the ablation: the tokenizer stage and everything after it, never download or extraction
    out = run(["dvc", "exp", "run", "-n", "alpha-0.1", "-S", "prior.alpha=0.1"], repo)
    assert ran_stages(out) == AFTER_TOKENIZER
    assert yaml.safe_load((repo / "params.yaml").read_text())["prior"]["alpha"] == 0.1
    assert metric(repo, "fvd_embedded.json") != fvd0 and metric(repo, "rfvd_embedded.json") != rfvd0

    table = run(["dvc", "exp", "show", "--md"], repo)
    assert "alpha-0.1" in table and "0.1" in table and "0.06" in table


def test_snakemake_then_dvc_commit_is_clean(tmp_path):
    """Snakemake executes, DVC records: after `dvc commit -f`, `dvc repro` has nothing to do."""
    repo = make_repo(tmp_path / "repo")
    run(["snakemake", "--cores", "2"], repo)
    for f in ("fvd_embedded.json", "rfvd_embedded.json", "fvd_embedded_fp.json", "report_embedded.html"):
        assert (repo / "results" / f).is_file()
    run(["dvc", "commit", "-f"], repo)
    assert "up to date" in run(["dvc", "status"], repo)
    assert ran_stages(run(["dvc", "repro"], repo)) == set()
