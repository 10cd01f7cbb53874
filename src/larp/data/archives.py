"""Safe archive extraction: every member must land inside the target directory.

Members with absolute paths, ``..`` components or links (symbolic or hard) are refused, naming the member,
before anything reaches ``target`` (tar members also when they are devices or fifos). Extraction goes to a temporary directory next to ``target``; the extracted tree
is checked again (no links, nothing outside) and only then renamed to ``target``, so a failure never leaves
a half-extracted ``target`` behind. ``target`` must not exist yet, or be empty.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from zlib import error as zlib_error

from tqdm import tqdm


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target, or is a link."""


def check_member_name(archive: Path, name: str) -> None:
    """Refuse absolute paths, drive letters and ``..``; backslashes count as separators (DOS archives)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' (would escape the target)")


def check_tree(archive: Path, root: Path) -> None:
    """After extraction: no symlinks, no hard-linked files, every path resolves inside ``root``."""
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeArchiveError(f"{archive}: member {str(rel)!r} is a symlink to {os.readlink(p)!r}")
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                raise UnsafeArchiveError(f"{archive}: member {str(rel)!r} is a hard link")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise UnsafeArchiveError(f"{archive}: member {str(rel)!r} is not a regular file or directory")
            if not p.resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"{archive}: member {str(rel)!r} resolves outside the target")


def _staging(archive: Path, target: Path) -> Path:
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"extraction target {target} exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))


def _finish(archive: Path, tmp: Path, target: Path) -> Path:
    check_tree(archive, tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp made it 0700; the target should get the usual directory mode
    if target.exists():
        target.rmdir()  # empty, checked in _staging
    os.replace(tmp, target)
    return target


def extract_zip(archive: str | Path, target: str | Path, progress: bool = False) -> Path:
    """Extract a zip into ``target`` (created); returns ``target``."""
    archive, target = Path(archive), Path(target)
    tmp = _staging(archive, target)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                check_member_name(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    link = zf.read(info).decode(errors="replace")
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink to {link!r}")
            for info in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=not progress):
                zf.extract(info, tmp)
        return _finish(archive, tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_tar_member(archive: Path, m: tarfile.TarInfo) -> None:
    check_member_name(archive, m.name)
    if m.issym() or m.islnk():
        kind = "symlink" if m.issym() else "hard link"
        raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a {kind} to {m.linkname!r}")
    if not (m.isreg() or m.isdir()):
        raise UnsafeArchiveError(f"{archive}: member {m.name!r} is not a regular file or directory "
                                 "(device, fifo or other special file)")


def extract_tar(archive: str | Path, target: str | Path, progress: bool = False) -> Path:
    """Extract a tar (plain, .gz, .bz2 or .xz) into ``target`` (created); returns ``target``.

    One streaming pass (a multi-GB .tar.gz is decompressed once): each member is checked just before it is
    written, and the first unsafe one (absolute path, ``..``, symlink, hard link, device, fifo) aborts the
    extraction, naming the member; the staging directory is then removed, so ``target`` never sees it.
    A truncated or corrupt archive raises :class:`tarfile.TarError` naming the archive.
    """
    archive, target = Path(archive), Path(target)
    tmp = _staging(archive, target)
    try:
        with tarfile.open(archive, "r|*") as tf, \
                tqdm(desc=f"extracting {archive.name}", unit="file", disable=not progress) as bar:
            for m in tf:
                _check_tar_member(archive, m)
                # filter="data" (Python >= 3.11.4) re-checks the same and drops odd mode bits
                tf.extract(m, tmp, set_attrs=m.isreg(), **({"filter": "data"}
                                                            if hasattr(tarfile, "data_filter") else {}))
                bar.update(1)
        return _finish(archive, tmp, target)
    except (EOFError, gzip.BadGzipFile, tarfile.TarError, zlib_error) as e:
        raise tarfile.ReadError(f"{archive}: not a complete, readable tar archive ({type(e).__name__}: "
                                f"{e}); delete it and download it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def require_unar() -> tuple[str, str]:
    """Paths of ``unar`` and ``lsar`` (one package); a clear error saying how to install them if missing."""
    paths = tuple(shutil.which(tool) for tool in ("unar", "lsar"))
    if None in paths:
        raise RuntimeError("'unar'/'lsar' are not installed; they are needed to extract RAR archives "
                           "(Debian/Ubuntu: apt-get install unar; macOS: brew install unar)")
    return paths


def list_with_lsar(archive: Path) -> list[dict]:
    """Member records from ``lsar -j`` (same package as unar): names and link flags, before extracting."""
    res = subprocess.run([require_unar()[1], "-j", str(archive)], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        listing = json.loads(res.stdout)
    except json.JSONDecodeError:
        listing = {}
    if res.returncode != 0 or listing.get("lsarError") or "lsarContents" not in listing:
        raise RuntimeError(f"{archive} is not a readable archive (lsar exit {res.returncode}, "
                           f"lsarError {listing.get('lsarError')}): {res.stderr.strip()[-500:]}")
    return listing["lsarContents"]


def extract_rar(archive: str | Path, target: str | Path, progress: bool = False) -> Path:
    """Extract a RAR (or anything else ``unar`` reads) into ``target`` with ``unar -D -nr``.

    unar itself rewrites ``..`` to ``__Parent__`` and creates symlinks as stored, so members are listed with
    ``lsar -j`` and refused first, and the extracted tree is checked again before it is moved into place.
    """
    archive, target = Path(archive), Path(target)
    unar = require_unar()[0]
    members = list_with_lsar(archive)
    for member in members:
        name = member.get("XADFileName", "")
        check_member_name(archive, name)
        if member.get("XADIsLink") or member.get("XADIsHardLink"):
            raise UnsafeArchiveError(f"{archive}: member {name!r} is a link "
                                     f"(to {member.get('XADLinkDestination', '?')!r})")
    tmp = _staging(archive, target)
    try:
        # -D: no wrapper folder for multi-root archives; -nr: leave nested archives alone; stdin closed so an
        # encrypted archive fails instead of waiting for a password. Not -q: unar prints one "... OK." line
        # per member, which drives the progress bar.
        cmd = [unar, "-D", "-nr", "-o", str(tmp), str(archive)]
        tail: list[str] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, errors="replace") as proc, \
                tqdm(total=len(members), desc=f"extracting {archive.name}", unit="file",
                     disable=not progress) as bar:
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-20:]
                if line.rstrip().endswith("OK."):
                    bar.update(1)
        if proc.returncode != 0:
            raise RuntimeError(f"unar failed on {archive} (exit {proc.returncode}): " + "\n".join(tail))
        return _finish(archive, tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
