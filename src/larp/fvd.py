"""`larp fvd-real`, `larp fvd`: the gFVD and FP-FVD protocols (docs/protocols.md#gfvd,
docs/protocols.md#fp-fvd), end to end; and the public FVD API (feature statistics, Fréchet distance,
bootstrap CI; implemented in larp.eval.fvd).

gFVD: the real set is ``fvd.num_clips`` clips drawn with ``random.Random(fvd.clip_seed)`` from all
non-overlapping clips of the split's training videos; their labels condition the generated videos (sample i
gets the label of real clip i); FVD = generated vs those same real clips. Beside it, the class accuracy of a
nearest-class-mean probe on the same detector's features (larp.eval.probe), fitted on those real clips: on the
samples with their conditioning labels, and on the held-out (test) clips as the ceiling. Sampling is sharded
(`larp sample`, larp.sample: shard k of S generates indices [k n / S, (k + 1) n / S), each from its own seeded
stream), and `larp fvd` merges the shards.

FP-FVD (:func:`fp_fvd`): the frame-prediction samples against their real clips, both resized first.

Every result file records the protocol, detector identity, checkpoint hashes, parameters and provenance.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from tqdm import tqdm

from larp.config import Params, ParamsError
from larp.data.clips import ClipDataset
from larp.data.frames import FrameStore
from larp.devices import default_device
from larp.eval.fvd import (
    FeatureStats,
    FrechetTerms,
    bootstrap_fvd,
    compute_features,
    frechet_distance,
    frechet_distance_from_features,
    frechet_terms,
    fvd_report,
    load_features,
    save_features,
)
from larp.eval.i3d import load_detector
from larp.eval.probe import DESCRIPTION as PROBE_DESCRIPTION
from larp.eval.probe import NearestClassMean
from larp.eval.protocols import CEILING_DIR, clips_hash, fp_clips, gfvd_clips, held_out_clips
from larp.files import atomic_path, atomic_write_json, sha256_file
from larp.provenance import provenance

__all__ = [
    "FeatureStats",
    "FrechetTerms",
    "bootstrap_fvd",
    "compute_features",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_terms",
    "fvd_report",
    "load_features",
    "save_features",
    # the stages
    "fp_fvd",
    "fvd_real",
    "gfvd",
]


# --------------------------------------------------------------------------------------------------
# gFVD: `larp fvd-real`, `larp fvd`


def _real_key(frames_dir: Path, refs: pd.DataFrame, detector, params: Params, resize: int | None) -> dict:
    """What real features are a function of: the protocol's clips, the frames, the detector, the resize."""
    return {"clips": clips_hash(refs), "videos": sha256_file(Path(frames_dir) / "videos.csv"),
            "detector": detector.sha256, "frames": params.data.frames, "size": params.data.size, "resize": resize}


def _real_features(frames_dir: Path, refs: pd.DataFrame, detector, params: Params, source: Path | None,
                   progress: bool, resize: int | None = None) -> np.ndarray:
    """Detector features of the real clips (resized to ``resize`` first if given): read from ``source`` (a
    `larp fvd-real` output, checked to be of this protocol, data and detector) or, without it, computed."""
    key = _real_key(frames_dir, refs, detector, params, resize)
    if source is not None:
        with np.load(source, allow_pickle=False) as f:
            stored = json.loads(str(f["key"]))
            if stored != key:
                differ = sorted(k for k in key if stored.get(k) != key[k])
                raise ParamsError(f"{source}: real features of other {', '.join(differ)} than this evaluation's; "
                                  "run `larp fvd-real` again")
            return f["features"].astype(np.float32)
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    videos = (reader.read_clip(int(r.row), int(r.start)) for r in refs.itertuples())
    return compute_features(detector, _resized(videos, resize), batch_size=params.fvd.batch_size, progress=progress)


def fvd_real(frames_dir: Path, out: Path, params: Params, *, fp: bool = False, progress: bool = True) -> None:
    """`larp fvd-real`: detector features of the gFVD (``fp``: FP-FVD) protocol's real clips, with what they
    are a function of (.npz: features, key). A stage of its own, so that re-scoring new samples (an ablation
    over sampling settings) reuses them, and both workflows know the file."""
    frames_dir = Path(frames_dir)
    refs = fp_clips(frames_dir, params) if fp else gfvd_clips(frames_dir, params)
    resize = params.fvd.fp_resolution if fp else None
    detector = load_detector(params.fvd.detector, device=default_device())
    feats = _real_features(frames_dir, refs, detector, params, None, progress, resize=resize)
    key = _real_key(frames_dir, refs, detector, params, resize)
    with atomic_path(Path(out)) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=feats, key=np.str_(json.dumps(key, sort_keys=True)))


def _resized(videos, size: int | None):
    """Float (c, t, h, w) videos (uint8 ones are scaled to [0, 1]), resized to size x size when given."""
    from larp.eval.protocols import resize_to

    for v in videos:
        v = v.float() / 255.0 if v.dtype == torch.uint8 else v
        yield v if size is None else resize_to(v[None], size)[0]


class _Shards(NamedTuple):
    dirs: list[Path]
    tables: list[pd.DataFrame]  # samples.csv of each shard
    order: np.ndarray  # permutation putting the concatenated shard rows in sample-index order
    inputs: dict  # the checkpoint hashes every shard was sampled from


def _load_shards(samples_dir: Path, refs: pd.DataFrame, params: Params) -> _Shards:
    """The sample shards of one protocol, checked: all of ``sample.shards`` present, exactly the indices
    0..n-1, the same protocol (clip hash), the same checkpoints, and the current sample parameters (the
    result reports one pair of checkpoints and those settings; batch_size aside, each sample has its own
    seeded stream)."""
    dirs = sorted(p for p in samples_dir.glob("shard-*") if p.is_dir())
    if len(dirs) != len(params.sample.shards):
        raise ValueError(f"{samples_dir}: found {len(dirs)} shard directories, sample.shards expects "
                         f"{len(params.sample.shards)}")
    tables = [pd.read_csv(d / "samples.csv") for d in dirs]
    got = np.concatenate([t["index"].to_numpy() for t in tables])
    if sorted(got.tolist()) != list(range(len(refs))):
        raise ValueError(f"{samples_dir}: the shards hold {len(got)} samples, not exactly indices 0..{len(refs) - 1}")
    metas = [json.loads((d / "sample.json").read_text()) for d in dirs]
    want = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(params.sample).items() if k != "batch_size"}))
    for d, m in zip(dirs, metas):
        if m["clips_hash"] != clips_hash(refs):
            raise ValueError(f"{samples_dir}: a shard was generated for another protocol (clips hash differs)")
        if m["inputs"] != metas[0]["inputs"]:
            raise ValueError(f"{d}: sampled from other checkpoints ({m['inputs']}) than {dirs[0].name} "
                             f"({metas[0]['inputs']}); re-run `larp sample` for every shard")
        used = {k: v for k, v in m["params"]["sample"].items() if k != "batch_size"}
        if used != want:
            diff = sorted(k for k in want if used.get(k) != want[k])
            then, now = ({k: x.get(k) for k in diff} for x in (used, want))
            raise ValueError(f"{d}: sampled with other sample params {diff} ({then}) than the current ones ({now})")
    return _Shards(dirs, tables, np.argsort(got), metas[0]["inputs"])


def _generated_features(detector, shards: _Shards, params: Params, progress: bool,
                        resize: int | None = None, sub: str = "") -> np.ndarray:
    """Detector features of every shard's videos (those of its sub-directory ``sub``), in sample-index order."""
    parts = []
    for d in tqdm(shards.dirs, desc=f"generated features {sub}".strip(), disable=not progress):
        videos = np.load(d / sub / "videos.npy", mmap_mode="r")
        clips = (rearrange(torch.from_numpy(np.array(v)), "t h w c -> c t h w") for v in videos)
        parts.append(compute_features(detector, _resized(clips, resize), batch_size=params.fvd.batch_size,
                                      progress=False))
    return np.concatenate(parts)[shards.order]


def fvd_header(metric: str, dataset: str, report: dict) -> dict:
    """The first fields of every FVD result file: value, 95 % CI (when bootstrapped), set sizes, details."""
    boot = report.get("bootstrap")
    return {"metric": metric, "dataset": dataset, "value": report["fvd"],
            "ci95": [boot["ci_low"], boot["ci_high"]] if boot else None,
            "n_generated": report["n_gen"], "n_real": report["n_real"], "fvd": report}


def result_common(detector, params: Params, refs: pd.DataFrame, t0: float) -> dict:
    """The last fields of every FVD result file: detector, protocol parameters, wall time."""
    return {
        "detector": detector.info(),
        "comparable_to_papers": bool(detector.comparable_to_papers),
        "protocol_params": {"frames": params.data.frames, "resolution": params.data.size,
                            "split": params.data.split, "clips_hash": clips_hash(refs)},
        "wall_time_s": round(time.time() - t0, 2),
    }


def _score_shards(frames_dir: Path, samples_dir: Path, refs: pd.DataFrame, params: Params,
                  real_features: Path | None, progress: bool, resize: int | None = None) -> tuple:
    """The checked sample shards of ``refs``' protocol scored against the real clips: (shards, detector,
    FVD report, real features, generated features). gFVD and FP-FVD differ only in ``refs`` and ``resize``."""
    shards = _load_shards(samples_dir, refs, params)
    detector = load_detector(params.fvd.detector, device=default_device())
    real = _real_features(frames_dir, refs, detector, params, real_features, progress, resize=resize)
    gen = _generated_features(detector, shards, params, progress, resize=resize)
    return shards, detector, fvd_report(real, gen, bootstrap=params.fvd.bootstrap, seed=params.fvd.clip_seed), real, gen


def _held_out_checks(frames_dir: Path, refs: pd.DataFrame, probe: NearestClassMean, shards: _Shards,
                     real: np.ndarray, gen: np.ndarray, detector, params: Params,
                     progress: bool) -> tuple[dict, dict | None]:
    """What the held-out (test) clips tell beside the gFVD, from the same detector's features: the class probe
    (larp.eval.probe) fitted on the real clips, applied to the samples with their conditioning labels and to
    the held-out clips (the ceiling); and the floor of the FVD, real train clips vs held-out real clips (None
    without test videos)."""
    gen_labels = np.concatenate([t["label"].to_numpy() for t in shards.tables])[shards.order]
    test = held_out_clips(FrameStore(frames_dir).table, frames=params.data.frames, split=params.data.split)
    test_feats = _real_features(frames_dir, test, detector, params, None, progress) if len(test) else None
    accuracy = {"samples": probe.accuracy(gen, gen_labels),
                "real_test": probe.accuracy(test_feats, test["label"].to_numpy()) if len(test) else None,
                "chance": 1.0 / refs["label"].nunique(), "classifier": PROBE_DESCRIPTION,
                "n_samples": len(gen_labels), "n_real_train": len(refs), "n_real_test": len(test)}
    floor = None
    if test_feats is not None and len(test_feats) >= 2:
        r = fvd_report(real, test_feats, bootstrap=params.fvd.bootstrap, seed=params.fvd.clip_seed)
        floor = {"value": r["fvd"], "ci95": [r["bootstrap"]["ci_low"], r["bootstrap"]["ci_high"]] if "bootstrap" in r
                 else None, "n_real_train": r["n_real"], "n_real_test": r["n_gen"],
                 "what": "the same real clips vs every non-overlapping clip of the split's test videos"}
    return accuracy, floor


def _ceiling(real: np.ndarray, probe: NearestClassMean, shards: _Shards, detector, params: Params,
             progress: bool) -> dict | None:
    """The gFVD ceiling (``sample.ceiling``): FVD and class accuracy of the samples of the generator at
    initialisation, from the same labels, tokenizer, sampling settings and detector."""
    if not params.sample.ceiling:
        return None
    for d in shards.dirs:
        if not (d / CEILING_DIR / "videos.npy").is_file():
            raise ValueError(f"{d}: no {CEILING_DIR}/videos.npy although sample.ceiling is true; re-run `larp sample`")
    gen = _generated_features(detector, shards, params, progress, sub=CEILING_DIR)
    r = fvd_report(real, gen, bootstrap=params.fvd.bootstrap, seed=params.fvd.clip_seed)
    labels = np.concatenate([t["label"].to_numpy() for t in shards.tables])[shards.order]
    return {"value": r["fvd"], "ci95": [r["bootstrap"]["ci_low"], r["bootstrap"]["ci_high"]] if "bootstrap" in r
            else None, "class_accuracy": probe.accuracy(gen, labels), "n_generated": r["n_gen"],
            "what": "samples of the generator at initialisation (random weights seeded by sample.seed), the same "
                    "labels, tokenizer and sampling settings, vs the same real clips"}


def gfvd(dataset: str, frames_dir: Path, samples_dir: Path, out: Path, params: Params, *,
         real_features: Path | None = None, progress: bool = True) -> dict:
    """FVD of the merged sample shards against the protocol's real clips (their features from
    ``real_features``, a `larp fvd-real` output, or computed); writes ``out`` (JSON) and nothing else."""
    t0 = time.time()
    frames_dir, out = Path(frames_dir), Path(out)
    refs = gfvd_clips(frames_dir, params)
    shards, detector, report, real, gen = _score_shards(frames_dir, Path(samples_dir), refs, params, real_features,
                                                        progress)
    probe = NearestClassMean.fit(real, refs["label"].to_numpy())  # on the real training clips only
    accuracy, floor = _held_out_checks(frames_dir, refs, probe, shards, real, gen, detector, params, progress)
    ceiling = _ceiling(real, probe, shards, detector, params, progress)
    nll = float(np.concatenate([t["nll"].to_numpy() for t in shards.tables]).mean())
    result = {
        **fvd_header("gFVD", dataset, report),
        "protocol": {"name": "gFVD class-conditional", "real_clips": "non-overlapping clips of split train videos",
                     "num_clips": params.fvd.num_clips, "seed": params.fvd.clip_seed,
                     "cfg_scale": params.sample.cfg_scale, "temperature": params.sample.temperature,
                     "top_k": params.sample.top_k, "top_p": params.sample.top_p},
        "nll_sampled": nll,
        "class_accuracy": accuracy,
        "reference_points": {"floor_real_train_vs_real_test": floor, "ceiling_generator_at_init": ceiling},
        "checkpoints": shards.inputs,
        "real_features": str(real_features) if real_features is not None else None,
        **result_common(detector, params, refs, t0),
    }
    result["provenance"] = provenance(params)
    atomic_write_json(out, result)
    return result


# --------------------------------------------------------------------------------------------------
# frame prediction (docs/model.md#frame-prediction, docs/protocols.md#fp-fvd)


def fp_fvd(dataset: str, frames_dir: Path, samples_dir: Path, out: Path, params: Params, *,
           real_features: Path | None = None, progress: bool = True) -> dict:
    """FP-FVD: generated vs real clips, both resized to ``fvd.fp_resolution`` before the I3D."""
    t0 = time.time()
    frames_dir, out = Path(frames_dir), Path(out)
    refs = fp_clips(frames_dir, params)
    size = params.fvd.fp_resolution
    shards, detector, report, _, _ = _score_shards(frames_dir, Path(samples_dir), refs, params, real_features,
                                                   progress, resize=size)
    result = {
        **fvd_header("FP-FVD", dataset, report),
        "protocol": {"name": "FP-FVD frame prediction", "real_clips": "non-overlapping clips of the held-out videos",
                     "num_clips": params.fvd.fp_num_clips, "seed": params.fvd.clip_seed,
                     "cond_frames": params.generator.cond_frames, "detector_input_resolution": size,
                     "cfg_scale": 1.0, "temperature": params.sample.temperature,
                     "condition_svq": params.sample.fp_condition_svq},
        "nll_sampled": float(np.concatenate([t["nll"].to_numpy() for t in shards.tables]).mean()),
        "checkpoints": shards.inputs, "real_features": str(real_features) if real_features is not None else None,
        **result_common(detector, params, refs, t0),
    }
    result["provenance"] = provenance(params)
    atomic_write_json(out, result)
    return result
