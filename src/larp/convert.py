"""Import the released LARP checkpoints (Hugging Face hub, ``hywang66/LARP-L-long-*``) into our weights files.

The official models are pushed with ``PyTorchModelHubMixin``: a hub repo holds ``model.safetensors`` (the
model's full ``state_dict``) and ``config.json`` (its constructor arguments). Our models were written with the
official parameter names (docs/model.md#weight-import), so the key map is a rename-free one-to-one map, but
it is *checked*, never assumed:

* every official key must be mapped, every key our model needs must be present, every shape must be equal
  (all problems are listed in one :class:`ConversionError`); dtypes are kept as stored;
* the official tokenizer also stores its three fixed sin-cos tables (``encoder_patch_pe``,
  ``decoder_latent_pe``, ``decoder_patch_query_embed``). Ours are recomputed, non-persistent buffers, so these
  entries are compared with our own tables (a check of our position-encoding code against the released model)
  and then dropped;
* the result is loaded strictly into our model (on the meta device: keys and shapes, no memory).

Output: one safetensors file in the pipeline's format (keys ``<module>.<key>``, module ``tokenizer`` or
``generator``; :func:`larp.models.weights_io.load_weights`) plus a JSON sidecar ``<out>.json`` with the source,
its sha256 and the verification notes. Only tensors are ever read: safetensors, or ``torch.load`` with
``weights_only=True`` (a pickle holding code is refused).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from larp.config import Params, TokenizerConfig
from larp.files import atomic_path, atomic_write_json, sha256_file
from larp.models.layers import sincos_1d, sincos_3d
from larp.models.weights_io import CheckpointError, UnsafeCheckpointError, load_state_dict_file

# kind -> (hub repo, module name in our weights file). ar-fp: the Kinetics-600 frame-prediction generator
# (no class table; an 8193-row token table whose last row is SEP; 1025 condition positions, 2048 in all)
RELEASED = {
    "tokenizer": ("hywang66/LARP-L-long-tokenizer", "tokenizer"),
    "ar": ("hywang66/LARP-L-long-AR", "generator"),
    "ar-fp": ("hywang66/LARP-L-long-AR-FP", "generator"),
}
KINDS = tuple(RELEASED)
# fixed sin-cos tables the official tokenizer stores as persistent buffers; ours recompute them
FIXED_TABLES = ("encoder_patch_pe", "decoder_latent_pe", "decoder_patch_query_embed")
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")  # looked up inside a directory, in this order
MAX_LISTED = 25  # keys listed per kind of problem in an error message


class ConversionError(ValueError):
    """A released checkpoint does not match our model (keys, shapes, fixed tables) or cannot be found."""


def check_kind(kind: str) -> str:
    if kind not in RELEASED:
        raise ConversionError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return kind


# --------------------------------------------------------------------------------------------------
# the key map


def build_model(kind: str, params: Params, device: str | torch.device = "meta") -> nn.Module:
    """Our model for ``kind`` (default: on the meta device, i.e. names and shapes without memory)."""
    from larp.config import frame_prediction_params
    from larp.models.generator import LARPGenerator
    from larp.models.tokenizer import LARPTokenizer

    check_kind(kind)
    with torch.device(device):
        if kind == "tokenizer":  # with its prior, whatever prior.enabled says: the released weights carry it
            return LARPTokenizer(params.tokenizer, dataclasses.replace(params.prior, enabled=True))
        if kind == "ar-fp":
            return LARPGenerator(frame_prediction_params(params).generator)
        return LARPGenerator(params.generator)


def official_key_map(kind: str, params: Params | None = None) -> dict[str, str | None]:
    """official key -> our key (same name), or None for a fixed sin-cos table that is verified and dropped.

    Built from our model's ``state_dict`` (persistent entries) plus the documented :data:`FIXED_TABLES`, which
    must be exactly our model's non-persistent buffers. ``params`` defaults to the ``paper`` preset.
    """
    return _key_map(build_model(kind, params if params is not None else paper_params()), kind)


def _key_map(model: nn.Module, kind: str) -> dict[str, str | None]:
    persistent = list(model.state_dict())
    fixed = [name for name, _ in model.named_buffers() if name not in set(persistent)]
    documented = list(FIXED_TABLES) if kind == "tokenizer" else []
    if sorted(fixed) != sorted(documented):
        raise AssertionError(f"{kind}: our non-persistent buffers {fixed} are not the documented ones")
    mapping: dict[str, str | None] = {key: key for key in persistent}
    mapping.update({name: None for name in documented})
    return mapping


def expected_shapes(kind: str, params: Params, model: nn.Module | None = None) -> dict[str, tuple[int, ...]]:
    """official key -> the shape our model expects (fixed tables included)."""
    model = model if model is not None else build_model(kind, params)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes.update({k: tuple(v.shape) for k, v in model.named_buffers() if k in FIXED_TABLES})
    return shapes


def fixed_tables(config: TokenizerConfig) -> dict[str, Tensor]:
    """Our fixed sin-cos tables (float32, shape (1, n, width)), as :class:`LARPTokenizer` registers them."""
    gt, gh = config.frames // config.patch_t, config.size // config.patch_hw
    patch = sincos_3d(config.width, gt, gh, gh)[None]
    return {
        "encoder_patch_pe": patch,
        "decoder_latent_pe": sincos_1d(config.width, torch.arange(config.num_tokens))[None],
        "decoder_patch_query_embed": patch.clone(),
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def table_tolerance(dtype: torch.dtype) -> float:
    """Max |official - ours| accepted for a fixed table stored in ``dtype`` (values lie in [-2, 2])."""
    if dtype in (torch.float32, torch.float64):
        return 1e-5
    return 2 * torch.finfo(dtype).eps  # one rounding step at |x| <= 2 in a half-precision format


# --------------------------------------------------------------------------------------------------
# conversion


def _convert(state: dict[str, Any], kind: str, params: Params) -> tuple[dict[str, Tensor], dict[str, Any]]:
    model = build_model(kind, params)  # meta device
    mapping = _key_map(model, kind)
    shapes = expected_shapes(kind, params, model)
    problems: list[str] = []

    def listed(keys: list[str]) -> str:  # long lists (a wrong preset) stay readable
        more = len(keys) - MAX_LISTED
        return str(keys[:MAX_LISTED]) + (f" ... and {more} more" if more > 0 else "")

    unmapped = sorted(set(state) - set(mapping))
    missing = sorted(set(mapping) - set(state))
    if unmapped:
        problems.append(f"{len(unmapped)} unmapped key(s) (not in our {kind} model): {listed(unmapped)}")
        prefixes = {k.split(".", 1)[0] for k in unmapped}
        if prefixes & {"module", "_orig_mod"}:
            problems.append("hint: keys carry a DDP/torch.compile prefix ('module.' / '_orig_mod.')")
        if not set(state) & set(mapping):
            other = "ar" if kind == "tokenizer" else "tokenizer"
            problems.append(f"hint: no key of the checkpoint belongs to a {kind} model; is it the {other}?")
    if kind.startswith("ar") and set(state) & set(mapping):  # the two generators share most keys
        fp = "cls_embedding.embedding_table.weight" not in state
        if fp != (kind == "ar-fp"):
            other = "ar-fp (frame prediction)" if fp else "ar (class-conditional)"
            problems.append(f"hint: the checkpoint {'lacks' if fp else 'has'} a class table; is it --kind {other}?")
    if missing:
        problems.append(f"{len(missing)} missing key(s) (our {kind} model needs them): {listed(missing)}")
    bad: list[str] = []
    for key in sorted(set(state) & set(mapping)):
        value = state[key]
        if not isinstance(value, Tensor):
            bad.append(f"{key}: expected a tensor, got {type(value).__name__}")
        elif not value.is_floating_point():
            bad.append(f"{key}: expected a floating-point tensor, got {value.dtype}")
        elif tuple(value.shape) != shapes[key]:
            bad.append(f"{key}: shape {tuple(value.shape)} in the checkpoint, {shapes[key]} in our model")
    problems += bad[:MAX_LISTED]
    if len(bad) > MAX_LISTED:
        problems.append(f"... and {len(bad) - MAX_LISTED} more bad tensors; are --params/--dataset the paper "
                        "preset (ucf101) the released models were trained with?")
    tables: dict[str, Any] = {}
    if kind == "tokenizer" and not problems:
        ours = fixed_tables(params.tokenizer)
        for name in FIXED_TABLES:
            stored = state[name].detach().cpu()
            diff = (stored.double() - ours[name].to(stored.dtype).double()).abs().max().item()
            tol = table_tolerance(stored.dtype)
            tables[name] = {"max_abs_diff": diff, "tolerance": tol, "dtype": _dtype_name(stored.dtype)}
            if not diff <= tol:  # also catches NaN
                problems.append(
                    f"{name}: the stored fixed sin-cos table differs from ours by {diff:.3g} (> {tol:.3g}); "
                    "our position encoding would not reproduce the released model"
                )
    if problems:
        listing = "\n  ".join(problems)
        raise ConversionError(f"released {kind} checkpoint does not match our model:\n  {listing}")
    converted = {mapping[k]: v.detach() for k, v in state.items() if mapping[k] is not None}
    # the final word: a strict load into our model (meta device: keys and shapes, no copy)
    model.load_state_dict(converted, strict=True, assign=True)
    dtypes = sorted({_dtype_name(v.dtype) for v in converted.values()})
    notes = {
        "keys_in_checkpoint": len(state),
        "keys_loaded": len(converted),
        "fixed_tables_checked_and_dropped": tables,
        "dtypes": dtypes,
        "parameters": sum(v.numel() for v in converted.values()),
    }
    return converted, notes


def convert_state_dict(state: dict[str, Any], kind: str, params: Params) -> dict[str, Tensor]:
    """Official state dict -> our model's state dict (strict; dtypes kept; fixed tables checked and dropped).

    Raises :class:`ConversionError` listing every unmapped key, missing key, wrong shape or mismatching
    fixed table at once.
    """
    return _convert(state, kind, params)[0]


def to_official(state: dict[str, Tensor], kind: str, params: Params) -> dict[str, Tensor]:
    """Inverse map: our state dict -> official names, fixed tables added (float32, as the official ones)."""
    mapping = official_key_map(kind, params)
    inverse = {ours: official for official, ours in mapping.items() if ours is not None}
    extra = sorted(set(state) - set(inverse))
    if extra or len(state) != len(inverse):
        missing = sorted(set(inverse) - set(state))
        raise ConversionError(f"{kind}: our state dict has unknown keys {extra} or misses {missing}")
    out = {inverse[k]: v for k, v in state.items()}
    if kind == "tokenizer":
        out.update(fixed_tables(params.tokenizer))
    return out


# --------------------------------------------------------------------------------------------------
# reading and fetching


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a released checkpoint: a ``.safetensors`` file, a torch file (``weights_only=True``; the
    state dict itself or under ``"model"``/``"state_dict"``), or a directory holding ``model.safetensors`` or
    ``pytorch_model.bin`` (a downloaded hub repo)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in CHECKPOINT_FILES if (path / name).is_file()]
        if not found:
            raise ConversionError(f"{path}: no {' or '.join(CHECKPOINT_FILES)} in this directory")
        path = found[0]
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint not found")
    try:
        return load_state_dict_file(path)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as e:
        raise ConversionError(str(e)) from e


def _download_instructions(repo: str, kind: str) -> str:
    return (
        f"download it on a machine with internet: `hf download {repo} --local-dir "
        f"data/released/{kind}` (or fetch https://huggingface.co/{repo}/resolve/main/model.safetensors into "
        f"data/released/{kind}/) and pass --src data/released/{kind}"
    )


def fetch_released(repo: str, kind: str) -> Path:
    """``model.safetensors`` of a hub repo, fetched with ``huggingface_hub`` into its cache.

    Offline (``LARP_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``):
    a clear error saying where to put the file."""
    from larp.weights import offline

    if offline() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise ConversionError(f"offline: cannot fetch {repo}; " + _download_instructions(repo, kind))
    from huggingface_hub import hf_hub_download  # lazily: only this path needs it

    try:
        return Path(hf_hub_download(repo_id=repo, filename="model.safetensors"))
    except Exception as e:  # network/auth errors of huggingface_hub have many types
        raise ConversionError(f"{repo}: download failed ({e}); " + _download_instructions(repo, kind)) from e


def resolve_source(src: str | Path, kind: str) -> Path:
    """A local file/directory, or ``hf:<repo id>`` (fetched)."""
    text = str(src)
    if text.startswith("hf:"):
        return fetch_released(text[3:], kind)
    path = Path(text)
    if not path.exists():
        repo = RELEASED[check_kind(kind)][0]
        raise ConversionError(f"{path}: not found; " + _download_instructions(repo, kind))
    return path


# --------------------------------------------------------------------------------------------------
# the stage


def paper_params() -> Params:
    """The ``paper`` preset: the configuration of the released models (``params.yaml``'s ucf101 preset)."""
    from larp.config import preset

    return preset("paper")


def import_weights(src: str | Path, kind: str, out: str | Path, params: Params) -> dict[str, Any]:
    """Convert a released checkpoint into our weights file ``out`` (atomic) plus ``<out>.json``; returns the
    sidecar's content."""
    check_kind(kind)
    path = resolve_source(src, kind)
    file = path
    if path.is_dir():
        file = next((path / n for n in CHECKPOINT_FILES if (path / n).is_file()), path)
    state = read_checkpoint(path)
    converted, notes = _convert(state, kind, params)
    module = RELEASED[kind][1]
    tensors = {f"{module}.{k}": v.contiguous() for k, v in converted.items()}
    info = {
        "kind": kind,
        "hub_repo": RELEASED[kind][0],
        "source": str(src),
        "source_file": str(file),
        "source_sha256": sha256_file(file),
        "module": module,
        "keys": len(tensors),
        "verification": notes,
    }
    config = file.parent / "config.json"
    if config.is_file():
        info["source_config"] = json.loads(config.read_text())
    from safetensors.torch import save_file

    out = Path(out)
    # one metadata entry with sorted keys, like save_weights (byte-identical reruns)
    meta = {"larp": json.dumps({"imported_from": info["hub_repo"], "source_sha256": info["source_sha256"]},
                               sort_keys=True)}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    atomic_write_json(out.with_name(out.name + ".json"), info)
    return info


def import_weights_stage(kind: str, src: str | Path, out: str | Path, params: Params) -> None:
    """``larp import-weights``: convert, then report what was verified."""
    info = import_weights(src, kind, out, params)
    v = info["verification"]
    checked = v["fixed_tables_checked_and_dropped"]
    tables = ", ".join(f"{k} max|diff| {t['max_abs_diff']:.2e}" for k, t in checked.items())
    print(f"larp import-weights: {info['source_file']} -> {out}: {info['keys']} tensors "
          f"({v['parameters']:,} values, dtypes {v['dtypes']}) loaded strictly into our {kind} model"
          + (f"; fixed sin-cos tables match ours ({tables})" if tables else ""))
