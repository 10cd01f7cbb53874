"""The run report: one offline HTML page that shows whether a run worked and how it compares.

Per class, a real held-out clip | its tokenizer reconstruction | a generated sample of that class, playing
side by side; the training curves of the tokenizer and the generators; gFVD / rFVD / FP-FVD with their
bootstrap CIs and whatever reference points the result files carry; and the provenance (git revision,
parameters that differ from the preset, checkpoint and detector hashes, versions, wall time per stage).

The real clips and reconstructions are made here, from the frames and the tokenizer weights (a handful of
clips, cheap on a CPU), so that every file the page shows is the declared output of exactly one earlier
stage. The generated samples are the sample stage's ``videos.npy``.

Result files are read generically: a key this module does not know (a new reference point, a baseline) is
still listed, so results and report can grow independently.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from larp import html_page as H
from larp.config import Params, preset
from larp.files import atomic_write_text, read_json_object, sha256_file

# the result files of a run and how the page names them, in display order
RESULTS = {"gFVD": "fvd_{ds}.json", "rFVD": "rfvd_{ds}.json", "FP-FVD": "fvd_{ds}_fp.json"}
# the training-curve CSVs of a run (results/<ds>/...)
CURVES = {"tokenizer": "tokenizer_metrics.csv", "generator": "ar_metrics.csv",
          "frame-prediction generator": "ar_fp_metrics.csv"}
# keys of a result file that hold a reference FVD (a value or {value, ci95}) when their name contains one
_REFERENCE_WORDS = ("floor", "ceiling")


class RunReportError(ValueError):
    """An input of the run report is missing or unreadable; the message names the file."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run's files are, relative to the project root (the pipeline's layout)."""

    root: Path
    dataset: str

    def frames(self) -> Path:
        return self.root / "data" / "frames" / self.dataset

    def tokenizer(self) -> Path:
        return self.root / "checkpoints" / self.dataset / "tokenizer.safetensors"

    def samples(self) -> Path:
        return self.root / "data" / "samples" / self.dataset

    def result(self, name: str) -> Path:
        return self.root / "results" / RESULTS[name].format(ds=self.dataset)

    def curve(self, name: str) -> Path:
        return self.root / "results" / self.dataset / CURVES[name]


# ------------------------------------------------------------------------------------------ inputs


def _read_json(path: Path) -> dict:
    return read_json_object(path, RunReportError)


def read_results(paths: RunPaths) -> dict[str, dict]:
    """The result files present, by display name (gFVD, rFVD, FP-FVD)."""
    return {name: _read_json(paths.result(name)) for name in RESULTS if paths.result(name).is_file()}


def read_curves(paths: RunPaths) -> dict[str, pd.DataFrame]:
    curves = {}
    for name in CURVES:
        path = paths.curve(name)
        if not path.is_file():
            continue
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise RunReportError(f"{path}: not a readable CSV ({e})") from e
        if "step" not in df:
            raise RunReportError(f"{path}: no 'step' column")
        curves[name] = df
    return curves


@dataclasses.dataclass
class ClassRow:
    label: int
    class_name: str
    real: np.ndarray  # uint8 (t, h, w, 3)
    recon: np.ndarray
    generated: np.ndarray | None
    psnr: float  # of the reconstruction


def _held_out_clips(frames_dir: Path, params: Params, max_classes: int | None) -> pd.DataFrame:
    """One clip per class (row, start, label, class_name): the first held-out video of the split that is long
    enough, else the first such video of any split; its middle ``data.frames`` frames."""
    from larp.data.frames import FrameStore

    table = FrameStore(frames_dir).table.reset_index(names="row")
    table = table[table["frame_count"] >= params.data.frames]
    split = f"split{params.data.split}"
    held_out = table[split].eq("test") if split in table else pd.Series(False, index=table.index)
    table = table.assign(_pref=~held_out).sort_values(["label", "_pref", "row"])
    picks = table.groupby("label", sort=True).head(1)
    if max_classes is not None:
        picks = picks.head(max_classes)
    starts = (picks["frame_count"] - params.data.frames) // 2
    names = picks["class_name"] if "class_name" in picks else picks["label"].astype(str)
    return pd.DataFrame({"row": picks["row"].to_numpy(), "start": starts.to_numpy(),
                         "label": picks["label"].to_numpy(), "class_name": names.to_numpy()})


def _reconstruct(frames_dir: Path, tokenizer: Path, clips: pd.DataFrame, params: Params):
    """(real uint8 (b, t, h, w, 3), reconstructions, PSNR per clip) with the tokenizer in eval mode
    (argmax SVQ), reconstructed exactly as rFVD does."""
    import torch

    from larp.data.clips import ClipDataset
    from larp.devices import default_device
    from larp.eval.metrics import psnr_per_video
    from larp.rfvd import reconstruct
    from larp.models.tokenizer import load_tokenizer
    from larp.visualize import to_uint8

    device = default_device()
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    video = torch.stack([reader.read_clip(int(r.row), int(r.start)) for r in clips.itertuples()])
    try:
        tok = load_tokenizer(tokenizer, params, device)
    except RuntimeError as e:  # torch's shape mismatch: weights of other tokenizer parameters
        raise RunReportError(f"{tokenizer}: does not fit the tokenizer parameters "
                             f"({str(e).strip().splitlines()[-1].strip()})") from e
    recon = torch.cat([reconstruct(tok, video[i:i + 8].to(device))[1].cpu() for i in range(0, len(video), 8)])
    return to_uint8(video), to_uint8(recon), psnr_per_video(recon, video).tolist()


def _generated_by_class(samples_dir: Path, labels: list[int]) -> dict[int, np.ndarray]:
    """The lowest-index generated sample of each class in ``labels`` from the sample shards."""
    found: dict[int, tuple[int, np.ndarray]] = {}
    dirs = sorted(p for p in samples_dir.glob("shard-*") if p.is_dir())
    if not dirs:
        raise RunReportError(f"{samples_dir}: no sample shards (run `larp sample` first)")
    for d in dirs:
        for f in ("samples.csv", "videos.npy"):
            if not (d / f).is_file():
                raise RunReportError(f"{d / f}: not found (an unfinished sample shard)")
        table = pd.read_csv(d / "samples.csv")
        videos = np.load(d / "videos.npy", mmap_mode="r")
        for i, (index, label) in enumerate(zip(table["index"], table["label"])):
            if int(label) in labels and (int(label) not in found or index < found[int(label)][0]):
                found[int(label)] = (int(index), np.array(videos[i]))
    return {label: v for label, (_, v) in found.items()}


def class_rows(paths: RunPaths, params: Params, max_classes: int | None) -> list[ClassRow]:
    """One row per class (the first ``max_classes``); a class the gFVD protocol drew no sample of has none."""
    for path, stage in ((paths.tokenizer(), "larp train-tokenizer"), (paths.samples(), "larp sample")):
        if not path.exists():
            raise RunReportError(f"{path}: not found (run `{stage}` first)")
    clips = _held_out_clips(paths.frames(), params, max_classes)
    if clips.empty:
        raise RunReportError(f"{paths.frames()}: no video has the {params.data.frames} frames of a clip")
    real, recon, psnr = _reconstruct(paths.frames(), paths.tokenizer(), clips, params)
    generated = _generated_by_class(paths.samples(), clips["label"].astype(int).tolist())
    return [ClassRow(int(r.label), str(r.class_name), real[i], recon[i], generated.get(int(r.label)),
                     float(psnr[i])) for i, r in enumerate(clips.itertuples())]


# ------------------------------------------------------------------------------------------ figures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg only: no display, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_png(name: str, df: pd.DataFrame) -> bytes:
    """Small multiples: every numeric column of a metrics CSV (lr and timing aside) against step."""
    skip = {"step", "epoch", "sec_per_step"}
    cols = [c for c in df.columns if c not in skip and not c.startswith("lr_")
            and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()]
    if not cols:
        raise RunReportError(f"{name} metrics: no numeric column to plot")
    ncol = min(4, len(cols))
    nrow = -(-len(cols) // ncol)
    fig = _figure(3.0 * ncol, 2.2 * nrow)
    for i, c in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        d = df[["step", c]].dropna()
        ax.plot(d["step"], d[c], marker="." if len(d) < 30 else None, lw=1)
        ax.set_title(c, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{name} training", fontsize=10)
    return H.figure_png(fig)


def _as_point(value: Any) -> tuple[float, float | None, float | None] | None:
    """(value, ci low, ci high) of a reference entry: a number, or a dict with value/fvd and optional ci95."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None, None
    if isinstance(value, dict):
        v = value.get("value", value.get("fvd"))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            ci = value.get("ci95")
            lo, hi = (ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None))
            return float(v), lo, hi
    return None


def reference_points(result: dict) -> dict[str, tuple[float, float | None, float | None]]:
    """Reference FVDs a result carries: keys naming a floor or ceiling, at the top or one level down."""
    out = {}
    for key, value in result.items():
        if key == "provenance":
            continue
        if any(w in key.lower() for w in _REFERENCE_WORDS) and (p := _as_point(value)) is not None:
            out[key] = p
        elif isinstance(value, dict):
            for sub, v in value.items():
                if any(w in sub.lower() for w in _REFERENCE_WORDS) and (p := _as_point(v)) is not None:
                    out[f"{key}.{sub}"] = p
    return out


def fvd_png(results: dict[str, dict]) -> bytes:
    """One row per result: its FVD with the 95% bootstrap CI, and its reference points as other markers."""
    fig = _figure(7.0, 0.9 + 0.7 * len(results))
    ax = fig.add_subplot()
    names = list(results)
    markers = iter("^vD*Pxh")
    seen: dict[str, str] = {}
    for y, name in enumerate(names):
        v, lo, hi = _as_point(results[name]) or (float("nan"), None, None)
        err = [[max(v - lo, 0)], [max(hi - v, 0)]] if lo is not None and hi is not None else None
        ax.errorbar([v], [y], xerr=err, fmt="o", color="C0", capsize=4,
                    label="FVD (95% bootstrap CI)" if y == 0 else None)
        ax.annotate(f"{v:.1f}", (v, y), textcoords="offset points", xytext=(0, 7), fontsize=8, ha="center")
        for key, (rv, rlo, rhi) in reference_points(results[name]).items():
            label = next(w for w in _REFERENCE_WORDS if w in key.split(".")[-1].lower())  # one marker per kind
            if label not in seen:
                seen[label] = next(markers, "o")
            rerr = [[max(rv - rlo, 0)], [max(rhi - rv, 0)]] if rlo is not None and rhi is not None else None
            ax.errorbar([rv], [y], xerr=rerr, fmt=seen[label], color=f"C{1 + list(seen).index(label)}",
                        capsize=3, label=label)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="best")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("FVD (lower is better)")
    ax.grid(True, axis="x", alpha=0.3)
    return H.figure_png(fig)


def accuracy_png(accuracies: dict[str, dict]) -> bytes:
    """Bars of every numeric entry of each result's class_accuracy (samples, real test clips, chance...)."""
    fig = _figure(7.0, 0.9 + 0.35 * sum(len(v) for v in accuracies.values()))
    ax = fig.add_subplot()
    labels, values = [], []
    for name, acc in accuracies.items():
        for k, v in acc.items():
            labels.append(f"{name}: {k}")
            values.append(float(v))
    ax.barh(range(len(values)), values, color=[f"C{i % 10}" for i in range(len(values))])
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (v, i), textcoords="offset points", xytext=(3, -3), fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, max(values) * 1.15))
    ax.set_xlabel("classification accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    return H.figure_png(fig)


# ------------------------------------------------------------------------------------------ sections


def _flat(tree: Any, prefix: str = "", depth: int = 2) -> list[tuple[str, Any]]:
    """(dotted key, scalar) pairs of nested dicts down to ``depth``; short lists of scalars are kept whole."""
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 0:
            out += _flat(v, key + ".", depth - 1)
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out.append((key, v))
        elif isinstance(v, (list, tuple)) and len(v) <= 4 and all(isinstance(x, (int, float, str)) for x in v):
            out.append((key, "[" + ", ".join(H.fmt(x) for x in v) + "]"))
    return out


def videos_section(rows: list[ClassRow], n_classes: int | None, fps: int) -> str:
    from larp.visualize import webm_bytes

    def cell(v: np.ndarray | None, title: str) -> str:
        return (H.video(webm_bytes(v, fps=fps), title) if v is not None else
                '<span class="note">no sample of this class in the gFVD set</span>')

    body = []
    for r in rows:
        psnr = f'<div class="note">PSNR {r.psnr:.2f} dB</div>'
        body.append(f'<tr class="class-row" data-label="{r.label}"><th>{H.esc(r.class_name)}<br>'
                    f'<span class="note">class {r.label}</span></th>'
                    f"<td>{cell(r.real, f'real {r.class_name}')}</td>"
                    f"<td>{cell(r.recon, f'reconstruction {r.class_name}')}{psnr}</td>"
                    f"<td>{cell(r.generated, f'generated {r.class_name}')}</td></tr>")
    note = ""
    if n_classes is not None and n_classes > len(rows):
        note = f'<p class="note">First {len(rows)} of {n_classes} classes (--max-videos).</p>'
    return ('<h2 id="videos">Samples per class</h2><p class="note">Real: a held-out clip of the class; '
            "reconstruction: that clip through the tokenizer (argmax SVQ); generated: a class-conditional "
            f"sample of the same class.</p>{note}<table id=\"class-videos\"><thead><tr><th>class</th>"
            "<th>real</th><th>reconstruction</th><th>generated</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def metrics_section(results: dict[str, dict]) -> str:
    if not results:
        return '<h2 id="metrics">Metrics</h2><p class="note">No result files yet.</p>'
    parts = ['<h2 id="metrics">Metrics</h2>', H.img(fvd_png(results), "FVD with 95% bootstrap CIs")]
    rows = []
    for name, r in results.items():
        ci = r.get("ci95")
        det = r.get("detector") if isinstance(r.get("detector"), dict) else {"detector": r.get("detector")}
        rows.append([name, r.get("value"), f"[{H.fmt(ci[0])}, {H.fmt(ci[1])}]" if ci else "–",
                     r.get("n_generated"), r.get("n_real"), det.get("detector"), r.get("comparable_to_papers")])
    parts.append(H.table(["metric", "value", "95% CI", "n generated", "n real", "detector",
                          "comparable to papers"], rows))
    refs = [[name, key, v, f"[{H.fmt(lo)}, {H.fmt(hi)}]" if lo is not None else "–"]
            for name, r in results.items() for key, (v, lo, hi) in reference_points(r).items()]
    if refs:
        parts.append("<h3>Reference points</h3>" + H.table(["result", "reference", "FVD", "95% CI"], refs))
    accuracies = {name: {k: v for k, v in r["class_accuracy"].items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}
                  for name, r in results.items() if isinstance(r.get("class_accuracy"), dict)}
    accuracies = {k: v for k, v in accuracies.items() if v}
    if accuracies:
        parts.append("<h3>Class accuracy</h3>" + H.img(accuracy_png(accuracies), "class accuracy"))
    skip = {"metric", "dataset", "value", "ci95", "n_generated", "n_real", "fvd", "provenance", "detector",
            "comparable_to_papers", "checkpoints", "real_features_cache", "protocol_params", "wall_time_s"}
    for name, r in results.items():
        other = _flat({k: v for k, v in r.items() if k not in skip})
        if other:
            parts.append(f"<details><summary>{H.esc(name)}: every other value</summary>"
                         f"{H.table(['key', 'value'], other)}</details>")
    return "".join(parts)


def curves_section(curves: dict[str, pd.DataFrame]) -> str:
    if not curves:
        return '<h2 id="curves">Training curves</h2><p class="note">No metrics CSVs yet.</p>'
    return '<h2 id="curves">Training curves</h2>' + "".join(
        f"<div>{H.img(curves_png(name, df), f'{name} training curves')}</div>" for name, df in curves.items())


def _train_seconds(df: pd.DataFrame) -> float | None:
    """Training time from the metrics CSV: each row's sec_per_step times the steps since the previous row."""
    if "sec_per_step" not in df or df.empty:
        return None
    steps = df["step"].diff().fillna(df["step"].iloc[0])
    return float((df["sec_per_step"] * steps).sum())


def param_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, preset value, run value) of every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += param_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    a, b = (list(x) if isinstance(x, tuple) else x for x in (a, b))
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def provenance_section(paths: RunPaths, results: dict[str, dict], curves: dict[str, pd.DataFrame],
                       preset_name: str, report_seconds: float) -> str:
    from larp.provenance import git_revision, versions

    parts = ['<h2 id="provenance">Provenance</h2>']
    revs = [["this report", (git_revision(paths.root) or {}).get("commit"),
             (git_revision(paths.root) or {}).get("dirty")]]
    for name, r in results.items():
        git = (r.get("provenance") or {}).get("git") or {}
        revs.append([name, git.get("commit"), git.get("dirty")])
    parts.append("<h3>Git revision</h3>" + H.table(["made by", "commit", "uncommitted changes"], revs))

    # the parameters the results were made with (recorded in their provenance: declared inputs), not the
    # current params.yaml, of which this stage tracks only what the reconstructions need
    base = json.loads(json.dumps(dataclasses.asdict(preset(preset_name))))
    made_with: dict[str, list[str]] = {}
    for name, r in results.items():
        used = (r.get("provenance") or {}).get("params")
        if isinstance(used, dict):
            made_with.setdefault(json.dumps(used, sort_keys=True), []).append(name)
    parts.append(f"<h3>Parameters that differ from the preset <code>{H.esc(preset_name)}</code></h3>")
    if not made_with:
        parts.append('<p class="note">No result file records its parameters.</p>')
    for used, names in made_with.items():
        diff = param_diff(base, json.loads(used))
        caption = f'<p class="note">{H.esc(", ".join(names))} made with:</p>' if len(made_with) > 1 else ""
        parts.append(caption + (H.table(["parameter", "preset", "this run"], diff) if diff else
                                '<p class="note">none</p>'))

    hashes = []
    if paths.tokenizer().is_file():
        hashes.append(["tokenizer (this page's reconstructions)", str(paths.tokenizer()),
                       sha256_file(paths.tokenizer())])
    for name, r in results.items():
        for k, v in (r.get("checkpoints") or {}).items():
            hashes.append([f"{k} ({name})", "", v])
        det = r.get("detector")
        if isinstance(det, dict):
            hashes.append([f"detector {det.get('detector')} ({name})", "", det.get("detector_sha256")])
    parts.append("<h3>Checkpoints and detectors (sha256)</h3>" + H.table(["what", "file", "sha256"], hashes))

    vers = dict(versions())
    for r in results.values():
        for k, v in ((r.get("provenance") or {}).get("versions") or {}).items():
            vers.setdefault(k, v)
    parts.append("<h3>Versions</h3>" + H.table(["package", "version"], sorted(vers.items())))

    walls = [[f"train {name}", round(s, 1)] for name, df in curves.items()
             if (s := _train_seconds(df)) is not None]
    if paths.samples().is_dir():
        for d in sorted(paths.samples().glob("shard-*")):
            meta = d / "sample.json"
            if meta.is_file() and "seconds" in (m := _read_json(meta)):
                walls.append([f"sample {d.name}", m["seconds"]])
    walls += [[name, r["wall_time_s"]] for name, r in results.items() if "wall_time_s" in r]
    walls.append(["report (this page)", round(report_seconds, 1)])
    parts.append("<h3>Wall time per stage (seconds)</h3>" + H.table(["stage", "seconds"], walls))
    return "".join(parts)


# ------------------------------------------------------------------------------------------ the page


def run_report(root: Path, dataset: str, out: Path, params: Params, preset_name: str, *,
               max_videos: int | None = None, fps: int = 8) -> Path:
    """Write the run report of ``dataset`` (files under ``root`` in the pipeline's layout) to ``out``.

    ``max_videos`` caps the class rows (three videos each); None shows every class.
    """
    t0 = time.time()
    if max_videos is not None and max_videos < 1:
        raise RunReportError(f"--max-videos: must be >= 1, got {max_videos}")
    paths = RunPaths(Path(root), dataset)
    if not paths.frames().is_dir():
        raise RunReportError(f"{paths.frames()}: frames not found (run `larp extract` first)")
    results, curves = read_results(paths), read_curves(paths)
    rows = class_rows(paths, params, max_videos)
    from larp.data.frames import FrameStore

    n_classes = int(FrameStore(paths.frames()).table["label"].nunique())
    summary = [[name, r.get("value"), r.get("ci95") and f"[{H.fmt(r['ci95'][0])}, {H.fmt(r['ci95'][1])}]"]
               for name, r in results.items()]
    body = [f'<p class="note">Dataset <b>{H.esc(dataset)}</b>, preset <b>{H.esc(preset_name)}</b>; '
            f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>",
            H.table(["metric", "value", "95% CI"], summary) if summary else "",
            videos_section(rows, n_classes, fps), metrics_section(results), curves_section(curves)]
    body.append(provenance_section(paths, results, curves, preset_name, time.time() - t0))
    atomic_write_text(out, H.page(f"LARP run report: {dataset}", "\n".join(body)))
    return Path(out)
