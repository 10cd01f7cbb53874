"""Pretrained files the project needs from the internet (I3D, VGG16, LPIPS heads): pinned URL + sha256.

Files live in a cache directory (``$LARP_CACHE``, default ``~/.cache/larp``). A file already there is
verified before use. Offline (``LARP_OFFLINE=1``) or when the download fails, the error says exactly
which file to put where, so users on clusters without internet can copy it by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from larp.files import sha256_file


class WeightsUnavailable(RuntimeError):
    """A pretrained file is missing and cannot be downloaded here."""


@dataclass(frozen=True)
class WeightFile:
    filename: str  # name inside the cache directory
    url: str  # published location
    sha256: str  # pinned content hash
    description: str  # what it is, for error messages


def cache_dir() -> Path:
    return Path(os.environ.get("LARP_CACHE", Path.home() / ".cache" / "larp"))


def offline() -> bool:
    return os.environ.get("LARP_OFFLINE", "0") not in ("", "0", "false", "False")


def _instructions(w: WeightFile, path: Path) -> str:
    return (f"{w.description} is needed at {path} (sha256 {w.sha256}). Download it from {w.url} on a machine "
            f"with internet and copy it there, or set LARP_CACHE to the directory that holds {w.filename}.")


def ensure_weights(w: WeightFile, directory: str | Path | None = None) -> Path:
    """Return the verified local path of ``w``, downloading it when allowed."""
    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / w.filename
    if path.is_file():
        digest = sha256_file(path)
        if digest != w.sha256:
            raise WeightsUnavailable(
                f"{path} has sha256 {digest}, expected {w.sha256}: the file is corrupt or a different version. "
                + _instructions(w, path))
        return path
    if offline():
        raise WeightsUnavailable("offline (LARP_OFFLINE=1): " + _instructions(w, path))
    from larp.download import DownloadError, download_file

    try:
        return download_file(w.url, path, sha256=w.sha256)
    except (DownloadError, OSError) as e:
        raise WeightsUnavailable(f"download of {w.url} failed ({e}). " + _instructions(w, path)) from e
