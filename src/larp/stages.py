"""Pipeline stage entry points: paths and parameters in, files out. The CLI and the workflow only wire.

Each function is the whole of one `larp <stage>` command; the real work lives in the package modules.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from larp.config import Params
from larp.files import atomic_write_json
from larp.launch import relaunch_distributed
from larp.provenance import provenance


def download(dataset: str, out: Path, params: Params) -> None:
    """`larp download`: UCF-101 from its official URLs (or mirror), or the embedded dataset from a seed."""
    from larp.data.index import build_index, write_index

    t0 = time.time()
    out = Path(out)
    if dataset == "ucf101":
        from larp.data.ucf101 import download_ucf101

        download_ucf101(out, source=params.ucf101.source, workers=params.data.workers)
        return
    if dataset == "k600":
        from larp.data.k600 import download_k600

        k = params.k600
        download_k600(out, splits=k.splits, workers=k.workers, max_bad_fraction=k.max_bad_fraction,
                      keep_archives=k.keep_archives)
        return
    from larp.data.embedded import generate_embedded

    generate_embedded(out, params.embedded)
    table = build_index(out)
    write_index(table, out / "index.csv")
    atomic_write_json(out / "download.json", provenance(
        params.embedded, dataset=dataset, videos=len(table), seconds=round(time.time() - t0, 2)))


def extract(dataset: str, raw: Path, out: Path, params: Params) -> None:
    """`larp extract`: every video decoded once, resized + centre-cropped, stored in shards in the dataset's
    frame format (``storage.<dataset>``: raw, or jpeg for Kinetics-600)."""
    from larp.data.extract import extract_dataset

    storage = getattr(params.storage, dataset)
    extract_dataset(Path(raw), Path(out), size=params.data.size, shard_videos=params.data.shard_videos,
                    workers=params.data.workers, frame_format=storage.frame_format,
                    jpeg_quality=storage.jpeg_quality, max_pixels=storage.max_pixels)


def _publish_metrics(run_dir: Path, metrics: Path) -> None:
    """Copy the run's training curves to the stage's declared output (rank 0 only), atomically."""
    import os

    from larp.files import atomic_write_bytes

    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_bytes(metrics, (Path(run_dir) / "metrics.csv").read_bytes())


def tokenizer_frames(dataset: str, params: Params, frames: Path | Sequence[Path] | None = None,
                     frames_root: Path | None = None) -> list[Path]:
    """The frames directories ``dataset``'s tokenizer trains on, checked against ``data.tokenizer_datasets``:
    ``frames_root/<name>`` for each dataset of the mix, or ``frames`` given one per dataset in that order."""
    from larp.config import ParamsError, tokenizer_datasets
    from larp.data.frames import FrameStore

    mix = tokenizer_datasets(params, dataset)
    if (frames is None) == (frames_root is None):
        raise ValueError("pass exactly one of frames (directories) and frames_root")
    if frames_root is not None:
        dirs = [Path(frames_root) / name for name in mix]
    else:
        dirs = [Path(frames)] if isinstance(frames, (str, Path)) else [Path(f) for f in frames]
        if len(dirs) != len(mix):
            raise ParamsError(
                f"--frames: the tokenizer of {dataset!r} trains on data.tokenizer_datasets = {list(mix)}; pass one "
                f"frames directory for each, in that order (or --frames-root), got {[str(d) for d in dirs]}")
    for name, d in zip(mix, dirs):
        if not (d / "videos.csv").is_file():
            raise FileNotFoundError(
                f"{d}: no frames of {name!r} (videos.csv missing), needed because data.tokenizer_datasets = "
                f"{list(mix)}; run `larp download {name} --out data/raw/{name}` and `larp extract --dataset {name} "
                f"--raw data/raw/{name} --out {d}` first")
        size = FrameStore(d).size
        if size != params.data.size:
            raise ParamsError(f"{d}: frames of {name!r} are {size}x{size}, the tokenizer of {dataset!r} needs "
                             f"data.size = {params.data.size}: extract them again with the same preset")
    return dirs


def train_tokenizer(dataset: str, frames: Path | Sequence[Path] | None, out: Path, metrics: Path, params: Params,
                    frames_root: Path | None = None) -> None:
    """`larp train-tokenizer`: LARP tokenizer + discriminator (+ prior) on the training videos of every dataset
    of ``data.tokenizer_datasets`` (see :func:`tokenizer_frames`)."""
    dirs = tokenizer_frames(dataset, params, frames, frames_root)  # fails before torchrun starts the ranks
    relaunch_distributed()
    from larp.train.tokenizer import train_tokenizer as run

    _publish_metrics(run(dirs, Path(out), params), metrics)


TRAINING_STAGES = ("train_tokenizer", "train_ar", "train_ar_fp")


def schedule(dataset: str, stage: str, params: Params, videos: int | None = None,
             raw_root: Path = Path("data/raw")) -> dict:
    """`larp schedule`: the step counts a training stage will run (an epoch = one clip per training video), from
    ``videos`` or, when it is None, the training videos of each dataset's index ``raw_root/<name>/index.csv``
    (the tokenizer trains on the data mix ``data.tokenizer_datasets``)."""
    from larp.config import ParamsError, tokenizer_datasets
    from larp.data.index import count_training_videos
    from larp.train.schedule import resolve_schedule

    if stage not in TRAINING_STAGES:
        raise ParamsError(f"--stage must be one of {TRAINING_STAGES}, got {stage!r}")
    if videos is not None and videos < 1:
        raise ParamsError(f"--videos must be >= 1, got {videos}")
    names = tokenizer_datasets(params, dataset) if stage == "train_tokenizer" else (dataset,)
    if videos is None:
        videos = 0
        for name in names:
            index = Path(raw_root) / name / "index.csv"
            if not index.is_file():
                raise FileNotFoundError(f"{index}: no index of {name!r} to count its training videos; run "
                                        f"`larp download {name} --out {index.parent}` first, or pass --videos N")
            videos += count_training_videos(index, params.data.split)
    train = {"train_tokenizer": params.train_tokenizer, "train_ar": params.train_ar,
             "train_ar_fp": params.train_ar_fp}[stage]
    return {"dataset": dataset, "stage": stage, "datasets": list(names), "videos": videos, "epochs": train.epochs,
            "warmup_epochs": train.warmup_epochs, "max_steps": train.max_steps,
            **resolve_schedule(videos, train)._asdict()}


def _variant(params: Params, fp: bool) -> Params:
    from larp.config import frame_prediction_params

    return frame_prediction_params(params) if fp else params


def tokenize(dataset: str, frames: Path, tokenizer: Path, out: Path, params: Params, fp: bool = False) -> None:
    """`larp tokenize`: token ids of every training clip (all offsets at clip_stride, both flips); with
    ``fp`` also the condition tokens of frame prediction. Data-parallel over every GPU of the allocation."""
    relaunch_distributed()  # ranks split the shards; the last one to finish writes clips.csv
    from larp.tokenize import tokenize_dataset

    tokenize_dataset(Path(frames), Path(tokenizer), Path(out), _variant(params, fp))


def train_ar(dataset: str, tokens: Path, tokenizer: Path, out: Path, metrics: Path, params: Params,
             fp: bool = False) -> None:
    """`larp train-ar`: the class-conditional (or, with ``fp``, frame-prediction) AR generator."""
    relaunch_distributed()
    from larp.train.generator import train_generator

    run_dir = train_generator(Path(tokens), Path(out), _variant(params, fp), tokenizer_weights=Path(tokenizer))
    _publish_metrics(run_dir, metrics)


def sample(dataset: str, frames: Path, tokenizer: Path, ar: Path, shard: int, out: Path, params: Params,
           fp: bool = False) -> None:
    """`larp sample`: one shard of the gFVD protocol's class-conditional videos (``fp``: of FP-FVD's
    frame-prediction videos)."""
    from larp.sample import sample_fp_shard, sample_shard

    (sample_fp_shard if fp else sample_shard)(Path(frames), Path(tokenizer), Path(ar), shard, Path(out), params)


def fvd_real(dataset: str, frames: Path, out: Path, params: Params, fp: bool = False) -> None:
    """`larp fvd-real`: detector features of the gFVD (``fp``: FP-FVD) protocol's real clips."""
    from larp.fvd import fvd_real as run

    run(Path(frames), Path(out), params, fp=fp)


def fvd(dataset: str, frames: Path, samples: Path, out: Path, params: Params, fp: bool = False,
        real: Path | None = None) -> None:
    """`larp fvd`: gFVD (``fp``: FP-FVD) of the merged sample shards against the protocol's real clips (their
    features from ``real``, the output of `larp fvd-real`, or computed without writing them)."""
    from larp.fvd import fp_fvd, gfvd

    r = (fp_fvd if fp else gfvd)(dataset, Path(frames), Path(samples), Path(out), params,
                                 real_features=Path(real) if real is not None else None)
    ci = f" (95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})" if r["ci95"] else ""
    print(f"{r['metric']} {dataset}: {r['value']:.2f}{ci}, {r['n_generated']} vs {r['n_real']} clips, "
          f"detector {r['detector']['detector']}" + ("" if r["comparable_to_papers"] else " [not comparable to papers]"))


def rfvd(dataset: str, frames: Path, tokenizer: Path, out: Path, params: Params) -> None:
    """`larp rfvd`: reconstruction FVD / PSNR / SSIM / LPIPS of the tokenizer."""
    from larp.rfvd import rfvd as run

    r = run(dataset, Path(frames), Path(tokenizer), Path(out), params)
    print(f"rFVD {dataset}: {r['value']:.2f}, PSNR {r['psnr']:.2f}, SSIM {r['ssim']:.4f}, LPIPS {r['lpips']}")


def import_weights(kind: str, src: str, out: Path, params: Params) -> None:
    """`larp import-weights`: a released LARP checkpoint converted into our weights file, strictly checked."""
    from larp.convert import import_weights_stage

    import_weights_stage(kind, src, Path(out), params)
