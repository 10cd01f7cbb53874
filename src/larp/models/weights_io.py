"""Model weights on disk: safetensors files of state dicts, and tensor-only loading of anything else.

:func:`save_weights` writes one safetensors file of several modules (keys ``<module>.<state key>``),
:func:`load_weights` loads one module's entries back; :func:`check_weights_file` reads only the header, so
a command can refuse a truncated or foreign file before any work. Torch files are loaded with
``weights_only=True`` only (:func:`torch_load_safe`): a file that holds pickled code is refused with
:class:`UnsafeCheckpointError`, never run. Training checkpoints (resume state) build on this in
:mod:`larp.train.checkpoint`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from larp.files import atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (corrupt, truncated, missing its checksum)."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """A checkpoint holds pickled objects beyond tensors and primitives; it is never loaded."""


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
