"""Ablation reports: one parameter (e.g. ``prior.alpha``) against gFVD / rFVD, as a Markdown table, a PNG and
an offline HTML page; and the ``larp report`` command line (``run``: the run page of :mod:`larp.run_report`).

Rows come from DVC experiments (``dvc exp show --json`` lists them; the full result JSON of each one is read
from its git commit, because ``exp show`` drops list values such as ``ci95``) or from plain result files
(``results/fvd_<ds>.json`` + ``results/rfvd_<ds>.json``), whose ``provenance.params`` give the parameter
value.

A row is a flat dict::

    name, rev, kind ("workspace" | "baseline" | "experiment" | "files"), param, value (the parameter's),
    gfvd, gfvd_ci_low, gfvd_ci_high, n_generated, rfvd, rfvd_ci_low, rfvd_ci_high, psnr, ssim, lpips,
    detector, comparable_to_papers, note

Metrics a result file lacks are None. The PNG is drawn with matplotlib's Agg canvas: no display, no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from larp import html_page
from larp.config import DATASETS, ParamsError, read_params_file
from larp.files import atomic_path, atomic_write_text, read_json_object

METRICS = ("gfvd", "rfvd", "psnr", "ssim", "lpips", "n_generated")
_CI_METRICS = ("gfvd", "rfvd")  # these carry a bootstrap 95% CI (<metric>_ci_low / _ci_high)
_LABELS = {"gfvd": "gFVD", "rfvd": "rFVD", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS",
           "n_generated": "n generated"}


class ReportError(ValueError):
    """Experiments or result files cannot be read into an ablation table; the message says which and why."""


# ------------------------------------------------------------------------------------------ result files


def _dotted(tree: Any, key: str) -> tuple[bool, Any]:
    """(found, value) of ``a.b.c`` in nested dicts."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _ci(result: dict, where: str) -> tuple[float | None, float | None]:
    ci = result.get("ci95")
    if ci is None:
        return None, None
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        raise ReportError(f"{where}: 'ci95' must be [low, high] or null, got {ci!r}")
    return float(ci[0]), float(ci[1])


def _detector(result: dict) -> str | None:
    det = result.get("detector")
    if isinstance(det, dict):  # fvd.py and rfvd.py write Detector.info(): {"detector": name, ...}
        return det.get("detector") or det.get("name")
    return det


def _metrics_of(fvd: dict | None, rfvd: dict | None, where: str) -> dict[str, Any]:
    """The row's metric fields from the gFVD and rFVD result dicts (either may be None)."""
    row: dict[str, Any] = {k: None for k in ("gfvd", "gfvd_ci_low", "gfvd_ci_high", "n_generated", "rfvd",
                                             "rfvd_ci_low", "rfvd_ci_high", "psnr", "ssim", "lpips",
                                             "detector", "comparable_to_papers")}
    comparable = []  # a row is comparable to the papers only if all its results are
    for kind, res in (("gfvd", fvd), ("rfvd", rfvd)):
        if res is None:
            continue
        if not isinstance(res.get("value"), (int, float)):
            raise ReportError(f"{where}: the {kind} result has no numeric 'value' (got {res.get('value')!r})")
        row[kind] = float(res["value"])
        row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = _ci(res, f"{where} ({kind})")
        row["detector"] = row["detector"] or _detector(res)
        if res.get("comparable_to_papers") is not None:
            comparable.append(bool(res["comparable_to_papers"]))
    row["comparable_to_papers"] = all(comparable) if comparable else None
    if fvd is not None:
        row["n_generated"] = fvd.get("n_generated")
    if rfvd is not None:
        row.update({k: rfvd.get(k) for k in ("psnr", "ssim", "lpips")})
    return row


def _param_from_results(fvd: dict | None, rfvd: dict | None, param: str, where: str) -> tuple[bool, Any]:
    """The parameter value recorded in the result files' provenance; both files must agree."""
    seen = {}
    for kind, res in (("gfvd", fvd), ("rfvd", rfvd)):
        found, value = _dotted((res or {}).get("provenance", {}).get("params"), param)
        if found:
            seen[kind] = value
    if len(set(map(repr, seen.values()))) > 1:
        raise ReportError(f"{where}: the gFVD and rFVD results were made with different {param} "
                          f"({seen['gfvd']!r} vs {seen['rfvd']!r}); rerun the stale one")
    return (True, next(iter(seen.values()))) if seen else (False, None)


def _read_json(path: Path) -> dict:
    return read_json_object(path, ReportError)


def experiments_from_files(paths: list[Path], param: str = "prior.alpha") -> list[dict]:
    """Rows from plain result files: gFVD/rFVD JSONs are paired by directory, one row per directory.

    A file is a gFVD or rFVD result by its ``metric`` field ("gFVD"/"rFVD"), else by its name
    (``fvd_*.json`` / ``rfvd_*.json``). The parameter value comes from ``provenance.params`` (the resolved
    params the result was made with).
    """
    groups: dict[Path, dict[str, tuple[Path, dict]]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ReportError(f"{path}: result file not found")
        data = _read_json(path)
        metric = str(data.get("metric", "")).lower()
        kind = metric if metric in ("gfvd", "rfvd") else (
            "rfvd" if path.name.startswith("rfvd") else "gfvd" if path.name.startswith("fvd") else None)
        if kind is None:
            raise ReportError(f"{path}: neither a gFVD nor an rFVD result "
                              "(no 'metric' field, and the name is not fvd_*/rfvd_*)")
        group = groups.setdefault(path.resolve().parent, {})
        if kind in group:
            raise ReportError(f"{path}: a second {kind} result in {path.parent} (also {group[kind][0]}); "
                              "put each run's results in its own directory")
        group[kind] = (path, data)
    rows = []
    for directory, group in groups.items():
        fvd, rfvd = (group.get(k, (None, None))[1] for k in ("gfvd", "rfvd"))
        where = ", ".join(str(p) for p, _ in group.values())
        found, value = _param_from_results(fvd, rfvd, param, where)
        if not found:
            raise ReportError(f"{where}: no provenance.params.{param} recorded; "
                              "cannot place it in the ablation")
        git = ((fvd or rfvd).get("provenance") or {}).get("git") or {}
        rows.append({"name": directory.name if directory.name != "results" else directory.parent.name,
                     "rev": git.get("commit"), "kind": "files", "param": param, "value": value,
                     **_metrics_of(fvd, rfvd, where), "note": None})
    return rows


# ------------------------------------------------------------------------------------------ DVC experiments


def _dvc_command() -> list[str]:
    if importlib.util.find_spec("dvc") is not None:  # the DVC of this environment, even if not on PATH
        return [sys.executable, "-m", "dvc"]
    exe = shutil.which("dvc")
    if exe is None:
        raise ReportError("DVC is not installed (no `dvc` module or executable); use --results files instead")
    return [exe]


def _dvc_env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}  # no analytics daemon (compute nodes are offline)


def dvc_exp_show(repo: Path, all_commits: bool = False) -> list[dict]:
    """The parsed output of ``dvc exp show --json`` in ``repo`` (DVC 3.x layout: one entry per baseline)."""
    cmd = [*_dvc_command(), "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    proc = subprocess.run(cmd, cwd=repo, env=_dvc_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReportError(f"{repo}: `dvc exp show --json` failed (rc {proc.returncode}): "
                          f"{proc.stderr.strip()}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ReportError(f"{repo}: `dvc exp show --json` printed no JSON ({e}): "
                          f"{proc.stdout[:200]!r}") from e
    if not isinstance(data, list):
        raise ReportError(f"{repo}: unexpected `dvc exp show --json` output "
                          f"(a {type(data).__name__}, not a list)")
    return data


def _git_json(repo: Path, rev: str, rel: str) -> dict | None:
    """A JSON file as committed in ``rev`` (None if that commit lacks it); ``./`` makes it repo-relative."""
    proc = subprocess.run(["git", "show", f"{rev}:./{rel}"], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ReportError(f"{rel} in commit {rev[:12]}: not valid JSON ({e})") from e


def _param_of_rev(data: dict, param: str) -> tuple[bool, Any]:
    """The parameter as DVC saw it in that revision's params files (params.yaml first)."""
    files = data.get("params") or {}
    for fname in sorted(files, key=lambda f: f != "params.yaml"):
        found, value = _dotted((files[fname] or {}).get("data"), param)
        if found:
            return True, value
    return False, None


def _exp_show_metric(data: dict, rel: str) -> dict | None:
    """Fallback when the file is not in git (cache: true metrics): exp show's copy, lists (ci95) dropped."""
    m = (data.get("metrics") or {}).get(rel) or {}
    return m.get("data") if isinstance(m.get("data"), dict) else None


def experiments_from_dvc(repo: Path, dataset: str, param: str = "prior.alpha", *,
                         all_commits: bool = False) -> list[dict]:
    """One row per finished DVC experiment, its baseline commit and the workspace, that has gFVD or rFVD.

    Queued, running and failed experiments are skipped, and so are revisions without result files. A row
    whose results have the same content as an earlier one is dropped (experiments first, then baselines,
    then the workspace, which usually equals the last ``dvc exp run``). When the parameter recorded in a result's provenance
    differs from the revision's params.yaml (results older than the params), the provenance value is used
    and ``note`` says so.
    """
    repo = Path(repo)
    rels = {"gfvd": f"results/fvd_{dataset}.json", "rfvd": f"results/rfvd_{dataset}.json"}
    candidates: list[tuple[dict, dict, dict | None, dict | None]] = []  # (row stub, data, fvd, rfvd)
    for base in dvc_exp_show(repo, all_commits):
        entries = [("workspace" if base.get("rev") == "workspace" else "baseline", base, None)]
        for exp in base.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or []:
                entries.append(("experiment", rev, state))
        for kind, entry, state in entries:
            data = entry.get("data") or {}
            if state in ("queued", "running", "failed") or entry.get("error") or not data:
                continue
            rev = entry.get("rev")
            if kind == "workspace":
                res = {k: _read_json(repo / rel) if (repo / rel).is_file() else None
                       for k, rel in rels.items()}
                rev = None
            else:
                res = {k: _git_json(repo, rev, rel) or _exp_show_metric(data, rel) for k, rel in rels.items()}
            if res["gfvd"] is None and res["rfvd"] is None:
                continue
            name = entry.get("name") or (rev[:7] if rev else kind)
            candidates.append(({"name": name, "rev": rev, "kind": kind}, data, res["gfvd"], res["rfvd"]))

    rows, seen = [], set()
    order = {"experiment": 0, "baseline": 1, "workspace": 2}
    for stub, data, fvd, rfvd in sorted(candidates, key=lambda c: order[c[0]["kind"]]):
        key = json.dumps([fvd, rfvd], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        where = f"{repo} {stub['kind']} {stub['name']}"
        found_p, value_p = _param_of_rev(data, param)
        found_r, value_r = _param_from_results(fvd, rfvd, param, where)
        if not (found_p or found_r):
            raise ReportError(f"{where}: parameter {param!r} is neither in params.yaml "
                              "nor in the results' provenance")
        note = None
        if found_p and found_r and value_p != value_r:
            note = f"results made with {param}={value_r}, params.yaml says {value_p}"
        rows.append({**stub, "param": param, "value": value_r if found_r else value_p,
                     **_metrics_of(fvd, rfvd, where), "note": note})
    return rows


# ------------------------------------------------------------------------------------------ table and plot


def ablation_table(rows: list[dict], param: str, metrics: list[str]) -> pd.DataFrame:
    """Rows sorted by the parameter: columns ``param``, each metric (+ ``<m>_ci_low/_ci_high`` for gFVD/rFVD),
    then name, rev, kind, detector, comparable_to_papers, note."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ReportError(f"unknown metrics {unknown}; expected some of {list(METRICS)}")
    if not rows:
        raise ReportError(f"no experiments with results to tabulate for {param}")
    cols = [param]
    for m in metrics:
        cols += [m, f"{m}_ci_low", f"{m}_ci_high"] if m in _CI_METRICS else [m]
    cols += ["name", "rev", "kind", "detector", "comparable_to_papers", "note"]
    records = []
    for r in rows:
        if r.get("param") != param:
            raise ReportError(f"row {r.get('name')!r} holds {r.get('param')!r}, not {param!r}")
        if r.get("value") is None:
            raise ReportError(f"row {r.get('name')!r} has no value of {param}")
        records.append({param: r["value"], **{c: r.get(c) for c in cols[1:]}})
    df = pd.DataFrame.from_records(records, columns=cols)
    return df.sort_values([param, "name"], kind="stable").reset_index(drop=True)


def _num(x: Any, digits: int) -> str:
    return "–" if x is None or pd.isna(x) else f"{float(x):.{digits}f}"


def _with_ci(row: pd.Series, m: str) -> str:
    if row.get(m) is None or pd.isna(row[m]):
        return "–"
    lo, hi = row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")
    ci = "" if lo is None or pd.isna(lo) else f" [{_num(lo, 1)}, {_num(hi, 1)}]"
    return f"{_num(row[m], 1)}{ci}"


def markdown_table(df: pd.DataFrame, param: str) -> str:
    """GitHub Markdown: param | gFVD [95% CI] | rFVD [95% CI] | PSNR | experiment (name, commit)."""
    lines = [f"| {param} | gFVD [95% CI] | rFVD [95% CI] | PSNR (dB) | experiment |",
             "|---:|---:|---:|---:|:---|"]
    for _, r in df.iterrows():
        exp = f"{r['name']}" + (f" (`{str(r['rev'])[:7]}`)" if isinstance(r.get("rev"), str) else "")
        if isinstance(r.get("note"), str):
            exp += f" — {r['note']}"
        psnr = _num(r.get("psnr"), 2) if "psnr" in df else "–"
        rfvd = _with_ci(r, "rfvd") if "rfvd" in df else "–"
        gfvd = _with_ci(r, "gfvd") if "gfvd" in df else "–"
        lines.append(f"| {r[param]} | {gfvd} | {rfvd} | {psnr} | {exp} |")
    return "\n".join(lines) + "\n"


def _plot(df: pd.DataFrame, param: str, out_png: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg only: no display, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plotted = False
    for m, marker in (("gfvd", "o"), ("rfvd", "s")):
        if m not in df or df[m].isna().all():
            continue
        d = df[df[m].notna()]
        x, y = d[param].astype(float).to_numpy(), d[m].astype(float).to_numpy()
        lo = d[f"{m}_ci_low"].astype(float).fillna(d[m].astype(float)).to_numpy()
        hi = d[f"{m}_ci_high"].astype(float).fillna(d[m].astype(float)).to_numpy()
        yerr = [(y - lo).clip(min=0), (hi - y).clip(min=0)]
        ax.errorbar(x, y, yerr=yerr, fmt=f"{marker}-", capsize=4, label=f"{_LABELS[m]} (95% bootstrap CI)")
        for xi, yi, name in zip(x, y, d["name"]):
            ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=7)
        plotted = True
    if not plotted:
        raise ReportError("nothing to plot: no row has a gFVD or rFVD value")
    ax.margins(x=0.12)  # room for the labels of the outermost points
    ax.set_xlabel(param)
    ax.set_ylabel("FVD (lower is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: stable bytes


def render_ablation(df: pd.DataFrame, param: str, out_md: Path, out_png: Path, title: str,
                    out_html: Path | None = None) -> None:
    """Write the Markdown table (the plot embedded by relative path) and the PNG of FVD against ``param``;
    with ``out_html`` also a self-contained HTML page of both (the plot inline)."""
    out_md, out_png = Path(out_md), Path(out_png)
    if param not in df:
        raise ReportError(f"the table has no column {param!r}")
    _plot(df, param, out_png, title)
    detectors = sorted({str(d) for d in df["detector"].dropna()}) if "detector" in df else []
    comparable = df["comparable_to_papers"].dropna().tolist() if "comparable_to_papers" in df else []
    foot = [f"FVD detector: {', '.join(detectors) or 'unknown'}."]
    if comparable and not all(comparable):
        foot.append("**Not comparable to published numbers** (non-canonical detector or protocol).")
    if "n_generated" in df and df["n_generated"].notna().any():
        counts = sorted({int(n) for n in df["n_generated"].dropna()})
        foot.append(f"Generated videos per gFVD: {', '.join(map(str, counts))}.")
    try:
        rel_png = os.path.relpath(out_png.resolve(), out_md.resolve().parent)
    except ValueError:  # another drive (Windows)
        rel_png = str(out_png)
    text = (f"# {title}\n\n{markdown_table(df, param)}\n" + " ".join(foot) + "\n\n"
            f"![{title}]({Path(rel_png).as_posix()})\n")
    atomic_write_text(out_md, text)
    if out_html is not None:
        atomic_write_text(out_html, html_table_page(df, param, out_png.read_bytes(), title, foot))


def html_table_page(df: pd.DataFrame, param: str, png: bytes, title: str, foot: list[str]) -> str:
    """The ablation as one offline HTML page: the table of :func:`markdown_table` and the plot inline."""
    rows = []
    for _, r in df.iterrows():
        exp = f"{r['name']}" + (f" ({str(r['rev'])[:7]})" if isinstance(r.get("rev"), str) else "")
        if isinstance(r.get("note"), str):
            exp += f" — {r['note']}"
        rows.append([r[param], _with_ci(r, "gfvd") if "gfvd" in df else "–",
                     _with_ci(r, "rfvd") if "rfvd" in df else "–",
                     _num(r.get("psnr"), 2) if "psnr" in df else "–", exp])
    notes = " ".join(f.replace("**", "") for f in foot)
    body = (html_page.table([param, "gFVD [95% CI]", "rFVD [95% CI]", "PSNR (dB)", "experiment"], rows)
            + f'<p class="note">{html_page.esc(notes)}</p>' + html_page.img(png, title))
    return html_page.page(title, body)


# ------------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="larp report", description="Reports over finished runs.")
    sub = ap.add_subparsers(dest="report", required=True, metavar="REPORT")
    p = sub.add_parser(
        "ablation", help="table + plot of gFVD/rFVD (with bootstrap CIs) against one parameter",
        description="Collect one row per run (DVC experiments of --repo, or the --results files), write "
        "OUT.md (Markdown table: param, gFVD [CI], rFVD [CI], PSNR, experiment), OUT.png (FVD vs param "
        "with 95% CI error bars) and OUT.html (both in one offline page). Works offline (matplotlib Agg).")
    p.add_argument("--dataset", required=True, help="dataset whose results/fvd_<dataset>.json and "
                   "results/rfvd_<dataset>.json are read (e.g. embedded, ucf101)")
    p.add_argument("--param", default="prior.alpha",
                   help="dotted parameter on the x axis (default: prior.alpha)")
    p.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.md, OUT.png and OUT.html "
                   "(e.g. results/ablation_prior_alpha)")
    p.add_argument("--repo", type=Path, default=Path("."), help="DVC repository whose experiments "
                   "(`dvc exp show --json`) are read (default: .)")
    p.add_argument("--all-commits", action="store_true", help="also experiments of older baselines "
                   "(dvc exp show --all-commits)")
    p.add_argument("--results", type=Path, nargs="+", default=None, metavar="JSON",
                   help="read these result files instead of DVC (gFVD and rFVD JSONs, paired by directory; "
                   "the parameter value comes from each file's provenance.params)")
    p.add_argument("--title", default=None,
                   help="plot and table title (default: 'Ablation of PARAM on DATASET')")

    p = sub.add_parser(
        "run", help="one self-contained HTML page of a finished run (videos, curves, FVDs, provenance)",
        description="Per class a real held-out clip | its tokenizer reconstruction | a generated sample, the "
        "training curves, gFVD/rFVD/FP-FVD with bootstrap CIs and reference points, and the provenance, in "
        "one offline HTML file (every image and video inline). Reads the pipeline's files under --root.")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--out", type=Path, required=True, help="the HTML file (e.g. results/report_embedded.html)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: params.yaml)")
    p.add_argument("--root", type=Path, default=Path("."), help="project root whose data/, checkpoints/ and "
                   "results/ are read (default: .)")
    p.add_argument("--max-videos", type=int, default=101, metavar="N",
                   help="show the first N classes only (three videos each; default: 101, every UCF-101 class)")
    return ap


def main_report(argv: list[str] | None = None) -> int:
    """``larp report ablation ...``: returns the exit code (2 on unreadable experiments or results)."""
    args = build_parser().parse_args(argv)
    if args.report == "run":
        return _main_run(args)
    try:
        if args.results:
            rows = experiments_from_files(args.results, args.param)
        else:
            rows = experiments_from_dvc(args.repo, args.dataset, args.param, all_commits=args.all_commits)
        df = ablation_table(rows, args.param, ["gfvd", "rfvd", "psnr", "ssim", "lpips", "n_generated"])
        out_md, out_png = (args.out.with_name(args.out.name + ext) for ext in (".md", ".png"))
        title = args.title or f"Ablation of {args.param} on {args.dataset}"
        out_html = args.out.with_name(args.out.name + ".html")
        render_ablation(df, args.param, out_md, out_png, title, out_html)
    except ReportError as e:
        print(f"larp report: {e}", file=sys.stderr)
        return 2
    print(markdown_table(df, args.param), end="")
    print(f"wrote {out_md}, {out_png} and {out_html}")
    return 0


def _main_run(args: argparse.Namespace) -> int:
    """``larp report run ...``: 2 on invalid parameters or a missing/unreadable input."""
    from larp.run_report import RunReportError, run_report
    from larp.models.weights_io import CheckpointError

    try:
        pf = read_params_file(args.params)
        params = pf.resolve(args.dataset)
        out = run_report(args.root, args.dataset, args.out, params, pf.presets[args.dataset],
                         max_videos=args.max_videos)
    except (ParamsError, RunReportError, CheckpointError, FileNotFoundError) as e:
        print(f"larp report run: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_report())
