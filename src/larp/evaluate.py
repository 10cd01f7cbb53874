"""`larp sample`, `larp fvd`, `larp rfvd`: the evaluation protocols of LARP_SPEC.md section 6, end to end.

gFVD: the real set is ``fvd.num_clips`` clips drawn with ``random.Random(fvd.clip_seed)`` from all
non-overlapping clips of the split's training videos; their labels condition the generated videos (sample i
gets the label of real clip i); FVD = generated vs those same real clips. Beside it, the class accuracy of a
nearest-class-mean probe on the same detector's features (larp.eval.probe), fitted on those real clips: on the
samples with their conditioning labels, and on the held-out (test) clips as the ceiling. Sampling is sharded: shard k of S
generates indices [k n / S, (k + 1) n / S), each from its own seeded stream, and `larp fvd` merges the shards.

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
from larp.eval.protocols import clips_hash, gfvd_real_clips, held_out_clips, rfvd_clips, shard_range
from larp.files import atomic_path, atomic_write_json, sha256_file
from larp.provenance import provenance
from larp.visualize import grid_png, write_mp4


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gfvd_clips(frames_dir: Path, params: Params) -> pd.DataFrame:
    """The gFVD protocol's real clips (row, video_id, start, label), in draw order."""
    table = FrameStore(frames_dir).table
    return gfvd_real_clips(table, frames=params.data.frames, num_clips=params.fvd.num_clips,
                           seed=params.fvd.clip_seed, split=params.data.split)


# --------------------------------------------------------------------------------------------------
# sampling


def _precision(gen, tok, params: Params, device: torch.device, tokenizer_dtype: torch.dtype):
    """(sampling dtype, decode function): ``sample.dtype`` and ``tokenizer_dtype`` on a GPU, with the weights cast
    to them when ``sample.cast_weights`` (the official sampler), else under autocast; float32 on a CPU."""
    from larp.sample import DTYPES, sampling_precision

    on_gpu = device.type == "cuda"
    dtype = DTYPES[params.sample.dtype] if on_gpu else torch.float32
    decode = sampling_precision(gen, tok, dtype, tokenizer_dtype if on_gpu else torch.float32,
                                cast_weights=params.sample.cast_weights)
    return dtype, decode


def _write_shard(out_dir: Path, videos: np.ndarray, table: pd.DataFrame, mp4s: int, meta: dict) -> None:
    """A sample shard: videos.npy (uint8 n,T,H,W,3), samples.csv (``index`` first), a PNG grid and the first
    ``mp4s`` videos as MP4 for people, and sample.json (provenance). Every file is written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "videos.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, videos)
    with atomic_path(out_dir / "samples.csv") as tmp:
        table.to_csv(tmp, index=False)
    if len(videos):
        grid_png(videos[:8], out_dir / "grid.png")
        for i in range(min(mp4s, len(videos))):
            write_mp4(videos[i], out_dir / f"sample-{int(table['index'].iloc[i]):06d}.mp4")
    atomic_write_json(out_dir / "sample.json", meta)


def sample_shard(frames_dir: Path, tokenizer_weights: Path, ar_weights: Path, shard: int, out_dir: Path,
                 params: Params, *, progress: bool = True) -> None:
    """Generate shard ``shard`` of the gFVD set: videos.npy (uint8 n,T,H,W,3), samples.csv, previews."""
    from larp.sample import sample_videos
    from larp.models.generator import load_generator
    from larp.models.tokenizer import load_tokenizer

    t0 = time.time()
    out_dir = Path(out_dir)
    clips = gfvd_clips(frames_dir, params)
    idx = shard_range(len(clips), shard, len(params.sample.shards))  # non-empty: Params.validate checks it
    pairs = [(i, int(clips["label"].iloc[i])) for i in idx]
    device = _device()
    gen = load_generator(ar_weights, params, device)
    tok = load_tokenizer(tokenizer_weights, params, device)
    s = params.sample
    dtype, decode = _precision(gen, tok, params, device, torch.float16)  # the official decoder runs in fp16
    res = sample_videos(gen, decode, pairs, cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k,
                        top_p=s.top_p, seed=s.seed, batch_size=s.batch_size, device=device, dtype=dtype,
                        progress=progress, decode=s.decode)
    table = pd.DataFrame({"index": [i for i, _ in pairs], "label": [c for _, c in pairs], "nll": res.nll})
    _write_shard(out_dir, res.videos, table, mp4s=2, meta=provenance(
        {"sample": dataclasses.asdict(s)}, inputs={"tokenizer": sha256_file(tokenizer_weights),
                                                   "ar": sha256_file(ar_weights)},
        shard=shard, num_shards=len(s.shards), indices=[idx.start, idx.stop], num_samples=len(pairs),
        clips_hash=clips_hash(clips), seconds=round(time.time() - t0, 2)))


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


def fp_clips(frames_dir: Path, params: Params) -> pd.DataFrame:
    """The FP-FVD protocol's real clips: ``fvd.fp_num_clips`` drawn with ``fvd.clip_seed`` from all
    non-overlapping clips of the held-out videos (K600 val; the split's test list for other datasets)."""
    from larp.eval.protocols import fp_fvd_clips

    table = FrameStore(frames_dir).table
    return fp_fvd_clips(table, frames=params.data.frames, num_clips=params.fvd.fp_num_clips,
                        seed=params.fvd.clip_seed, split="val")


def fp_condition_tokens(tok, clip: torch.Tensor, index: int, params: Params) -> torch.Tensor:
    """Condition tokens (num_tokens,) of sample ``index`` from its real clip (c, t, h, w): the first
    ``generator.cond_frames`` frames repeated to the clip length, tokenized in fp32 as the official sampler does.
    ``sample.fp_condition_svq`` "sampled" draws them by stochastic SVQ, as the official evaluation, from the
    sample's own stream (the same whatever the shard); "argmax" takes the deterministic ones."""
    from larp.seeding import sample_generators
    from larp.tokenize import fp_condition

    sampled = params.sample.fp_condition_svq == "sampled"
    g = sample_generators(params.sample.seed, [index], "fp-condition", clip.device)[0] if sampled else None
    with torch.no_grad():
        return tok.quantize(fp_condition(clip[None], params.generator.cond_frames), stochastic=sampled,
                            generator=g).indices[0]


def sample_fp_shard(frames_dir: Path, tokenizer_weights: Path, ar_weights: Path, shard: int, out_dir: Path,
                    params: Params, *, progress: bool = True) -> None:
    """Shard ``shard`` of the FP-FVD set: each sample continues the first ``generator.cond_frames`` frames of
    its real clip (repeated to 16 frames, tokenized by :func:`fp_condition_tokens`, + SEP); the whole clip is
    generated (no CFG), in the precision of ``sample.cast_weights`` (the tokenizer in fp32, as official). Each shard
    generates only its own slice (the official code gave every parallel job the total count)."""
    from larp.config import frame_prediction_params
    from larp.eval.protocols import fp_fvd_shard
    from larp.sample import sample_videos
    from larp.models.generator import load_generator
    from larp.models.tokenizer import load_tokenizer

    t0 = time.time()
    params = frame_prediction_params(params)
    out_dir = Path(out_dir)
    clips = fp_clips(frames_dir, params)
    part = fp_fvd_shard(clips, shard, len(params.sample.shards))
    device = _device()
    gen = load_generator(ar_weights, params, device)
    tok = load_tokenizer(tokenizer_weights, params, device)
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    pairs = [(int(r.index), fp_condition_tokens(tok, reader.read_clip(int(r.row), int(r.start)).to(device),
                                                int(r.index), params))
             for r in tqdm(part.itertuples(), total=len(part), desc="conditions", disable=not progress)]
    s = params.sample
    dtype, decode = _precision(gen, tok, params, device, torch.float32)  # official: the FP tokenizer stays fp32
    res = sample_videos(gen, decode, pairs, cfg_scale=1.0,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed,
                        batch_size=s.batch_size, device=device, dtype=dtype, progress=progress, decode=s.decode)
    table = pd.DataFrame({"index": part["index"], "video_id": part["video_id"], "start": part["start"],
                          "nll": res.nll})
    _write_shard(out_dir, res.videos, table, mp4s=1, meta=provenance(
        {"sample": dataclasses.asdict(s), "cond_frames": params.generator.cond_frames},
        inputs={"tokenizer": sha256_file(tokenizer_weights), "ar": sha256_file(ar_weights)},
        shard=shard, num_shards=len(s.shards), indices=[int(part["index"].min()), int(part["index"].max()) + 1],
        num_samples=len(part), clips_hash=clips_hash(clips), seconds=round(time.time() - t0, 2)))


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
