"""Ablation report: a real toy DVC repo with two experiments -> rows -> Markdown table + PNG."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from larp.report import (
    ReportError,
    ablation_table,
    experiments_from_dvc,
    experiments_from_files,
    main_report,
    render_ablation,
)

# The stage: gFVD/rFVD result files computed from prior.alpha, shaped like evaluate.py's (value, ci95,
# provenance.params, detector info; psnr/ssim/lpips for rFVD).
STAGE = (
    "import json, os, yaml; p = yaml.safe_load(open('params.yaml')); a = p['prior']['alpha']; "
    "os.makedirs('results', exist_ok=True); "
    "det = {'detector': 'toy-i3d', 'detector_sha256': 'x', 'comparable_to_papers': False}; "
    "prov = {'params': p, 'git': {'commit': None, 'dirty': None}}; "
    "json.dump({'metric': 'gFVD', 'value': 100 + 1000 * a * a, "
    "'ci95': [90 + 1000 * a * a, 120 + 1000 * a * a], "
    "'n_generated': 16, 'detector': det, 'comparable_to_papers': False, 'provenance': prov}, "
    "open('results/fvd_embedded.json', 'w')); "
    "json.dump({'metric': 'rFVD', 'value': 50 + 10 * a, 'ci95': [45 + 10 * a, 60 + 10 * a], 'psnr': 20 + a, "
    "'ssim': 0.5, 'lpips': None, 'detector': det, 'comparable_to_papers': False, 'provenance': prov}, "
    "open('results/rfvd_embedded.json', 'w'))"
)
BASE, ALPHAS = 0.06, (0.1, 0.3)


def gfvd(a: float) -> float:
    return 100 + 1000 * a * a


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _run(repo: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dvc(repo: Path, *args: str) -> str:
    return _run(repo, sys.executable, "-m", "dvc", *args)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    _run(repo, "git", "init", "-q")
    _dvc(repo, "init", "-q")
    with open(repo / ".dvc" / "config", "a") as f:  # what `dvc config core.analytics false` writes
        f.write("[core]\n    analytics = false\n")
    (repo / "params.yaml").write_text("dataset: embedded\nprior:\n  alpha: 0.06\n  n_rounds: 2\n")
    (repo / "stage.py").write_text(STAGE + "\n")  # keeps the cmd free of shell quoting
    (repo / "dvc.yaml").write_text(
        "stages:\n  fvd:\n"
        f"    cmd: {json.dumps(shlex.quote(sys.executable) + ' stage.py')}\n"
        "    deps: [stage.py]\n    params: [prior]\n"
        "    metrics:\n"
        "      - results/fvd_embedded.json: {cache: false}\n"
        "      - results/rfvd_embedded.json: {cache: false}\n")
    _dvc(repo, "repro")  # the baseline commit holds its own results, as in the project
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "baseline")
    for a in ALPHAS:
        _dvc(repo, "exp", "run", "-S", f"prior.alpha={a}")
    # back to the baseline, then queue one that never runs: not a row, though its commit holds results
    _run(repo, "git", "checkout", "-q", "--", ".")
    _dvc(repo, "exp", "run", "--queue", "-q", "-S", "prior.alpha=0.7")
    return repo


@pytest.fixture(scope="module")
def rows(repo: Path) -> list[dict]:
    return experiments_from_dvc(repo, "embedded", "prior.alpha")


def test_experiments_from_dvc_reads_both_experiments(repo: Path, rows: list[dict]):
    # the workspace equals the last experiment and the queued one has not run: baseline + 2 experiments
    expected = [("baseline", BASE), *(("experiment", a) for a in ALPHAS)]
    assert sorted((r["kind"], r["value"]) for r in rows) == expected
    head = _run(repo, "git", "rev-parse", "HEAD").strip()
    assert [r["rev"] for r in rows if r["kind"] == "baseline"] == [head]
    names = {ref.rsplit("/", 1)[-1] for ref in _run(repo, "git", "for-each-ref", "--format=%(refname)",
                                                     "refs/exps").split() if ref.count("/") >= 4}
    for r in rows:
        a = r["value"]
        assert r["kind"] == "baseline" or r["name"] in names
        assert _run(repo, "git", "cat-file", "-t", r["rev"]).strip() == "commit"
        assert r["gfvd"] == pytest.approx(gfvd(a))
        assert (r["gfvd_ci_low"], r["gfvd_ci_high"]) == pytest.approx((gfvd(a) - 10, gfvd(a) + 20))
        assert r["rfvd"] == pytest.approx(50 + 10 * a)
        assert (r["rfvd_ci_low"], r["rfvd_ci_high"]) == pytest.approx((45 + 10 * a, 60 + 10 * a))
        assert r["psnr"] == pytest.approx(20 + a) and r["ssim"] == 0.5 and r["lpips"] is None
        assert r["n_generated"] == 16 and r["detector"] == "toy-i3d" and r["comparable_to_papers"] is False


def test_workspace_with_other_results_is_a_row_with_a_note(repo: Path, tmp_path: Path):
    copy = tmp_path / "clone"
    shutil.copytree(repo, copy)
    fvd = json.loads((copy / "results/fvd_embedded.json").read_text())
    fvd["value"] = 999.0  # hand-edited results that no experiment has
    fvd["provenance"]["params"]["prior"]["alpha"] = 0.5
    (copy / "results/fvd_embedded.json").write_text(json.dumps(fvd))
    (copy / "results/rfvd_embedded.json").unlink()
    rows = experiments_from_dvc(copy, "embedded")
    ws = [r for r in rows if r["kind"] == "workspace"]
    assert len(rows) == 4 and len(ws) == 1
    assert ws[0]["value"] == 0.5 and ws[0]["gfvd"] == 999.0 and ws[0]["rfvd"] is None
    assert f"params.yaml says {BASE}" in ws[0]["note"]


def test_render_table_and_png(rows: list[dict], tmp_path: Path):
    df = ablation_table(rows, "prior.alpha", ["gfvd", "rfvd", "psnr"])
    assert df["prior.alpha"].tolist() == [BASE, *ALPHAS]
    assert {"gfvd_ci_low", "rfvd_ci_high", "psnr", "name", "rev"} <= set(df.columns)
    md, png, page = (tmp_path / "out" / f"abl.{ext}" for ext in ("md", "png", "html"))
    render_ablation(df, "prior.alpha", md, png, "alpha ablation", page)
    text = md.read_text()
    # the same table and the plot itself inline in one offline page
    html = page.read_text()
    assert html.count("<tr>") == 1 + len(rows) and "Not comparable" in html and "<script" not in html
    assert f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in html
    assert f"{gfvd(ALPHAS[1]):.1f} [{gfvd(ALPHAS[1]) - 10:.1f}, {gfvd(ALPHAS[1]) + 20:.1f}]" in html
    for r in rows:
        a = r["value"]
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {a} |"))
        assert f"{gfvd(a):.1f} [{gfvd(a) - 10:.1f}, {gfvd(a) + 20:.1f}]" in line
        assert f"{50 + 10 * a:.1f} [{45 + 10 * a:.1f}, {60 + 10 * a:.1f}]" in line
        assert f"{20 + a:.2f}" in line and r["name"] in line and r["rev"][:7] in line
    assert "toy-i3d" in text and "Not comparable" in text and "![alpha ablation](abl.png)" in text
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200 and len(data) > 5000


def test_cli_from_dvc_and_from_files(repo: Path, rows: list[dict], tmp_path: Path, capsys):
    assert main_report(["ablation", "--dataset", "embedded", "--param", "prior.alpha",
                        "--repo", str(repo), "--out", str(tmp_path / "dvc" / "ablation_prior_alpha")]) == 0
    assert (tmp_path / "dvc/ablation_prior_alpha.png").stat().st_size > 0
    # the same runs as plain files (one directory per run), no DVC involved
    files = []
    for r in rows:
        d = tmp_path / "runs" / f"alpha{r['value']}" / "results"
        d.mkdir(parents=True)
        for kind in ("fvd", "rfvd"):
            committed = _run(repo, "git", "show", f"{r['rev']}:results/{kind}_embedded.json")
            (d / f"{kind}_embedded.json").write_text(committed)
            files.append(d / f"{kind}_embedded.json")
    from_files = experiments_from_files(files, "prior.alpha")
    assert sorted((r["value"], r["gfvd"], r["psnr"], r["name"]) for r in from_files) == [
        (a, pytest.approx(gfvd(a)), pytest.approx(20 + a), f"alpha{a}") for a in (BASE, *ALPHAS)]
    out = tmp_path / "files" / "abl"
    argv = ["ablation", "--dataset", "embedded", "--out", str(out), "--results", *map(str, files)]
    assert main_report(argv) == 0
    assert (tmp_path / "files/abl.md").read_text().count("| 0.") == 3
    assert (tmp_path / "files/abl.html").read_text().count("<tr>") == 4
    assert f"{gfvd(0.3):.1f}" in capsys.readouterr().out


def test_bad_inputs_are_named(tmp_path: Path):
    bad = tmp_path / "fvd_embedded.json"
    bad.write_text(json.dumps({"metric": "gFVD", "value": 1.0, "ci95": None, "provenance": {"params": {}}}))
    with pytest.raises(ReportError, match="fvd_embedded.json: no provenance.params.prior.alpha"):
        experiments_from_files([bad], "prior.alpha")
    with pytest.raises(ReportError, match="not found"):
        experiments_from_files([tmp_path / "missing.json"])
    with pytest.raises(ReportError, match="unknown metrics"):
        ablation_table([{"param": "prior.alpha", "value": 0.1, "name": "x"}], "prior.alpha", ["fid"])
    with pytest.raises(ReportError, match="dvc exp show --json` failed"):
        experiments_from_dvc(tmp_path, "embedded")  # not a DVC repo
    assert main_report(["ablation", "--dataset", "embedded", "--out", str(tmp_path / "x"),
                        "--results", str(bad)]) == 2
