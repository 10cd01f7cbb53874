"""What every result file records: code revision, versions, parameters, input hashes."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("larp", "torch", "torchvision", "numpy", "scipy", "av", "pandas")


def git_revision(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit hash and whether the work tree had uncommitted changes (``None`` outside a git checkout)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(params: Any = None, inputs: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """A provenance record: git revision, versions, host, time, parameters and input hashes."""
    import dataclasses

    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    return {
        "git": git_revision(),
        "versions": versions(),
        "host": platform.node(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "inputs": inputs or {},
        **extra,
    }
