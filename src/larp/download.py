"""Resumable, retried, checksum-verified HTTP(S) downloads (stdlib urllib only).

The file grows in ``<dest>.part``; a later call resumes it with an HTTP ``Range`` request. Only a verified
file is renamed onto ``dest``. A file that fails its checksum is never deleted silently: it is moved to
``<dest>.bad-<first 8 hex digits of its sha256>`` and :class:`ChecksumError` says where it went.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from larp.files import fsync_dir, sha256_file

CHUNK = 1 << 20  # bytes per read; also the granularity at which the progress bar moves
USER_AGENT = "larp-download/0.1 (+urllib)"
# Failures worth another try: connection drops, timeouts, truncated bodies, server-side (5xx) errors.
_TRANSIENT = (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException)


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or with a non-retryable HTTP status)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the pinned digest; the bad file is kept at ``bad_path``."""

    def __init__(self, message: str, bad_path: Path | None = None):
        super().__init__(message)
        self.bad_path = bad_path


class _Truncated(Exception):
    """The server closed the connection before sending all it announced (retried with Range)."""


def file_digests(path: Path) -> dict[str, str]:
    """sha256 and md5 of ``path`` in one read (md5 only because UCF101.rar's known digest is an md5)."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _digests_and_problems(path: Path, sha256: str | None,
                          md5: str | None) -> tuple[dict[str, str], list[str]]:
    digests = file_digests(path) if md5 is not None else {"sha256": sha256_file(path)}
    problems = [f"{name} is {digests[name]}, expected {want}"
                for name, want in (("sha256", sha256), ("md5", md5))
                if want is not None and digests[name] != want.lower()]
    return digests, problems


def verify_file(path: Path, *, sha256: str | None, md5: str | None = None) -> dict[str, str]:
    """Digests of ``path``; raises :class:`ChecksumError` (file left in place) if a given digest differs."""
    digests, problems = _digests_and_problems(path, sha256, md5)
    if problems:
        raise ChecksumError(f"{path}: {'; '.join(problems)}")
    return digests


def _set_aside(path: Path, sha256: str) -> Path:
    bad = path.with_name(path.name.removesuffix(".part") + f".bad-{sha256[:8]}")
    os.replace(path, bad)
    return bad


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One HTTP request that appends to ``part`` (resuming if it has bytes). Raises on any failure."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # Range not satisfiable: either the .part is already complete, or it is longer than the file.
            total = _total_from_content_range(e.headers.get("Content-Range"))
            e.close()
            if total is not None and total == have:
                return
            part.unlink()  # inconsistent with the server's file: start again from byte 0
            raise _Truncated(f"server refused Range bytes={have}- (size {total}); restarting from 0") from e
        raise
    with resp:
        status = resp.status
        if have and status == 200:  # server ignores Range: it sends the whole file, so start over
            have = 0
        elif have and status == 206:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                part.unlink()
                raise _Truncated(f"server answered Range bytes={have}- with Content-Range "
                                 f"{resp.headers.get('Content-Range')!r}; restarting from 0")
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = have + expected if expected is not None else None
        got = 0
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress, file=sys.stderr, leave=False)
        with bar, open(part, "ab" if have else "wb") as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except http.client.IncompleteRead as e:  # keep what arrived, then resume from there
                    f.write(e.partial)
                    got += len(e.partial)
                    raise _Truncated(f"connection closed after {have + got} bytes") from e
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and got < expected:
            raise _Truncated(f"got {got} of {expected} bytes")


def download_file(url: str, dest: Path, *, sha256: str | None, retries: int = 5, timeout: float = 60,
                  progress: bool = True, md5: str | None = None, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``; verified by ``sha256`` and/or ``md5`` when given.

    ``sha256=None`` skips verification but prints the digest so it can be pinned. ``md5`` exists only for
    archives whose one published digest is an md5 (UCF101.rar). ``retries`` counts consecutive failed
    attempts that made no progress; the wait between attempts grows as ``backoff * 2**k`` seconds (max 60).
    An existing ``dest`` that verifies (or any existing ``dest`` when no digest is given) is returned without
    network access; one that fails is set aside like a bad download and fetched again.
    """
    dest = Path(dest)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"download_file: url must be http:// or https://, got {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and sha256 is None and md5 is None:
        return dest  # nothing to verify against: trust it rather than re-hash gigabytes
    if dest.exists():
        try:
            verify_file(dest, sha256=sha256, md5=md5)
            return dest
        except ChecksumError as e:
            bad = _set_aside(dest, sha256_file(dest))
            print(f"[download] existing {dest} failed verification ({e}); moved to {bad}, downloading again",
                  file=sys.stderr)

    part = dest.with_name(dest.name + ".part")
    failures, last_size = 0, (part.stat().st_size if part.exists() else 0)
    while True:
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            e.close()  # it holds the response's socket
            if not (e.code >= 500 or e.code in (408, 429)):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            err: Exception = e
        except (_Truncated, *_TRANSIENT) as e:
            err = e
        size = part.stat().st_size if part.exists() else 0
        failures = 0 if size > last_size else failures + 1  # an attempt that made progress is not a failure
        last_size = size
        if failures > retries:
            raise DownloadError(f"{url}: giving up after {retries} retries without progress ({err}); "
                                f"{size} bytes kept in {part}, a re-run resumes from there") from err
        wait = min(60.0, backoff * 2 ** failures)
        print(f"[download] {url}: {err}; retrying in {wait:.1f}s (resume at byte {size})", file=sys.stderr)
        time.sleep(wait)

    digests, problems = _digests_and_problems(part, sha256, md5)
    if problems:
        bad = _set_aside(part, digests["sha256"])
        raise ChecksumError(f"{url}: downloaded file failed verification: {'; '.join(problems)}. "
                            f"The file was kept at {bad} (delete it, then re-run to download again).", bad)
    if sha256 is None:
        print(f"[download] {dest.name}: sha256 {digests['sha256']} (not pinned, unverified)", file=sys.stderr)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest

