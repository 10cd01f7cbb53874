"""`larp report run`: the offline HTML page of a finished micro run, read as text and rendered in Chromium.

Once per module: a micro run in the pipeline's layout (3 classes, a 3-step tokenizer, a 4-step generator, two
sample shards, the training-curve CSVs). Each test gets its own results/ next to it, with result files that
carry the optional reference points (floor, ceiling, class accuracy, ...) or not.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from micro import make_frames, micro_params

from larp.fvd import gfvd
from larp.rfvd import rfvd
from larp.sample import sample_shard
from larp.report import main_report
from larp.run_report import RunReportError, param_diff, reference_points, run_report
from larp.tokenize import tokenize_dataset
from larp.train.generator import train_generator
from larp.train.tokenizer import train_tokenizer

DS = "embedded"


def tiny():
    return micro_params({
        "tokenize": {"clip_stride": 4, "batch_size": 8, "shard_clips": 64},
        "train_ar": {"max_steps": 4, "global_batch": 8, "micro_batch": 8, "checkpoint_every": 100,
                     "log_every": 1, "sample_every": None},
        "sample": {"batch_size": 3, "shards": [0, 1]},
        "fvd": {"detector": "i3d-random", "num_clips": 6, "bootstrap": 5, "batch_size": 4, "rfvd_max_videos": 2,
                "lpips": False},
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro run's data/ and checkpoints/ (shared, read-only) and its training curves."""
    root = tmp_path_factory.mktemp("run")
    params = tiny()
    torch.set_num_threads(1)
    frames = make_frames(root / "make")
    (root / "data" / "frames").mkdir(parents=True)
    frames = frames.rename(root / "data" / "frames" / DS)
    tok, ar = root / "checkpoints" / DS / "tokenizer.safetensors", root / "checkpoints" / DS / "ar.safetensors"
    curves = root / "curves"
    curves.mkdir()
    run_dir = train_tokenizer(frames, tok, params, run_root=root / "runs", progress=False)
    shutil.copy(run_dir / "metrics.csv", curves / "tokenizer_metrics.csv")
    tokenize_dataset(frames, tok, root / "data" / "tokens" / DS, params, device="cpu", progress=False)
    run_dir = train_generator(root / "data" / "tokens" / DS, ar, params, progress=False)
    shutil.copy(run_dir / "metrics.csv", curves / "ar_metrics.csv")
    for k in (0, 1):
        sample_shard(frames, tok, ar, k, root / "data" / "samples" / DS / f"shard-{k}", params, progress=False)
    return root


def project(run: Path, tmp_path: Path, results: dict[str, dict] | None = None, curves: bool = True) -> Path:
    """A project root: the shared run's data/ and checkpoints/, its own results/ with ``results`` written."""
    root = tmp_path / "project"
    root.mkdir()
    for d in ("data", "checkpoints"):
        (root / d).symlink_to(run / d)
    (root / "results" / DS).mkdir(parents=True)
    if curves:
        for f in (run / "curves").iterdir():
            shutil.copy(f, root / "results" / DS / f.name)
    for name, data in (results or {}).items():
        (root / "results" / name).write_text(json.dumps(data))
    return root


def result(metric: str, value: float, **extra) -> dict:
    """A result file shaped like larp.fvd's (value, ci95, set sizes, detector info, provenance)."""
    params = json.loads(json.dumps(__import__("dataclasses").asdict(tiny())))
    return {"metric": metric, "dataset": DS, "value": value, "ci95": [value * 0.9, value * 1.2],
            "n_generated": 6, "n_real": 6, "detector": {"detector": "i3d-random", "detector_sha256": "d" * 64,
                                                        "comparable_to_papers": False},
            "comparable_to_papers": False, "checkpoints": {"tokenizer": "a" * 64}, "wall_time_s": 1.5,
            "provenance": {"git": {"commit": "c" * 40, "dirty": False}, "params": params,
                           "versions": {"torch": "2.x"}}, **extra}


def videos_in(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:video/webm;base64,([^"]+)"', page)]


def test_page_shows_each_class_with_three_playable_videos(run: Path, tmp_path: Path) -> None:
    root = project(run, tmp_path, {"fvd_embedded.json": result("gFVD", 400.0),
                                   "rfvd_embedded.json": result("rFVD", 150.0, psnr=18.5, ssim=0.4)})
    out = run_report(root, DS, root / "results" / "report_embedded.html", tiny(), "tiny")
    page = out.read_text()
    assert page.count('<tr class="class-row"') == 3  # the micro dataset's 3 classes
    vids = videos_in(page)
    sampled = set(pd.concat(pd.read_csv(f) for f in (run / "data" / "samples" / DS).glob("*/samples.csv"))["label"])
    assert len(vids) == 3 + 3 + len(sampled)  # real | reconstruction | generated (of the classes sampled)
    assert page.count("no sample of this class in the gFVD set") == 3 - len(sampled)
    import av

    with av.open(io.BytesIO(vids[2])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == tiny().data.frames and frames[0].shape[0] >= 96
    # self-contained: nothing is fetched, no script
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page
    assert "Content-Security-Policy" in page
    # metrics, curves and provenance
    assert "gFVD" in page and "rFVD" in page and "[360, 480]" in page
    assert page.count("data:image/png") >= 3  # FVD chart + tokenizer and generator curves
    assert "c" * 40 in page and "d" * 64 in page and "a" * 64 in page
    assert "PSNR" in page and "train_tokenizer.max_steps" in page  # differs from the tiny preset


def test_reference_points_are_drawn_where_present(run: Path, tmp_path: Path) -> None:
    extra = {"fvd_floor": {"value": 20.0, "ci95": [15.0, 25.0]}, "fvd_ceiling": 900.0,
             "class_accuracy": {"samples": 0.61, "real_test": 0.9, "chance": 1 / 3, "classifier": "knn-i3d"},
             "psnr_mean_colour_baseline": 11.2, "codebook_usage": 0.42}
    root = project(run, tmp_path, {"fvd_embedded.json": result("gFVD", 400.0, **extra),
                                   "fvd_embedded_fp.json": result("FP-FVD", 300.0, reference={"floor": 10.0})})
    page = run_report(root, DS, root / "report.html", tiny(), "tiny").read_text()
    assert "Reference points" in page and "fvd_floor" in page and "fvd_ceiling" in page
    assert "reference.floor" in page
    assert "Class accuracy" in page and "knn-i3d" in page  # the non-numeric entry still listed
    assert "psnr_mean_colour_baseline" in page and "codebook_usage" in page
    assert reference_points(extra) == {"fvd_floor": (20.0, 15.0, 25.0), "fvd_ceiling": (900.0, None, None)}


def test_page_without_results_or_curves_says_so(run: Path, tmp_path: Path) -> None:
    root = project(run, tmp_path, curves=False)
    page = run_report(root, DS, root / "r.html", tiny(), "tiny", max_videos=2).read_text()
    assert page.count('<tr class="class-row"') == 2 and "First 2 of 3 classes" in page
    assert "No result files yet" in page and "No metrics CSVs yet" in page


def test_parameters_that_differ_from_the_preset_are_listed(run: Path, tmp_path: Path) -> None:
    other = result("rFVD", 150.0)
    other["provenance"]["params"]["prior"]["alpha"] = 0.5
    root = project(run, tmp_path, {"fvd_embedded.json": result("gFVD", 400.0), "rfvd_embedded.json": other})
    page = run_report(root, DS, root / "r.html", tiny(), "tiny").read_text()
    assert "tokenizer.width" in page  # the micro run shrinks the tiny preset
    assert "gFVD made with:" in page and "rFVD made with:" in page and "prior.alpha" in page
    assert param_diff({"a": {"b": 1, "c": (1, 2)}}, {"a": {"b": 2, "c": [1, 2]}}) == [("a.b", 1, 2)]


def test_bad_inputs_fail_naming_the_file(run: Path, tmp_path: Path) -> None:
    root = project(run, tmp_path)
    (root / "results" / "fvd_embedded.json").write_text("{not json")
    with pytest.raises(RunReportError, match="fvd_embedded.json: not valid JSON"):
        run_report(root, DS, root / "r.html", tiny(), "tiny")
    with pytest.raises(RunReportError, match="frames not found"):
        run_report(tmp_path / "nowhere", DS, root / "r.html", tiny(), "tiny")
    empty = tmp_path / "empty"
    (empty / "data").mkdir(parents=True)
    (empty / "data" / "frames").symlink_to(run / "data" / "frames")
    with pytest.raises(RunReportError, match="tokenizer.safetensors: not found"):
        run_report(empty, DS, root / "r.html", tiny(), "tiny")
    with pytest.raises(RunReportError, match="--max-videos"):
        run_report(root, DS, root / "r.html", tiny(), "tiny", max_videos=0)


def test_cli_reads_params_yaml_and_exits_2_on_bad_input(run: Path, tmp_path: Path, capsys) -> None:
    root = project(run, tmp_path)
    params = root / "params.yaml"
    params.write_text("dataset: embedded\npresets: {embedded: tiny}\nprior: {alpha: 0.1}\n")
    # the tiny preset's tokenizer does not fit the micro weights: a clear one-line error, exit 2
    rc = main_report(["run", "--dataset", DS, "--out", str(root / "r.html"), "--params", str(params),
                      "--root", str(root)])
    assert rc == 2 and "larp report run:" in capsys.readouterr().err
    params.write_text("dataset: embedded\nnot_a_group: {}\n")
    assert main_report(["run", "--dataset", DS, "--out", str(root / "r.html"), "--params", str(params)]) == 2
    assert "not_a_group" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ in a browser


@pytest.mark.slow
def test_page_renders_offline_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    from browser import Chromium, chromium_path, problems

    if chromium_path() is None:
        pytest.fail("chromium is not installed (scripts/install.sh installs it)")
    params = tiny()
    root = project(run, tmp_path)
    frames, tok = root / "data" / "frames" / DS, root / "checkpoints" / DS / "tokenizer.safetensors"
    gfvd(DS, frames, root / "data" / "samples" / DS, root / "results" / f"fvd_{DS}.json", params,
         progress=False)
    rfvd(DS, frames, tok, root / "results" / f"rfvd_{DS}.json", params, progress=False)
    out = run_report(root, DS, root / "results" / f"report_{DS}.html", params, "tiny")
    assert out.stat().st_size < 3e6
    url = out.resolve().as_uri()
    with Chromium(tmp_path / "profile") as browser:
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.page(f"{domain}.enable")
        browser.page("Page.navigate", url=url)
        browser.wait_event("Page.loadEventFired")
        info = browser.evaluate("""(async () => {
            const vids = [...document.querySelectorAll('video')];
            await Promise.all(vids.map(v => v.readyState >= 1 ? null : new Promise(ok => {
                v.addEventListener('loadedmetadata', ok); v.addEventListener('error', ok);
                setTimeout(ok, 20000); })));
            await new Promise(ok => setTimeout(ok, 500));  // a few frames played
            return {rows: document.querySelectorAll('#class-videos tr.class-row').length,
                    durations: vids.map(v => v.duration), errors: vids.map(v => v.error && v.error.code),
                    times: vids.map(v => v.currentTime), imgs: [...document.images].map(i => i.naturalWidth)};
        })()""")
        shot = browser.screenshot()
        foreign, errors = problems(browser.events, url)
    (tmp_path / "screenshot.png").write_bytes(shot)
    assert foreign == [] and errors == [], (foreign, errors)
    assert info["rows"] == 3
    assert len(info["durations"]) >= 7 and all(e is None for e in info["errors"]), info
    assert all(d is not None and 0 < d < 1e6 for d in info["durations"]), info["durations"]
    assert all(w > 0 for w in info["imgs"]) and len(info["imgs"]) >= 3
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert img.shape[0] > 500 and img.std() > 20 and (img < 200).mean() > 0.02  # text, charts, video frames
