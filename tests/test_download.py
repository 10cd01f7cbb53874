"""larp.download against a local server: resume, restart, retries, checksums (sha256 and md5)."""

from __future__ import annotations

import hashlib
import os

import pytest

from larp.download import ChecksumError, DownloadError, download_file

PAYLOAD = os.urandom(300_000)  # > several read chunks' worth is not needed; bytes just need to be distinct
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def served(http_server):
    (http_server.root / "blob.bin").write_bytes(PAYLOAD)
    return http_server


def test_download_verifies_and_renames(served, tmp_path):
    dest = tmp_path / "out" / "blob.bin"
    assert download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("blob.bin.part").exists()
    # present and valid: no second request
    download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False)
    assert len(served.requests) == 1


def test_interrupted_transfer_resumes_with_range(served, tmp_path):
    served.cut_once["blob.bin"] = 100_000
    dest = tmp_path / "blob.bin"
    download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in served.requests] == [None, "bytes=100000-"]


def test_existing_part_resumes_and_server_ignoring_range_restarts(served, tmp_path):
    dest = tmp_path / "blob.bin"
    part = tmp_path / "blob.bin.part"
    part.write_bytes(PAYLOAD[:5000])
    download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False)
    assert served.requests[-1]["range"] == "bytes=5000-" and dest.read_bytes() == PAYLOAD

    dest.unlink()
    part.write_bytes(b"x" * 5000)  # garbage prefix: a 200 answer must replace it, not append to it
    served.ignore_range = True
    download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_gets_416_and_finishes(served, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(PAYLOAD)
    download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert served.requests == [{"path": "blob.bin", "range": f"bytes={len(PAYLOAD)}-"}]


def test_corrupted_download_fails_checksum_and_is_kept_aside(served, tmp_path):
    (served.root / "blob.bin").write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))  # one flipped bit
    dest = tmp_path / "blob.bin"
    with pytest.raises(ChecksumError) as err:
        download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False)
    bad_sha = hashlib.sha256((served.root / "blob.bin").read_bytes()).hexdigest()
    bad = tmp_path / f"blob.bin.bad-{bad_sha[:8]}"
    assert err.value.bad_path == bad and bad.is_file()
    msg = str(err.value)
    assert SHA in msg and bad_sha in msg and str(bad) in msg
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()
    assert isinstance(err.value, DownloadError)


def test_md5_verification(served, tmp_path):
    download_file(served.url_for("blob.bin"), tmp_path / "a.bin", sha256=None, md5=MD5, progress=False)
    with pytest.raises(ChecksumError, match="md5"):
        download_file(served.url_for("blob.bin"), tmp_path / "b.bin", sha256=None, md5="0" * 32,
                      progress=False)
    assert list(tmp_path.glob("b.bin.bad-*"))


def test_existing_bad_dest_is_set_aside_and_redownloaded(served, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"stale")
    download_file(served.url_for("blob.bin"), dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    stale = hashlib.sha256(b"stale").hexdigest()[:8]
    assert (tmp_path / f"blob.bin.bad-{stale}").read_bytes() == b"stale"


def test_http_errors(served, tmp_path):
    with pytest.raises(DownloadError, match="404"):  # not retried
        download_file(served.url_for("nope.bin"), tmp_path / "nope.bin", sha256=None, progress=False)
    assert len(served.requests) == 1
    served.fail["blob.bin"] = 503  # retried, then given up
    with pytest.raises(DownloadError, match="giving up after 2 retries"):
        download_file(served.url_for("blob.bin"), tmp_path / "x.bin", sha256=SHA, retries=2, progress=False,
                      backoff=0)
    assert len(served.requests) == 1 + 3
    with pytest.raises(ValueError, match="http"):
        download_file("ftp://127.0.0.1/x", tmp_path / "x.bin", sha256=None)
