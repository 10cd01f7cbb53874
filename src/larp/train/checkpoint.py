"""Atomic, tensor-only training checkpoints with a checksum, fallback on corruption, and RNG state.

Layout of a run's checkpoint directory::

    step-000001000.pt          torch.save of a dict of tensors / primitives (loaded with weights_only=True)
    step-000001000.pt.sha256   its sha256, written before the checkpoint is renamed into place
    latest                     name of the newest checkpoint (a convenience pointer, written atomically)

The rename of ``step-*.pt`` is the commit point: a checkpoint file that exists has its checksum next to it.
Loading tries ``latest`` first, then the other checkpoints newest first; a file that is truncated or does not
match its checksum is skipped with a warning. A file that holds pickled objects other than tensors and
primitives (code) is refused outright with :class:`UnsafeCheckpointError`: that is not corruption to route
around but a file that must not be trusted.
"""

from __future__ import annotations

import json

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from larp.files import atomic_path, atomic_write_text, sha256_file

KEEP_LAST = 2
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (corrupt, truncated, missing its checksum)."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """A checkpoint holds pickled objects beyond tensors and primitives; it is never loaded."""


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


def torch_load_safe(path: Path) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``: tensors and primitives, never pickled code.

    Raises :class:`UnsafeCheckpointError` (also a ``ValueError``) when the file holds other pickled objects,
    :class:`CheckpointError` when it cannot be read.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: not a tensors-only file, it holds pickled objects other than tensors "
            f"and primitives (weights_only=True rejected it: {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a ``.safetensors`` file or a torch file (the dict itself, or under
    ``"model"`` / ``"state_dict"``), loaded safely; :class:`CheckpointError` for anything else."""
    path = Path(path)
    if path.suffix == ".safetensors":
        check_weights_file(path)
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
    obj = torch_load_safe(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or one under 'model'/'state_dict')")
    return obj


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


# ---- final weights ----


def save_weights(
    path: Path, modules: dict[str, torch.nn.Module], metadata: dict[str, str] | None = None
) -> None:
    """Write the modules' state dicts atomically as one safetensors file, keys ``<module>.<state key>``."""
    tensors = {
        f"{name}.{key}": value.detach().to("cpu").contiguous().clone()  # clone: untie shared storage
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    # one metadata entry with sorted keys: safetensors writes a metadata map in arbitrary order, which made
    # identical runs produce different bytes (and DVC rerun everything downstream)
    meta = {"larp": json.dumps(metadata, sort_keys=True)} if metadata else None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a safetensors file (read from its first bytes and header), or None."""
    if path.is_dir():
        return "is a directory, not a weights file"
    if not path.exists():
        return "weights file not found"
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):
            return "a torch.save (zip) file, not safetensors; convert released checkpoints with `larp import-weights`"
        if head[:1] == b"\x80":
            return "a Python pickle, not safetensors; it is never loaded (unpickling can run code)"
        if len(head) < 8:
            return f"truncated: {size} bytes, shorter than the 8-byte safetensors header length"
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            if n <= 100_000_000:  # a plausible header length: the file was cut short
                return f"truncated: {size} bytes, the header alone needs {8 + n}"
            if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
                return "a text file, not safetensors weights"
            return "not a safetensors file (impossible header length)"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return "not a safetensors file (its header is not valid JSON)"
    if size < 8 + n + end:
        return f"truncated: {size} of {8 + n + end} bytes"
    return None


def check_weights_file(path: Path) -> None:
    """Raise :class:`CheckpointError` (one line: the file and what is wrong) unless ``path`` looks like a
    complete safetensors file. Cheap (header only): the CLI runs it before any work."""
    path = Path(path)
    if problem := _safetensors_problem(path):
        raise CheckpointError(f"{path}: {problem}")


def load_weights(path: Path, module: torch.nn.Module, name: str, strict: bool = True) -> None:
    """Load the ``name`` module's entries of a :func:`save_weights` file into ``module``."""
    check_weights_file(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types; the header check above names most cases
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
    prefix = f"{name}."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        names = sorted({k.split(".", 1)[0] for k in tensors})
        raise ValueError(f"{path}: no weights for module {name!r}; the file holds {names}")
    module.load_state_dict(state, strict=strict)
