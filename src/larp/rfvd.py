"""`larp rfvd`: the reconstruction protocol (docs/protocols.md#rfvd), end to end.

rFVD: one clip per training video (start from ``fvd.rfvd_seed``), reconstructed with argmax SVQ; also PSNR
(mean of per-video PSNR), SSIM and LPIPS. Beside them, on the same clips and on every non-overlapping clip of
the split's held-out (test) videos: the PSNR of the per-clip mean colour (the baseline a reconstruction must
clear) and the share of the codebook the argmax codes use.

Every result file records the protocol, detector identity, checkpoint hashes, parameters and provenance.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from larp.config import Params
from larp.data.clips import ClipDataset
from larp.data.frames import FrameStore
from larp.eval.fvd import fvd_report
from larp.eval.i3d import load_detector
from larp.eval.metrics import mean_colour_psnr_per_video, psnr_per_video, ssim_per_video
from larp.eval.protocols import rfvd_clips
from larp.files import atomic_write_json, sha256_file
from larp.devices import default_device
from larp.fvd import fvd_header, result_common
from larp.provenance import provenance


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
    device = default_device()
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
        **fvd_header("rFVD", dataset, report),
        "psnr": summary["psnr"], "ssim": summary["ssim"],
        "psnr_mean_colour_baseline": summary["psnr_mean_colour_baseline"],
        "codebook_usage": summary["codebook_usage"],
        "lpips": (sum(lp) / len(refs)) if lpips is not None else None,
        "lpips_note": None if lpips is not None else "not computed: fvd.lpips is false (needs VGG16 + LPIPS weights)",
        "held_out": _held_out_reconstruction(tok, frames_dir, params, device, progress),
        "protocol": {"name": "rFVD reconstruction", "clips": "one clip per split train video",
                     "seed": params.fvd.rfvd_seed, "max_videos": params.fvd.rfvd_max_videos, "svq": "argmax"},
        "checkpoints": {"tokenizer": sha256_file(tokenizer_weights)},
        **result_common(detector, params, refs, t0),
    }
    result["provenance"] = provenance(params)
    atomic_write_json(out, result)
    return result
