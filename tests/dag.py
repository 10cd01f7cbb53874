"""Read the pipeline as each tool sees it, with the tools' own parsers (used by test_dag_parity)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOREACH_WILDCARD = {"download": "dataset", "extract": "dataset"}  # rule -> wildcard of its dvc.yaml foreach
_LOG_REDIRECT = re.compile(r"\s+2>\s*\S+$")  # Snakemake rules send stderr to their log: file


def copy_project(dst: Path, names: Iterable[str]) -> Path:
    """The named files and folders of the repo root copied to ``dst``: a work tree for the workflow tools,
    without caches, data, results or state."""
    for name in names:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("cache", "tmp", "__pycache__", "*.egg-info"))
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst / name)
    return dst


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def dvc_stages(root: Path) -> dict[str, dict]:
    """Stage name -> cmd, deps, outs (incl. metrics and plots) and param keys, as DVC resolves them."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            params = set()
            deps = set()
            for d in st.deps:
                if type(d).__name__ == "ParamsDependency":  # keys of a file other than params.yaml: <file>:<key>
                    where = "" if d.def_path == "params.yaml" else f"{d.def_path}:"
                    params |= {where + k for k in d.params}
                else:
                    deps.add(d.def_path)
            cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd)
            out[st.name] = dict(cmd=" ".join(cmd.split()), deps=deps, outs={o.def_path for o in st.outs},
                                params=params)
    # a dependency on a directory that holds other stages' outputs (fvd on data/samples/<ds>, the parent of
    # every shard) stands for those outputs, and a code folder for its Python files: how Snakemake lists them
    all_outs = {o for st in out.values() for o in st["outs"]}

    def expand(d: str) -> set[str]:
        if d.startswith("src/") and (root / d).is_dir():
            return {str(f.relative_to(root)) for f in (root / d).rglob("*.py")}
        return {o for o in all_outs if o.startswith(d + "/")} or {d}

    for st in out.values():
        st["deps"] = {x for d in st["deps"] for x in expand(d)}
    return out


def snakemake_jobs(root: Path, targets: list[str]) -> dict[str, dict]:
    """Rule name -> the same fields for every job Snakemake plans to build ``targets`` from scratch."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

    out: dict[str, dict] = {}
    with _cwd(root), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
                          workdir=Path("."))
        wf.dag(dag_settings=DAGSettings(targets=set(targets), forceall=True))
        w = wf._workflow  # Snakemake has no public DAG-introspection API
        w._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        w._build_dag()
        for job in w.dag.jobs:
            name = job.rule.name
            # DVC names foreach stages <stage>@<item>: the sampling shards, the datasets downloaded and extracted
            item = FOREACH_WILDCARD.get(name, "shard")
            key = f"{name}@{job.wildcards_dict[item]}" if item in job.wildcards_dict else name
            params = dict(job.params.items()).get("tracked", {})
            out[key] = dict(cmd=" ".join(_LOG_REDIRECT.sub("", job.shellcmd).split()),
                            deps={str(f) for f in job.input}, outs={str(f) for f in job.output},
                            params=set(params))
    return out


def compare(dvc: dict[str, dict], smk: dict[str, dict]) -> list[str]:
    """Human-readable differences; empty when the two tools describe the same pipeline."""
    diffs = []
    for name in sorted(set(dvc) | set(smk)):
        if name not in smk:
            diffs.append(f"{name}: in dvc.yaml, not planned by Snakemake")
            continue
        if name not in dvc:
            diffs.append(f"{name}: planned by Snakemake, not in dvc.yaml")
            continue
        for field in ("cmd", "deps", "outs", "params"):
            if dvc[name][field] != smk[name][field]:
                diffs.append(f"{name}.{field}: dvc={dvc[name][field]!r} snakemake={smk[name][field]!r}")
    return diffs
