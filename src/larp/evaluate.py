"""`larp fvd-real`, `larp fvd`, `larp rfvd`: the evaluation protocols of LARP_SPEC.md section 6, end to end.

gFVD: the real set is ``fvd.num_clips`` clips drawn with ``random.Random(fvd.clip_seed)`` from all
non-overlapping clips of the split's training videos; their labels condition the generated videos (sample i
gets the label of real clip i); FVD = generated vs those same real clips. Beside it, the class accuracy of a
nearest-class-mean probe on the same detector's features (larp.eval.probe), fitted on those real clips: on the
samples with their conditioning labels, and on the held-out (test) clips as the ceiling. Sampling is sharded
(`larp sample`, larp.sample: shard k of S generates indices [k n / S, (k + 1) n / S), each from its own seeded
stream), and `larp fvd` merges the shards.

rFVD: one clip per training video (start from ``fvd.rfvd_seed``), reconstructed with argmax SVQ; also PSNR
(mean of per-video PSNR), SSIM and LPIPS. Beside them, on the same clips and on every non-overlapping clip of
the split's held-out (test) videos: the PSNR of the per-clip mean colour (the baseline a reconstruction must
clear) and the share of the codebook the argmax codes use.

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
from torch import Tensor
from tqdm import tqdm

from larp.config import Params, ParamsError
from larp.data.clips import ClipDataset
from larp.data.frames import FrameStore
from larp.eval.fvd import compute_features, fvd_report
from larp.eval.i3d import load_detector
from larp.eval.metrics import mean_colour_psnr_per_video, psnr_per_video, ssim_per_video
from larp.eval.probe import DESCRIPTION as PROBE_DESCRIPTION
from larp.eval.probe import NearestClassMean
from larp.eval.protocols import (  # noqa: F401  (gfvd_clips, fp_clips, shard_range: public here too)
    clips_hash,
    fp_clips,
    gfvd_clips,
    held_out_clips,
    rfvd_clips,
    shard_range,
)
from larp.files import atomic_path, atomic_write_json, sha256_file
from larp.provenance import provenance


def __getattr__(name: str):
    """`larp sample` moved to larp.sample; its names stay importable from here (loaded on first use, so that
    the FVD stages do not import the sampling code)."""
    if name in ("sample_shard", "sample_fp_shard", "fp_condition_tokens"):
        import larp.sample

        return getattr(larp.sample, name)
    raise AttributeError(f"module 'larp.evaluate' has no attribute {name!r}")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------
# FVD


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
    detector = load_detector(params.fvd.detector, device=_device())
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
                        resize: int | None = None) -> np.ndarray:
    """Detector features of every shard's videos, in sample-index order."""
    parts = []
    for d in tqdm(shards.dirs, desc="generated features", disable=not progress):
        videos = np.load(d / "videos.npy", mmap_mode="r")
        clips = (rearrange(torch.from_numpy(np.array(v)), "t h w c -> c t h w") for v in videos)
        parts.append(compute_features(detector, _resized(clips, resize), batch_size=params.fvd.batch_size,
                                      progress=False))
    return np.concatenate(parts)[shards.order]


def _fvd_header(metric: str, dataset: str, report: dict) -> dict:
    """The first fields of every FVD result file: value, 95 % CI (when bootstrapped), set sizes, details."""
    boot = report.get("bootstrap")
    return {"metric": metric, "dataset": dataset, "value": report["fvd"],
            "ci95": [boot["ci_low"], boot["ci_high"]] if boot else None,
            "n_generated": report["n_gen"], "n_real": report["n_real"], "fvd": report}


def _result_common(detector, params: Params, refs: pd.DataFrame, t0: float) -> dict:
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
    detector = load_detector(params.fvd.detector, device=_device())
    real = _real_features(frames_dir, refs, detector, params, real_features, progress, resize=resize)
    gen = _generated_features(detector, shards, params, progress, resize=resize)
    return shards, detector, fvd_report(real, gen, bootstrap=params.fvd.bootstrap, seed=params.fvd.clip_seed), real, gen


def _held_out_checks(frames_dir: Path, refs: pd.DataFrame, real: np.ndarray, shards: _Shards, gen: np.ndarray,
                     detector, params: Params, progress: bool) -> tuple[dict, dict | None]:
    """What the held-out (test) clips tell beside the gFVD, from the same detector's features: the class probe
    (larp.eval.probe) fitted on the real clips, applied to the samples with their conditioning labels and to
    the held-out clips (the ceiling); and the floor of the FVD, real train clips vs held-out real clips (None
    without test videos)."""
    probe = NearestClassMean.fit(real, refs["label"].to_numpy())
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


def gfvd(dataset: str, frames_dir: Path, samples_dir: Path, out: Path, params: Params, *,
         real_features: Path | None = None, progress: bool = True) -> dict:
    """FVD of the merged sample shards against the protocol's real clips (their features from
    ``real_features``, a `larp fvd-real` output, or computed); writes ``out`` (JSON) and nothing else."""
    t0 = time.time()
    frames_dir, out = Path(frames_dir), Path(out)
    refs = gfvd_clips(frames_dir, params)
    shards, detector, report, real, gen = _score_shards(frames_dir, Path(samples_dir), refs, params, real_features,
                                                        progress)
    accuracy, floor = _held_out_checks(frames_dir, refs, real, shards, gen, detector, params, progress)
    nll = float(np.concatenate([t["nll"].to_numpy() for t in shards.tables]).mean())
    result = {
        **_fvd_header("gFVD", dataset, report),
        "protocol": {"name": "gFVD class-conditional", "real_clips": "non-overlapping clips of split train videos",
                     "num_clips": params.fvd.num_clips, "seed": params.fvd.clip_seed,
                     "cfg_scale": params.sample.cfg_scale, "temperature": params.sample.temperature,
                     "top_k": params.sample.top_k, "top_p": params.sample.top_p},
        "nll_sampled": nll,
        "class_accuracy": accuracy,
        "reference_points": {"floor_real_train_vs_real_test": floor},
        "checkpoints": shards.inputs,
        "real_features": str(real_features) if real_features is not None else None,
        **_result_common(detector, params, refs, t0),
    }
    result["provenance"] = provenance(params)
    atomic_write_json(out, result)
    return result


class _ReconStats:
    """Running per-clip PSNR / SSIM / mean-colour PSNR and the set of codes used, over argmax reconstructions."""

    def __init__(self, codebook_size: int) -> None:
        self.codebook_size = codebook_size
        self.psnr: list[Tensor] = []
        self.ssim: list[Tensor] = []
        self.base: list[Tensor] = []
        self.codes: set[int] = set()

    def add(self, video: Tensor, ids: Tensor, recon: Tensor) -> None:
        self.psnr.append(psnr_per_video(recon, video).cpu())
        self.ssim.append(ssim_per_video(recon, video).cpu())
        self.base.append(mean_colour_psnr_per_video(video).cpu())
        self.codes.update(ids.unique().tolist())

    def summary(self) -> dict:
        return {"clips": int(sum(len(p) for p in self.psnr)), "psnr": float(torch.cat(self.psnr).mean()),
                "psnr_mean_colour_baseline": float(torch.cat(self.base).mean()),
                "ssim": float(torch.cat(self.ssim).mean()),
                "codebook_usage": len(self.codes) / self.codebook_size}


def reconstruct(tok, video: Tensor) -> tuple[Tensor, Tensor]:
    """Argmax token ids and the clamped reconstruction of a batch of clips."""
    with torch.no_grad(), torch.autocast(video.device.type, dtype=torch.float16, enabled=video.device.type == "cuda"):
        ids = tok.encode(video)
        return ids, tok.decode(ids).float().clamp(0, 1)


def _held_out_reconstruction(tok, frames_dir: Path, params: Params, device: torch.device,
                             progress: bool) -> dict | None:
    """Reconstruction figures on every non-overlapping clip of the split's test videos (None: no test videos)."""
    clips = ClipDataset(frames_dir, split="test", split_index=params.data.split, mode="eval",
                        frames=params.data.frames)
    if not len(clips):
        return None
    stats, bs = _ReconStats(params.tokenizer.codebook_size), params.fvd.batch_size
    for i in tqdm(range(0, len(clips), bs), desc="held-out reconstructions", disable=not progress):
        video = torch.stack([clips[j][0] for j in range(i, min(i + bs, len(clips)))]).to(device)
        stats.add(video, *reconstruct(tok, video))
    return {"split": f"test (split {params.data.split}), every non-overlapping clip", "svq": "argmax",
            **stats.summary()}


def rfvd(dataset: str, frames_dir: Path, tokenizer_weights: Path, out: Path, params: Params, *,
         progress: bool = True) -> dict:
    """Reconstruction FVD / PSNR / SSIM / LPIPS of the tokenizer (argmax SVQ) on the rFVD clips, with the
    mean-colour PSNR baseline and the codebook usage on those clips and on the held-out (test) clips."""
    from larp.models.tokenizer import load_tokenizer

    t0 = time.time()
    frames_dir, out = Path(frames_dir), Path(out)
    table = FrameStore(frames_dir).table
    refs = rfvd_clips(table, frames=params.data.frames, seed=params.fvd.rfvd_seed, split=params.data.split,
                      max_videos=params.fvd.rfvd_max_videos)
    device = _device()
    tok = load_tokenizer(tokenizer_weights, params, device)
    detector = load_detector(params.fvd.detector, device=device)
    lpips = None
    if params.fvd.lpips:
        from larp.losses import LPIPS, video_lpips

        lpips = LPIPS.from_pretrained().to(device).eval()
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    real_f, rec_f, lp = [], [], []
    stats = _ReconStats(params.tokenizer.codebook_size)
    bs = params.fvd.batch_size
    for i in tqdm(range(0, len(refs), bs), desc="rfvd", disable=not progress):
        chunk = refs.iloc[i:i + bs]
        video = torch.stack([reader.read_clip(int(r.row), int(r.start)) for r in chunk.itertuples()]).to(device)
        ids, recon = reconstruct(tok, video)
        real_f.append(detector(video))
        rec_f.append(detector(recon))
        stats.add(video, ids, recon)
        if lpips is not None:
            with torch.no_grad():
                lp.append(float(video_lpips(lpips, video, recon)) * len(chunk))
    real, rec = torch.cat(real_f).numpy(), torch.cat(rec_f).numpy()
    report = fvd_report(real, rec, bootstrap=params.fvd.bootstrap, seed=params.fvd.rfvd_seed)
    summary = stats.summary()
    result = {
        **_fvd_header("rFVD", dataset, report),
        "psnr": summary["psnr"], "ssim": summary["ssim"],
        "psnr_mean_colour_baseline": summary["psnr_mean_colour_baseline"],
        "codebook_usage": summary["codebook_usage"],
        "lpips": (sum(lp) / len(refs)) if lpips is not None else None,
        "lpips_note": None if lpips is not None else "not computed: fvd.lpips is false (needs VGG16 + LPIPS weights)",
        "held_out": _held_out_reconstruction(tok, frames_dir, params, device, progress),
        "protocol": {"name": "rFVD reconstruction", "clips": "one clip per split train video",
                     "seed": params.fvd.rfvd_seed, "max_videos": params.fvd.rfvd_max_videos, "svq": "argmax"},
        "checkpoints": {"tokenizer": sha256_file(tokenizer_weights)},
        **_result_common(detector, params, refs, t0),
    }
    result["provenance"] = provenance(params)
    atomic_write_json(out, result)
    return result


# --------------------------------------------------------------------------------------------------
# frame prediction (LARP_SPEC.md sections 4.4 and 6.4)


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
        **_fvd_header("FP-FVD", dataset, report),
        "protocol": {"name": "FP-FVD frame prediction", "real_clips": "non-overlapping clips of the held-out videos",
                     "num_clips": params.fvd.fp_num_clips, "seed": params.fvd.clip_seed,
                     "cond_frames": params.generator.cond_frames, "detector_input_resolution": size,
                     "cfg_scale": 1.0, "temperature": params.sample.temperature,
                     "condition_svq": params.sample.fp_condition_svq},
        "nll_sampled": float(np.concatenate([t["nll"].to_numpy() for t in shards.tables]).mean()),
        "checkpoints": shards.inputs, "real_features": str(real_features) if real_features is not None else None,
        **_result_common(detector, params, refs, t0),
    }
    result["provenance"] = provenance(params)
    atomic_write_json(out, result)
    return result
