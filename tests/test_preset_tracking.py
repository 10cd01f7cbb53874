"""Both workflow tools rerun exactly the stages that read a changed preset value or changed code.

The pipeline is run once by each tool with a stand-in `larp` on PATH that only writes the declared outputs
(the tools record their real bookkeeping: dvc.lock, Snakemake's metadata); then one value of a preset file is
edited and each tool is asked what it would rerun: `dvc status` (the stages whose dependencies changed) and
`snakemake -n` (those and what follows from them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dag import copy_project

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs both tools over the whole pipeline (~1.5 min on 2 cores)

FAKE_LARP = """#!{python}
import pathlib, sys
args = sys.argv[1:]
for flag in ("--out", "--metrics"):
    if flag in args:
        p = pathlib.Path(args[args.index(flag) + 1])
        if p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(" ".join(args))
        else:
            p.mkdir(parents=True, exist_ok=True)
            (p / "done").write_text(" ".join(args))
"""

ALL = {"download@embedded", "extract@embedded", "train_tokenizer", "tokenize", "train_ar", "sample@0", "sample@1",
       "fvd_real", "fvd", "rfvd", "tokenize_fp", "train_ar_fp", "sample_fp@0", "sample_fp@1", "fvd_real_fp", "fvd_fp",
       "report"}
SAMPLING = {"sample@0", "sample@1", "fvd", "sample_fp@0", "sample_fp@1", "fvd_fp"}  # not the real features
SAMPLING_PLANNED = SAMPLING | {"report"}  # the report reads the new results: Snakemake plans it, DVC waits for them
AFTER_TOKENIZER = ALL - {"download@embedded", "extract@embedded", "fvd_real", "fvd_real_fp"}


def _env(bin_dir: Path) -> dict:
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """One project per tool, every stage run once (by the stand-in larp)."""
    tmp = tmp_path_factory.mktemp("tracking")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "larp").write_text(FAKE_LARP.format(python=sys.executable))
    (bin_dir / "larp").chmod(0o755)
    env = _env(bin_dir)
    out = {"env": env}
    for tool, cmd in (("dvc", ["dvc", "repro", "-q"]), ("snakemake", ["snakemake", "--cores", "1", "-q"])):
        repo = copy_project(tmp / tool, ("Snakefile", "dvc.yaml", "params.yaml", "workflow", "src", ".dvc",
                                          ".dvcignore"))
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        _run(cmd, repo, env)
        out[tool] = repo
    return out


def _dvc_changed(repo: Path, env: dict) -> set[str]:
    return set(json.loads(_run(["dvc", "status", "--json"], repo, env) or "{}"))


def _snakemake_planned(repo: Path, env: dict) -> set[str]:
    """The jobs `snakemake -n` plans, named as DVC names its stages."""
    text = _run(["snakemake", "-n"], repo, env)
    jobs = set()
    for rule, wildcards in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", text, flags=re.M):
        if rule == "all":
            continue
        m = re.search(r"wildcards: (.*)", wildcards)
        w = dict(kv.split("=", 1) for kv in m.group(1).split(", ")) if m else {}
        item = w.get("shard") if "shard" in w else (w.get("dataset") if rule in ("download", "extract") else None)
        jobs.add(f"{rule}@{item}" if item is not None else rule)
    return jobs


def _edited(built: dict, tool: str, tmp_path: Path, path: str, old: str, new: str) -> Path:
    repo = tmp_path / tool
    shutil.copytree(built[tool], repo, symlinks=True)  # keeps mtimes: only the edit is new
    f = repo / path
    text = f.read_text()
    assert text.count(old) == 1, old
    f.write_text(text.replace(old, new))
    return repo


def test_a_fresh_run_is_up_to_date_in_both_tools(built):
    assert _dvc_changed(built["dvc"], built["env"]) == set()
    assert _snakemake_planned(built["snakemake"], built["env"]) == set()


@pytest.mark.parametrize("path, old, new, readers, planned", [
    # the sampling settings: sampling and scoring, not the tokenizer (params.yaml overrides this value, but the
    # preset's group is tracked as a whole)
    ("src/larp/presets/tiny.yaml", "  cfg_scale: 1.25 ", "  cfg_scale: 2.0  ", SAMPLING, SAMPLING_PLANNED),
    # a value params.yaml does not override: the real effect
    ("src/larp/presets/tiny.yaml", "  batch_size: 16\n  shards:", "  batch_size: 8\n  shards:", SAMPLING, SAMPLING_PLANNED),
    # frame storage: extraction, then everything that reads frames
    ("src/larp/presets/tiny.yaml", "  embedded: {frame_format: raw, jpeg_quality: 95,",
     "  embedded: {frame_format: raw, jpeg_quality: 90,", {"extract@embedded"}, ALL - {"download@embedded"}),
    # the tokenizer's learning rate: training the tokenizer and everything after it
    ("src/larp/presets/tiny.yaml", "  lr: 1.0e-3\n", "  lr: 2.0e-3\n", {"train_tokenizer"}, AFTER_TOKENIZER),
    # the prior (a value params.yaml does not override): only training the tokenizer reads its group, the later
    # stages load the tokenizer without it and follow from the new weights
    ("src/larp/presets/tiny.yaml", "  lr_mult: 50.0\n", "  lr_mult: 20.0\n", {"train_tokenizer"}, AFTER_TOKENIZER),
    # the paper preset is not the embedded dataset's
    ("src/larp/presets/paper.yaml", "  cfg_scale: 1.25\n", "  cfg_scale: 2.0\n", set(), set()),
    # code: sampling runs the models
    ("src/larp/models/generator.py", '"""AR generator', '"""The AR generator', {
        "train_tokenizer", "tokenize", "train_ar", "sample@0", "sample@1", "rfvd", "tokenize_fp", "train_ar_fp",
        "sample_fp@0", "sample_fp@1", "report"}, AFTER_TOKENIZER),
])
def test_an_edit_reruns_exactly_the_stages_that_read_it(built, tmp_path, path, old, new, readers, planned):
    dvc = _edited(built, "dvc", tmp_path, path, old, new)
    assert _dvc_changed(dvc, built["env"]) == readers
    smk = _edited(built, "snakemake", tmp_path, path, old, new)
    assert _snakemake_planned(smk, built["env"]) == planned
