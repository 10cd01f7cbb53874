"""Atomic, tensor-only training checkpoints with a checksum, fallback on corruption, and RNG state.

Layout of a run's checkpoint directory::

    step-000001000.pt          torch.save of a dict of tensors / primitives (loaded with weights_only=True)
    step-000001000.pt.sha256   its sha256, written before the checkpoint is renamed into place
    latest                     name of the newest checkpoint (a convenience pointer, written atomically)

The rename of ``step-*.pt`` is the commit point: a checkpoint file that exists has its checksum next to it.
Loading tries ``latest`` first, then the other checkpoints newest first; a file that is truncated or does not
match its checksum is skipped with a warning. A file that holds pickled objects other than tensors and
primitives (code) is refused outright with :class:`UnsafeCheckpointError`: that is not corruption to route
around but a file that must not be trusted. Weights files (safetensors) and safe loading are
:mod:`larp.models.weights_io`.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from larp.files import atomic_path, atomic_write_text, sha256_file

# the weights files themselves (safetensors, tensor-only loading) live with the models
from larp.models.weights_io import (  # noqa: F401  (re-exported: larp.train.checkpoint.load_weights etc.)
    CheckpointError,
    UnsafeCheckpointError,
    check_weights_file,
    load_state_dict_file,
    load_weights,
    save_weights,
    torch_load_safe,
)

KEEP_LAST = 2
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every committed checkpoint in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = KEEP_LAST) -> Path:
    """Write ``state`` as ``step-<step>.pt`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        # The checksum goes in first, so a committed checkpoint always has one.
        atomic_write_text(path.with_name(path.name + ".sha256"), sha256_file(tmp) + "\n")
    atomic_write_text(directory / "latest", path.name + "\n")
    for _, old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def load_checkpoint_file(path: Path, verify: bool = True) -> dict[str, Any]:
    """Load one checkpoint on the CPU with ``weights_only=True`` (tensors and primitives only).

    Raises :class:`UnsafeCheckpointError` for pickled code and :class:`CheckpointError` for a file that is
    missing its checksum (when ``verify``), does not match it, or cannot be read.
    """
    path = Path(path)
    if verify:
        sidecar = path.with_name(path.name + ".sha256")
        if not sidecar.is_file():
            raise CheckpointError(f"{path}: checksum file {sidecar.name} is missing")
        expected = sidecar.read_text().strip()
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 {actual} does not match {sidecar.name} ({expected})")
    state = torch_load_safe(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(state).__name__}")
    return state


def load_latest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest usable checkpoint in ``directory`` (``latest`` first), or None when there is none.

    Corrupt candidates are skipped with a warning. If checkpoints exist but none is usable, raise
    :class:`CheckpointError` rather than silently starting over.
    """
    candidates = [p for _, p in list_checkpoints(directory)]
    pointer = directory / "latest"
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    problems = []
    for path in candidates:
        try:
            return path, load_checkpoint_file(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            warnings.warn(
                f"skipping checkpoint: {e}; falling back to an older one", RuntimeWarning, stacklevel=2
            )
            problems.append(str(e))
    if problems:
        raise CheckpointError(f"{directory}: no usable checkpoint: " + "; ".join(problems))
    return None


# ---- RNG state as tensors and primitives (so weights_only loading accepts it) ----


def capture_rng_state() -> dict[str, Any]:
    """This process's torch (CPU and every CUDA device), numpy and python ``random`` generator states."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(gauss),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
